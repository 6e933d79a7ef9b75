"""Model and tokenizer loading for Hugging Face models: local folders, Hub ids and GGUF files (converted once and
cached), vision-language models and their processors, plus the offline default model SmolLM2-135M-Instruct."""

from automodel.components._transformers._auto import (
    NeMoAutoModelForCausalLM,
    NeMoAutoTokenizer,
    meta_weights_path,
    uses_flash_attention,
)
from automodel.components._transformers._errors import ModelLoadError
from automodel.components._transformers._gguf import convert_gguf_to_hf
from automodel.components._transformers._paths import resolve_model_path
from automodel.components._transformers._smollm2 import DownloadError, prepare_smollm2
from automodel.components._transformers._vlm import (
    FreezeConfig,
    NeMoAutoModelForImageTextToText,
    NeMoAutoProcessor,
    VLMParts,
    apply_freeze_config,
    check_processor_matches_model,
    non_language_modules,
    vlm_parts,
)

__all__ = [
    "DownloadError",
    "FreezeConfig",
    "ModelLoadError",
    "NeMoAutoModelForCausalLM",
    "NeMoAutoModelForImageTextToText",
    "NeMoAutoProcessor",
    "NeMoAutoTokenizer",
    "VLMParts",
    "apply_freeze_config",
    "check_processor_matches_model",
    "meta_weights_path",
    "convert_gguf_to_hf",
    "non_language_modules",
    "prepare_smollm2",
    "resolve_model_path",
    "uses_flash_attention",
    "vlm_parts",
]

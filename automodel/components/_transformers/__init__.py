"""Model and tokenizer loading for Hugging Face models: local folders, Hub ids and GGUF files (converted once and
cached), plus the offline default model SmolLM2-135M-Instruct."""

from automodel.components._transformers._auto import NeMoAutoModelForCausalLM, NeMoAutoTokenizer
from automodel.components._transformers._errors import ModelLoadError
from automodel.components._transformers._gguf import convert_gguf_to_hf
from automodel.components._transformers._paths import resolve_model_path
from automodel.components._transformers._smollm2 import DownloadError, prepare_smollm2

__all__ = [
    "DownloadError",
    "ModelLoadError",
    "NeMoAutoModelForCausalLM",
    "NeMoAutoTokenizer",
    "convert_gguf_to_hf",
    "prepare_smollm2",
    "resolve_model_path",
]

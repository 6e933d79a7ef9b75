"""LoRA / DoRA for causal LMs, interchangeable with HF PEFT adapters.

YAML: ``peft: {_target_: automodel.components._peft.lora.PeftConfig, target_modules: ['*_proj'], dim: 8, alpha: 32}``.
The recipe then calls :func:`apply_lora` on the model before building the optimizer (only adapter tensors require
grad), saves with :func:`save_adapter`, resumes with :func:`load_adapter`, and :func:`merge_adapter` writes a plain HF
model with the adapter folded in.
"""

from automodel.components._peft._apply import apply_lora, lora_modules
from automodel.components._peft._config import PeftConfig
from automodel.components._peft._errors import PeftError
from automodel.components._peft._hf_format import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    apply_lora_from_pretrained,
    apply_peft,
    load_adapter,
    lora_state_dict,
    read_adapter_config,
    save_adapter,
    write_adapter_dir,
)
from automodel.components._peft._layer import LinearLoRA
from automodel.components._peft._merge import merge_adapter, merge_lora_

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "LinearLoRA",
    "PeftConfig",
    "PeftError",
    "apply_lora",
    "apply_lora_from_pretrained",
    "apply_peft",
    "load_adapter",
    "lora_modules",
    "lora_state_dict",
    "merge_adapter",
    "merge_lora_",
    "read_adapter_config",
    "save_adapter",
    "write_adapter_dir",
]

"""Parameter-efficient fine-tuning: LoRA and DoRA patched into linear layers, saved as HF PEFT adapters."""

from automodel.components._peft.lora import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    LinearLoRA,
    PeftConfig,
    PeftError,
    apply_lora,
    apply_lora_from_pretrained,
    apply_peft,
    load_adapter,
    lora_modules,
    lora_state_dict,
    merge_adapter,
    merge_lora_,
    read_adapter_config,
    save_adapter,
    write_adapter_dir,
)

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

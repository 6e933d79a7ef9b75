"""`apply_lora`: freeze the model and patch the selected linear layers."""

from __future__ import annotations

import logging

from torch import nn

from automodel.components._peft._config import PeftConfig
from automodel.components._peft._layer import LinearLoRA, adapter_parameters, patch_linear
from automodel.components._peft._matching import select_linear_modules

logger = logging.getLogger(__name__)


def apply_lora(model: nn.Module, config: PeftConfig) -> list[str]:
    """Freeze every base parameter and turn each selected ``nn.Linear`` into a :class:`LinearLoRA`, in place.

    Only the adapter tensors (``lora_A``, ``lora_B``, DoRA's ``lora_magnitude_vector``) require grad afterwards.
    Returns the names of the adapted modules.
    """
    names = select_linear_modules(model, config)
    for param in model.parameters():
        param.requires_grad_(False)
    modules = dict(model.named_modules())
    num_adapter_params = 0
    for name in names:
        layer = patch_linear(modules[name], config)
        for param in adapter_parameters(layer).values():
            param.requires_grad_(True)
            num_adapter_params += param.numel()
    num_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "LoRA r=%d on %d modules: %d trainable parameters (%.3f%% of %d)",
        config.dim,
        len(names),
        num_adapter_params,
        100 * num_adapter_params / max(num_params, 1),
        num_params,
    )
    return names


def lora_modules(model: nn.Module) -> dict[str, LinearLoRA]:
    """The patched layers of ``model`` by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LinearLoRA)}

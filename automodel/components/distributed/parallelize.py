"""Apply activation checkpointing, torch.compile and data parallelism to a model, in that order.

Order matters: checkpointing wraps layers before compile sees them (so recomputation is compiled too), and DDP
wraps last so it hooks the final parameters.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from automodel.components.distributed.config import CompileConfig, DistributedConfig, DistributedError
from automodel.components.distributed.init_utils import DistInfo

logger = logging.getLogger(__name__)


def _decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The list of transformer blocks of a HF causal LM (`model.model.layers` for Llama-like models)."""
    for path in (
        "model.layers",
        "model.decoder.layers",
        "transformer.h",
        "gpt_neox.layers",
        "model.language_model.layers",
    ):
        module: nn.Module | None = model
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    return None


def _apply_activation_checkpointing(model: nn.Module) -> None:
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise DistributedError(
            f"distributed.activation_checkpointing: {type(model).__name__} does not support gradient checkpointing; "
            "set it to false"
        )
    # use_reentrant=False: works with frozen inputs (PEFT) and with compile.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _apply_compile(model: nn.Module, config: CompileConfig) -> nn.Module:
    kwargs = {"mode": config.mode, "fullgraph": config.fullgraph, "dynamic": config.dynamic, "backend": config.backend}
    layers = _decoder_layers(model) if config.per_layer else None
    if layers is None:
        return torch.compile(model, **kwargs)  # type: ignore[return-value]
    # Compiling each block separately compiles one graph once and reuses it for every layer (faster start).
    for layer in layers:
        layer.compile(**kwargs)
    return model


def parallelize_model(
    model: nn.Module,
    dist_info: DistInfo,
    config: DistributedConfig | None = None,
    compile_config: CompileConfig | None = None,
) -> nn.Module:
    """Return the module to train: `model` itself, or a DDP wrapper around it when there are several processes.

    The caller keeps `model` (unwrapped) for saving; parameters are shared, so both see the same weights.
    """
    config = config or DistributedConfig()
    config.resolve_dp_size(dist_info.world_size)
    if config.activation_checkpointing:
        _apply_activation_checkpointing(model)
    if compile_config is not None and compile_config.enabled:
        model = _apply_compile(model, compile_config)
    if dist_info.world_size == 1:
        return model
    device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
    logger.info("Wrapping the model in DistributedDataParallel over %d processes", dist_info.world_size)
    return DistributedDataParallel(model, device_ids=device_ids)

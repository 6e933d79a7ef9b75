"""Turn a Hugging Face causal LM into the module to train: TP(+SP) -> activation checkpointing -> compile -> FSDP2 |
DDP | Megatron-FSDP, in that order (as torchtitan's `parallelize_llama`).

Order matters: TP swaps parameters for DTensors that FSDP2 then shards on the data-parallel mesh (2-D); checkpointing
wraps the layers before compile sees them, so recomputation is compiled too; data parallelism comes last so it
sees the final parameters.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from automodel.components.distributed._parallel_state import ParallelState, build_parallel_state
from automodel.components.distributed._sharded_load import has_meta_parameters, load_model_weights_sharded
from automodel.components.distributed._tp_plans import apply_tensor_parallel
from automodel.components.distributed.config import CompileConfig, DistributedConfig, DistributedError
from automodel.components.distributed.fsdp2 import apply_fsdp2
from automodel.components.distributed.init_utils import DistInfo
from automodel.components.distributed.megatron_fsdp import apply_megatron_fsdp

logger = logging.getLogger(__name__)


def parallelize_model(
    model: nn.Module,
    dist_info: DistInfo,
    config: DistributedConfig | None = None,
    compile_config: CompileConfig | None = None,
    *,
    state: ParallelState | None = None,
    weights_path: str | None = None,
    cast_frozen_weights: Callable[[nn.Module], object] | None = None,
) -> nn.Module:
    """Return the module to train. FSDP2 and TP change `model` in place and return it; DDP and Megatron-FSDP return
    a wrapper whose parameters are `model`'s. A model built on the meta device gets its weights loaded here, from the
    safetensors folder `weights_path` (default: the model's `name_or_path`), at the point where each rank can read
    only its shards (after TP/FSDP2, before DDP / Megatron-FSDP, which need them).

    `cast_frozen_weights(model)` (e.g. `MixedPrecisionConfig.cast_frozen_linear_weights`) stores frozen weights in
    the compute dtype where the strategy allows it: one process or DDP, not FSDP2 / TP, which want one dtype per
    parameter group.

    A single process never wraps anything: it only gets checkpointing and compile.
    """
    config = config or DistributedConfig()
    state = state or build_parallel_state(config, dist_info)
    on_meta = has_meta_parameters(model)
    layers = _decoder_layers(model)
    distributed = dist_info.world_size > 1
    compile_config = compile_config if compile_config is not None and compile_config.enabled else None
    if cast_frozen_weights is not None and (not distributed or config.strategy == "ddp"):
        cast_frozen_weights(model)  # frozen base weights: no per-step fp32 -> bf16 copy under autocast

    if distributed and not on_meta and config.strategy != "ddp":
        # Every rank must start from rank 0's weights (DDP does this itself; FSDP2 and TP would otherwise keep
        # what each rank initialised, e.g. a random init under per-rank seeds).
        _broadcast_from_rank0(model, dist_info.device)
    if state.tp_size > 1:
        # TP first: FSDP2 then shards the TP DTensors on the data-parallel axes of the same mesh (2-D).
        assert state.mesh is not None  # tp_size > 1 means several processes
        apply_tensor_parallel(model, state.mesh["tp"], config.sequence_parallel)
    if config.activation_checkpointing:
        _apply_activation_checkpointing(model)
    if compile_config is not None and compile_config.per_layer and layers is not None:
        _compile_layers(layers, compile_config)  # before FSDP2, as torchtitan: each block compiles once, reused

    if not distributed:
        logger.debug("Single process: the model is not wrapped")
    elif config.strategy == "fsdp2" and state.dp_cp_size > 1:
        if layers is None:
            raise DistributedError(
                f"distributed.strategy: fsdp2 could not find the decoder layers of {type(model).__name__} (looked "
                "for model.layers, transformer.h, ...); use strategy: ddp"
            )
        param_dtype, reduce_dtype = config.mixed_precision_dtypes(dist_info.device)
        # HSDP: replicate over dp_replicate, shard over dp_shard x cp (CP ranks hold the same parameters).
        replicate = state.dp_replicate_size > 1
        assert state.mesh is not None
        fsdp_mesh = state.flat["dp_shard_cp"]
        if replicate:
            # A 2-D (replicate, shard) mesh; slicing a flattened axis is deprecated, so only CP needs it.
            fsdp_mesh = state.mesh["dp_replicate", "dp_shard" if state.cp_size == 1 else "dp_shard_cp"]
        apply_fsdp2(
            model,
            fsdp_mesh,
            list(layers),
            param_dtype=param_dtype,
            reduce_dtype=reduce_dtype,
            reshard_after_forward=config.reshard_after_forward,
        )
        logger.info("FSDP2 over %d ranks (%d layers + root, HSDP: %s)", state.dp_cp_size, len(layers), replicate)

    if on_meta:
        # After TP / FSDP2 each rank reads only its shards; DDP and Megatron-FSDP need the whole model first.
        load_model_weights_sharded(model, dist_info.device, weights_path)
    else:
        # Moved last, so FSDP2 / TP moved only this rank's shards to the device, never the whole model.
        model.to(dist_info.device)

    wrapped: nn.Module = model
    if distributed and config.strategy == "ddp":
        device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        logger.info("DistributedDataParallel over %d processes", dist_info.world_size)
        # find_unused_parameters: some models never use a trainable parameter (e.g. LLaVA's last CLIP norm)
        wrapped = DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=config.find_unused_parameters
        )
    elif distributed and config.strategy == "megatron_fsdp":
        param_dtype, reduce_dtype = config.mixed_precision_dtypes(dist_info.device)
        wrapped = apply_megatron_fsdp(
            model, state, list(layers or []), param_dtype=param_dtype, reduce_dtype=reduce_dtype
        )
    if compile_config is not None and not (compile_config.per_layer and layers is not None):
        wrapped = _compile_whole(wrapped, compile_config)  # whole-model compile sees the final wrapper
    return wrapped


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP and torch.compile wrappers (FSDP2 and TP change the model in place)."""
    for attr in ("module", "_orig_mod"):  # DDP / Megatron-FSDP, torch.compile
        model = getattr(model, attr, model)
    return model


@contextlib.contextmanager
def full_output_weight(model: nn.Module) -> Iterator[torch.Tensor]:
    """The output projection's whole weight, for a loss that projects hidden states itself (fused linear CE).

    Read it after the forward. In training FSDP2 keeps the root (lm_head included) unsharded from forward to
    backward; after a no-grad forward it has already resharded, so the weight is gathered again here and released
    when the block ends. A tensor-parallel (sharded) output projection is refused.
    """
    model = unwrap(model)
    weight = model.get_output_embeddings().weight
    if hasattr(weight, "full_tensor") and isinstance(model, FSDPModule) and not torch.is_grad_enabled():
        model.unshard()
        try:
            yield model.get_output_embeddings().weight
        finally:
            model.reshard()
        return
    if hasattr(weight, "full_tensor"):
        raise DistributedError(
            "loss_fn: FusedLinearCrossEntropy needs the whole output projection, but it is sharded here (tensor "
            "parallel lm_head); use automodel.components.loss.masked_ce.MaskedCrossEntropy with tp_size > 1"
        )
    yield weight


def model_class_name(model: nn.Module) -> str:
    """The model's own class name: FSDP2's fully_shard swaps the class for a generated `FSDP<Name>` subclass."""
    return next(cls for cls in type(unwrap(model)).__mro__ if not issubclass(cls, FSDPModule)).__name__


@contextlib.contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter for the micro-batches before the last one of a step (DDP's
    `no_sync`, FSDP2's `set_requires_gradient_sync(False)`); a no-op for a plain module."""
    if isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
        return
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


@torch.no_grad()
def _broadcast_from_rank0(model: nn.Module, device: torch.device) -> None:
    for tensor in [*model.parameters(), *model.buffers()]:
        # One tensor at a time through the device (NCCL only sends device memory); the model stays where it is.
        staged = tensor.data.to(device)
        dist.broadcast(staged, src=0)
        if staged is not tensor.data:
            tensor.data.copy_(staged)


def _decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The list of transformer blocks of a HF causal LM (`model.model.layers` for Llama-like models)."""
    for path in (
        "model.layers",
        "model.decoder.layers",
        "transformer.h",
        "gpt_neox.layers",
        "model.language_model.layers",
        "model.text_model.layers",  # Idefics3 / SmolVLM
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
    # use_reentrant=False: works with frozen inputs (PEFT), with compile and with FSDP2.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _compile_kwargs(config: CompileConfig) -> dict:
    return {"mode": config.mode, "fullgraph": config.fullgraph, "dynamic": config.dynamic, "backend": config.backend}


def _compile_layers(layers: nn.ModuleList, config: CompileConfig) -> None:
    for layer in layers:
        layer.compile(**_compile_kwargs(config))


def _compile_whole(model: nn.Module, config: CompileConfig) -> nn.Module:
    return torch.compile(model, **_compile_kwargs(config))  # type: ignore[return-value]

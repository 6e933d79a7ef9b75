"""Tensor-parallel plans: our own for the Llama / Qwen2 / Qwen3 / Mistral / Gemma families, else the model's HF plan.

A plan maps module paths (fnmatch patterns, relative to the causal LM) to torch `ParallelStyle`s. Attention and MLP
follow Megatron: q/k/v and gate/up are column-parallel (each rank computes whole heads / a slice of the MLP), o and
down are row-parallel (their partial outputs are all-reduced). transformers 5 reshapes q/k/v with `-1` heads, so the
attention code works unchanged on the local heads.

With sequence parallelism the residual stream between blocks is sharded on the sequence dimension (a DTensor with
`Shard(1)`): norms run on the local tokens, attention and MLP inputs are all-gathered, and o/down reduce-scatter.
The stream stays a DTensor (not a local tensor) so that the model still sees the full sequence length when it builds
position ids and the attention mask.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Any

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from automodel.components.distributed.config import DistributedError

# model_type -> the decoder layer's norms (applied to the residual stream, so sequence-parallel). All of these
# families name their modules like Llama (model.embed_tokens, model.layers.N.self_attn.q_proj, mlp.gate_proj, ...).
_NORMS_PER_FAMILY = {
    "llama": ("input_layernorm", "post_attention_layernorm"),
    "mistral": ("input_layernorm", "post_attention_layernorm"),
    "qwen2": ("input_layernorm", "post_attention_layernorm"),
    "qwen3": ("input_layernorm", "post_attention_layernorm"),
    "gemma": ("input_layernorm", "post_attention_layernorm"),
    "gemma2": (
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
    "gemma3_text": (
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
}

# transformers' plan style names -> torch styles (the ones whose meaning does not depend on transformers' own hooks).
_HF_STYLES = {
    "colwise": lambda: ColwiseParallel(),
    "rowwise": lambda: RowwiseParallel(),
    "colwise_gather_output": lambda: ColwiseParallel(output_layouts=Replicate()),
    "colwise_rep": lambda: ColwiseParallel(output_layouts=Replicate()),
    "rowwise_split_input": lambda: RowwiseParallel(input_layouts=Replicate()),
    "rowwise_rep": lambda: RowwiseParallel(input_layouts=Replicate()),
    "embedding_rowwise": lambda: RowwiseParallel(input_layouts=Replicate()),
    "sequence_parallel": lambda: SequenceParallel(use_local_output=True),
    "replicate": lambda: None,
}


def our_plan(model_type: str, sequence_parallel: bool) -> dict[str, ParallelStyle]:
    """Our plan for a Llama-like causal LM (`model.*` + `lm_head`)."""
    layer = "model.layers.*"
    if not sequence_parallel:
        return {
            # Vocabulary-sharded embedding: each rank looks up its rows, the partial results are all-reduced.
            "model.embed_tokens": RowwiseParallel(input_layouts=Replicate()),
            f"{layer}.self_attn.q_proj": ColwiseParallel(),
            f"{layer}.self_attn.k_proj": ColwiseParallel(),
            f"{layer}.self_attn.v_proj": ColwiseParallel(),
            f"{layer}.self_attn.o_proj": RowwiseParallel(),
            f"{layer}.mlp.gate_proj": ColwiseParallel(),
            f"{layer}.mlp.up_proj": ColwiseParallel(),
            f"{layer}.mlp.down_proj": RowwiseParallel(),
            # Gathered logits: the loss sees ordinary full-vocabulary logits.
            "lm_head": ColwiseParallel(output_layouts=Replicate()),
        }
    plan: dict[str, ParallelStyle] = {
        "model.embed_tokens": RowwiseParallel(
            input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=False
        ),
        f"{layer}.self_attn": PrepareModuleInput(
            input_kwarg_layouts={"hidden_states": Shard(1)},
            desired_input_kwarg_layouts={"hidden_states": Replicate()},
        ),
        f"{layer}.self_attn.q_proj": ColwiseParallel(),
        f"{layer}.self_attn.k_proj": ColwiseParallel(),
        f"{layer}.self_attn.v_proj": ColwiseParallel(),
        f"{layer}.self_attn.o_proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
        f"{layer}.mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        f"{layer}.mlp.gate_proj": ColwiseParallel(),
        f"{layer}.mlp.up_proj": ColwiseParallel(),
        f"{layer}.mlp.down_proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
        "model.norm": SequenceParallel(),
        "lm_head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    }
    for norm in _NORMS_PER_FAMILY[model_type]:
        plan[f"{layer}.{norm}"] = SequenceParallel()
    return plan


def hf_plan(model: nn.Module) -> dict[str, ParallelStyle] | None:
    """The model's own transformers plan (`model._tp_plan`, else `config.base_model_tp_plan` under the base model
    prefix) translated to torch styles; None when it has none."""
    raw: dict[str, str] = {}
    prefix = getattr(model, "base_model_prefix", "model")
    base_plan = getattr(getattr(model, "config", None), "base_model_tp_plan", None) or {}
    raw.update({f"{prefix}.{key}": style for key, style in base_plan.items()})
    raw.update(getattr(model, "_tp_plan", None) or {})
    if not any(style in ("colwise", "rowwise") for style in raw.values()):
        return None
    plan: dict[str, ParallelStyle] = {}
    for key, style in raw.items():
        if style not in _HF_STYLES:
            raise DistributedError(
                f"distributed.tp_size: {type(model).__name__}'s transformers tp_plan uses style {style!r} for {key!r}, "
                f"which automodel cannot translate (known: {', '.join(_HF_STYLES)}); set tp_size: 1"
            )
        built = _HF_STYLES[style]()
        if built is not None:
            plan[key] = built
    return plan


def check_tp_support(model_config: Any, sequence_parallel: bool) -> None:
    """Refuse, from the config alone, a model for which no tensor-parallel plan exists."""
    model_type = getattr(model_config, "model_type", None)
    if model_type in _NORMS_PER_FAMILY:
        return
    has_hf_plan = bool(getattr(model_config, "base_model_tp_plan", None))
    if not has_hf_plan:
        raise DistributedError(
            f"distributed.tp_size > 1: no tensor-parallel plan for model type {model_type!r} (automodel has plans "
            f"for {', '.join(sorted(_NORMS_PER_FAMILY))}, and this model's config has no base_model_tp_plan); "
            "set tp_size: 1 and use FSDP2 sharding instead"
        )
    if sequence_parallel:
        raise DistributedError(
            f"distributed.sequence_parallel: only automodel's own plans ({', '.join(sorted(_NORMS_PER_FAMILY))}) "
            f"support it, and {model_type!r} uses transformers' plan; set sequence_parallel: false"
        )


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """Shard `model` over `tp_mesh` in place with our plan for its family, else its transformers plan."""
    config = getattr(model, "config", None)
    check_tp_support(config, sequence_parallel)
    model_type = getattr(config, "model_type", None)
    plan = our_plan(model_type, sequence_parallel) if model_type in _NORMS_PER_FAMILY else hf_plan(model)
    assert plan is not None  # check_tp_support refused models without a plan
    names = [name for name, _ in model.named_modules()]
    unmatched = [key for key in plan if not any(fnmatch(name, key) for name in names)]
    if unmatched:
        # A partly applied plan computes wrong results (e.g. a row-parallel o_proj after an unsharded q_proj).
        raise DistributedError(
            f"distributed.tp_size: the tensor-parallel plan for {type(model).__name__} names modules it does not "
            f"have: {', '.join(unmatched)}; set tp_size: 1"
        )
    input_embeddings, output_embeddings = model.get_input_embeddings(), model.get_output_embeddings()
    tied = output_embeddings is not None and output_embeddings.weight is input_embeddings.weight
    if tied:
        plan = _tied_consistent(model, plan, input_embeddings, output_embeddings)
    # src_data_rank=None: every rank holds the same full weights (or meta tensors), so each keeps its own slice
    # without communication.
    parallelize_module(model, tp_mesh, plan, src_data_rank=None)
    if tied:
        # Both styles shard the shared (vocab, hidden) weight on dim 0, but each wrapped it in a new Parameter:
        # tie them again so there is one parameter, one gradient and one optimizer state.
        output_embeddings.weight = input_embeddings.weight


def _tied_consistent(
    model: nn.Module, plan: dict[str, ParallelStyle], embedding: nn.Module, output: nn.Module
) -> dict[str, ParallelStyle]:
    """With tied embeddings, shard both (our plans: both on the vocab dim) or neither (an HF plan that names only
    lm_head): one weight cannot be sharded for one module and whole for the other."""
    names = {id(module): name for name, module in model.named_modules()}
    keys = {
        which: [key for key in plan if fnmatch(names[id(module)], key)]
        for which, module in (("embedding", embedding), ("output", output))
    }
    if bool(keys["embedding"]) == bool(keys["output"]):
        return plan
    dropped = keys["embedding"] + keys["output"]
    return {key: style for key, style in plan.items() if key not in dropped}

"""The reference system's (NeMo Automodel's) config forms that both recipes read, or refuse by name.

Its example YAMLs (`examples/llm_finetune`, `examples/vlm_finetune`) either run here with the meaning they have
there, or validation names each key we do not support and says what to do (docs/compatibility.md). Two kinds:

- Spellings with a meaning we have are rewritten to ours before validation, so the rest of the recipe reads one
  form: `distributed_config: {_target_: ...FSDP2Config, ...}` folds into `distributed:` (strategy + its keys),
  `compile.backend: null` is the default backend, `distributed.pp_size: 1` / `ep_size: 1|null` say "none",
  `packed_sequence.packing_strategy: thd` is how we pack, `dataset.tokenizer:` (LLM) is the run's `tokenizer:`, and
  a model built `from_config` with a `config:` from a repository loads its tokenizer (processor) from there.
- Features we do not have (pipeline and expert parallelism, FP8, QAT, QLoRA, custom model backends, the reference
  system's CI metadata and cloud launchers...) are refused with one line per key that says what to do, instead of
  the generic "unknown key" line. They are removed from the config that is validated, so nothing is reported twice.
"""

from __future__ import annotations

import logging
from typing import Any

from automodel.components.config import ConfigNode

logger = logging.getLogger(__name__)

_REMOVE = "remove the section"

# Top-level sections of reference configs that name a feature we do not have.
_SECTIONS: dict[str, str] = {
    "fp8": "FP8 training (torchao float8) is not supported yet; " + _REMOVE + " (mixed_precision: bf16 is the default)",
    "qat": "quantization-aware training is not supported yet; " + _REMOVE,
    "quantization": f"QLoRA (bitsandbytes) is not supported yet; {_REMOVE} (LoRA on the unquantized model works)",
    "parallelizer": "custom parallelizers (the MoE parallelize_model) are not supported yet; " + _REMOVE,
    "autopipeline": "pipeline parallelism is not supported yet; " + _REMOVE,
    "moe_config": "expert parallelism (MoE) is not supported yet; " + _REMOVE,
    "expansion": "model expansion is not supported yet; " + _REMOVE,
    "ci": "the reference system's CI metadata is not read here; " + _REMOVE,
    "benchmark": "the reference system's benchmark settings are not supported; " + _REMOVE,
    "nvtx": "NVTX profiling ranges are not supported yet; " + _REMOVE,
    "mlflow": "MLflow logging is not supported yet; " + _REMOVE + " (wandb: and metrics.jsonl work)",
    "comet": "Comet logging is not supported yet; " + _REMOVE + " (wandb: and metrics.jsonl work)",
    "lepton": "launching on Lepton is not supported; use a slurm: or k8s: section",
    "skypilot": "launching with SkyPilot is not supported; use a slurm: or k8s: section",
    "nemo_run": "launching with NeMo-Run is not supported; use a slurm: or k8s: section",
}
# Keys inside sections. A value in `_NEUTRAL` means "the feature is off" and is accepted (the key is dropped).
_KEYS: dict[str, str] = {
    "distributed.pp_size": "pipeline parallelism is not supported yet; remove it or set 1",
    "distributed.ep_size": "expert parallelism (MoE) is not supported yet; remove it or set 1",
    "distributed.pipeline": "pipeline parallelism is not supported yet; remove the pipeline: block",
    "distributed.moe": "expert parallelism (MoE) is not supported yet; remove the moe: block",
    "distributed.mp_policy": "a custom FSDP2 MixedPrecisionPolicy is not supported here; remove it and set "
    "distributed.param_dtype / reduce_dtype",
    "model.backend": "the reference system's custom model backends (Transformer Engine layers, fused kernels, MoE "
    "dispatchers) are not supported yet; remove the key to train the Hugging Face implementation",
    "packed_sequence.packing_strategy": "only the default packing ('thd': documents packed into rows, each "
    "attending to itself) is supported; remove the key or set thd",
    "checkpoint.dequantize_base_checkpoint": "keeping a quantized base model in its quantized format is not "
    "supported (checkpoints hold the weights as trained); remove it or set true",
    "packed_sequence.drop_long_samples": "not supported; remove it (packed_sequence.on_overflow: drop | truncate "
    "decides what happens to a sample longer than a row)",
}
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "distributed.pp_size": (1, None),
    "distributed.ep_size": (1, None),
    "packed_sequence.packing_strategy": ("thd",),
    "checkpoint.dequantize_base_checkpoint": (True,),
}
# `dataloader.batch_size` is checked by the recipes' Section: accepted when it equals step_scheduler.local_batch_size
# (the reference system's older form, nothing lost), refused otherwise.
for _section in ("dataloader", "validation_dataloader"):
    for _key in ("dataset", "sampler"):
        _KEYS[f"{_section}.{_key}"] = f"the recipe builds the {_key} itself; remove this key"

# `distributed_config:` (the reference system's newer form): its strategy class, and the keys we can take from it.
_STRATEGY_CLASSES = {"FSDP2Config": "fsdp2", "MegatronFSDPConfig": "megatron_fsdp", "DDPConfig": "ddp"}
_STRATEGY_MODULES = ("nemo_automodel.components.distributed.config.", "automodel.components.distributed.config.")
_STRATEGY_KEYS = ("sequence_parallel", "activation_checkpointing", "reshard_after_forward", "find_unused_parameters")


def reference_forms(cfg: ConfigNode, *, text_tokenizer: bool) -> tuple[ConfigNode, list[str]]:
    """A copy of `cfg` with the reference spellings rewritten to ours and its unsupported keys removed, and one
    message per unsupported key. `text_tokenizer`: the recipe builds a tokenizer (LLM), so `dataset.tokenizer`
    is read; the VLM recipe's processor comes from `processor:`. A model built `from_config` whose `config:` names
    a repository gets its tokenizer (processor) from there, as in the reference system."""
    cfg = cfg.copy()
    errors: list[str] = []
    for section, why in _SECTIONS.items():
        if section in cfg:
            del cfg[section]
            errors.append(f"{section}: {why}")
    for dotted, why in _KEYS.items():
        owner, _, key = dotted.rpartition(".")
        node = cfg.get(owner)
        if not isinstance(node, ConfigNode) or key not in node:
            continue
        value = node.pop(key)
        if not any(value == off and type(value) is type(off) for off in _NEUTRAL.get(dotted, ())):
            errors.append(f"{dotted}: {why}")
    compile_node = cfg.get("compile")
    if isinstance(compile_node, ConfigNode) and "backend" in compile_node and compile_node["backend"] is None:
        del compile_node["backend"]  # the reference system's "null: the default backend (inductor)"
    errors += _fold_distributed_config(cfg)
    if text_tokenizer:
        errors += _dataset_tokenizer(cfg)
    _preprocessor_from_model_config(cfg, "tokenizer" if text_tokenizer else "processor")
    return cfg, errors


def _fold_distributed_config(cfg: ConfigNode) -> list[str]:
    """`distributed: {dp_size, tp_size, cp_size}` + `distributed_config: {_target_: ...FSDP2Config, ...}` is one
    `distributed:` section here: the class names the strategy, and its keys join the sizes."""
    if "distributed_config" not in cfg:
        return []
    node = cfg.pop("distributed_config")
    if not isinstance(node, ConfigNode):
        return [f"distributed_config: expected a section with a _target_ such as {_STRATEGY_MODULES[0]}FSDP2Config"]
    target = node.get("_target_")
    name = target.rpartition(".")[2] if isinstance(target, str) and target.startswith(_STRATEGY_MODULES) else None
    if name not in _STRATEGY_CLASSES:
        choices = ", ".join(_STRATEGY_CLASSES)
        return [f"distributed_config._target_: {target!r} is not one of the reference strategy classes ({choices})"]
    if cfg.get("distributed") is None:
        cfg["distributed"] = {}
    distributed = cfg["distributed"]
    if not isinstance(distributed, ConfigNode):
        return ["distributed: expected a section (dp_size, tp_size, cp_size...) next to distributed_config"]
    errors = []
    strategy = _STRATEGY_CLASSES[name]
    if distributed.get("strategy", strategy) != strategy:
        errors.append(
            f"distributed_config._target_: {name} means strategy {strategy}, but distributed.strategy is "
            f"{distributed['strategy']!r}; keep one of them"
        )
    distributed["strategy"] = strategy
    for key, value in node.items():
        if key == "_target_":
            continue
        if key not in _STRATEGY_KEYS:
            errors.append(
                f"distributed_config.{key}: not supported here; remove it (supported: {', '.join(_STRATEGY_KEYS)})"
            )
        elif key in distributed and distributed[key] != value:
            errors.append(f"distributed_config.{key}: also set in distributed with another value; keep one of them")
        elif not (key == "reshard_after_forward" and value is None):  # None: the reference's "default" heuristic
            distributed[key] = value
    return errors


def _dataset_tokenizer(cfg: ConfigNode) -> list[str]:
    """The reference system builds the run's tokenizer from `dataset.tokenizer` when it has one (a `_target_`, or
    `from_pretrained` keyword arguments): that is our top-level `tokenizer:` section. One tokenizer per run."""
    moved = None
    for section in ("dataset", "validation_dataset"):
        node = cfg.get(section)
        if not isinstance(node, ConfigNode) or "tokenizer" not in node:
            continue
        value = node.pop("tokenizer")
        if "tokenizer" not in cfg:
            cfg["tokenizer"] = value
            moved = section
            logger.info("%s.tokenizer is used as the run's tokenizer: section", section)
        elif _plain(cfg["tokenizer"]) != _plain(value):
            where = f"{moved}.tokenizer" if moved else "the tokenizer: section"
            return [f"{section}.tokenizer: differs from {where}; a run has one tokenizer, keep one of them"]
    return []


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, ConfigNode) else value


def _preprocessor_from_model_config(cfg: ConfigNode, section: str) -> None:
    """`model: {_target_: ...from_config, config: {_target_: ...AutoConfig.from_pretrained,
    pretrained_model_name_or_path: REPO}}` and no `tokenizer:` (`processor:`) section: the reference system loads it
    from REPO."""
    model = cfg.get("model")
    if section in cfg or not isinstance(model, ConfigNode) or "pretrained_model_name_or_path" in model:
        return
    config = model.get("config")
    source = config.get("pretrained_model_name_or_path") if isinstance(config, ConfigNode) else config
    if not isinstance(source, str):
        return
    node: dict[str, Any] = {"pretrained_model_name_or_path": source}
    if isinstance(config, ConfigNode) and "trust_remote_code" in config:
        node["trust_remote_code"] = config["trust_remote_code"]
    cfg[section] = node
    logger.info("%s: loaded from %s, the repository of model.config", section, source)

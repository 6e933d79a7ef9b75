"""Fine-tune a Hugging Face vision-language model (image-text-to-text, SFT or LoRA) from one YAML file.

    automodel vlm finetune -c examples/vlm/smolvlm_shapes_demo.yaml [--step_scheduler.max_steps 20 ...]
    python automodel/recipes/vlm/finetune.py -c CONFIG [--dotted.key value ...]
    torchrun --nproc-per-node 2 automodel/recipes/vlm/finetune.py -c CONFIG

The same shape as the LLM recipe, on the same shared phases (`recipes/_common.py`): validate -> process group and
seed -> model, processor, freezing / LoRA -> data -> parallelism, optimizer and schedule -> resume, loop and
checkpoints -> report. What differs, and is all this file holds: a processor
(tokenizer + image processor + chat template) instead of a tokenizer, a collate function that runs it, the
`freeze_config` section, LoRA on the language model only by default, and checkpoints that carry the processor.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from automodel._shared.errors import UserError
from automodel.components._peft import apply_peft, write_adapter_dir
from automodel.components._transformers import (
    FreezeConfig,
    NeMoAutoProcessor,
    apply_freeze_config,
    check_processor_matches_model,
    non_language_modules,
    resolve_model_path,
)
from automodel.components.config import ConfigError, ConfigNode, Section, build_section, resolve_target
from automodel.components.datasets.vlm import collate_fn_for, render_vlm_batch
from automodel.recipes._common import (
    COMMON_SECTIONS,
    build_optimization,
    common_checks,
    finish,
    parallelize,
    recipe_cli,
    start,
    train,
    validate_recipe,
    world_size_from_env,
)
from automodel.recipes._limits import collate_lengths, length_limit, model_max_positions, no_nan
from automodel.recipes._reference import reference_forms
from automodel.recipes._steps import build_dataloader, setup_logging

logger = logging.getLogger("automodel.recipes.vlm.finetune")

# Every section a config may have: the common ones plus the processor and what to freeze. The dataloaders'
# collate_fn is checked separately (`_collate_errors`): the recipe passes it the processor.
SCHEMA: dict[str, Section] = {
    **COMMON_SECTIONS,
    "processor": Section(default_target=NeMoAutoProcessor.from_pretrained),
    "freeze_config": Section(default_target=FreezeConfig),
}
# What the recipe passes a collate function itself.
_COLLATE_PROVIDED = ("examples", "processor")
_DEFAULT_COLLATE_NAME = "automodel.components.datasets.vlm.collate_fns.default_collate_fn"


def _collate_target(value: Any, key: str) -> tuple[Callable[..., Any] | None, dict[str, Any]]:
    """A dataloader's `collate_fn`: a dotted name, or a mapping with `_target_` and options (reference style)."""
    if isinstance(value, Mapping):
        options = {k: v for k, v in value.items() if k != "_target_"}
        return (resolve_target(value["_target_"], key=f"{key}._target_") if "_target_" in value else None), options
    return resolve_target(value, key=key), {}


def _collate_errors(cfg: ConfigNode) -> list[str]:
    errors = []
    for section in ("dataloader", "validation_dataloader"):
        key = f"{section}.collate_fn"
        if cfg.get(key) is None:
            continue
        try:
            target, options = _collate_target(cfg.get(key), key)
        except ConfigError as error:
            errors.append(str(error))
            continue
        if target is None:
            errors.append(f"{key}: a mapping needs a _target_ (e.g. {_DEFAULT_COLLATE_NAME})")
            continue
        params = inspect.signature(target).parameters
        missing = [name for name in _COLLATE_PROVIDED if name not in params]
        if missing:
            errors.append(f"{key}: {target.__name__} must accept {', '.join(missing)} (the recipe passes them)")
        unknown = [k for k in options if k not in params and k not in _COLLATE_PROVIDED]
        if unknown:
            accepted = ", ".join(p for p in params if p not in _COLLATE_PROVIDED)
            errors.append(f"{key}: unknown option(s) {unknown}; accepted: {accepted}")
    return errors


def _vlm_sections(cfg: ConfigNode) -> list[str]:
    errors = []
    for key in ("tp_size", "cp_size"):
        if (cfg.get(f"distributed.{key}", 1) or 1) > 1:
            errors.append(f"distributed.{key}: the VLM recipe supports data parallelism only (ddp, fsdp2); set 1")
    return errors


def validate(cfg: ConfigNode, world_size: int = 1) -> ConfigNode:
    """Check the whole config (keys, targets, types, batch sizes, value ranges) before any data or weights are
    touched; return it with the reference system's spellings rewritten to ours (recipes/_reference.py)."""
    normalized, refused = reference_forms(cfg, text_tokenizer=False)
    cfg = normalized.copy()
    # The collate_fns are checked against what the recipe passes them (the processor), not bound as sections; NaN
    # and their lengths are checked before their options are set aside.
    problems = refused + _collate_errors(cfg) + collate_lengths(cfg) + no_nan(cfg)
    for section in ("dataloader", "validation_dataloader"):
        if isinstance(cfg.get(section), ConfigNode):
            cfg[section].pop("collate_fn", None)
    packing = cfg.pop("packed_sequence", None)
    if isinstance(packing, ConfigNode) and packing.get("packed_sequence_size", 0):
        problems.append("packed_sequence: packing is not available for vision-language models; remove the section")
    checks = common_checks(
        world_size, model_example="automodel.NeMoAutoModelForImageTextToText.from_pretrained", companion="processor"
    )
    checks = [check for check in checks if check is not no_nan]  # already run above, with the collate options
    validate_recipe(cfg, SCHEMA, [*checks, _vlm_sections, lambda _: problems])
    return normalized


def _with_collate(cfg: ConfigNode, section: str, processor: Any) -> ConfigNode:
    """The dataloader section with its collate_fn bound to the processor (the family's default when unset)."""
    node = cfg[section].copy() if cfg.get(section) is not None else ConfigNode({})
    if node.get("collate_fn") is None:
        collate, options = collate_fn_for(processor), {}
    else:
        collate, options = _collate_target(node["collate_fn"], f"{section}.collate_fn")
    node["collate_fn"] = functools.partial(collate, processor=processor, **options)
    return node


def _within_positions(node: ConfigNode, section: str, max_positions: int | None) -> ConfigNode:
    """The dataloader section with its collate_fn's max_length checked against the model's positions, and set to
    them when the config gives none (so no sample, image tokens included, runs past them)."""
    collate = node["collate_fn"]
    limit = length_limit(
        collate.keywords, f"{section}.collate_fn", max_positions, option="max_length", target=collate.func
    )
    if limit:
        node["collate_fn"] = functools.partial(collate, **limit)
    return node


def _load_processor(cfg: ConfigNode, model_source: str | None) -> Any:
    if "processor" in cfg:
        return build_section(cfg, "processor", SCHEMA["processor"])
    return NeMoAutoProcessor.from_pretrained(model_source)  # the model's own


# ---------------------------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------------------------
def main(cfg: ConfigNode) -> dict[str, Any]:
    """Run the fine-tune described by `cfg`; return a summary (validation losses, checkpoint path, step losses, and
    the trained model)."""
    # --- validation, process group, logging, seed ----------------------------------------------------------------
    cfg = validate(cfg, world_size_from_env())
    run = start(cfg, SCHEMA)
    device = run.dist_info.device

    # --- model, processor, what trains -------------------------------------------------------------------------
    model_source = cfg.model.get("pretrained_model_name_or_path")
    if model_source is not None:
        model_source = resolve_model_path(model_source)
    model = build_section(cfg, "model", SCHEMA["model"])
    processor = _load_processor(cfg, model_source)
    check_processor_matches_model(processor, model)  # another family's processor fails here, not mid-training
    peft_config = None
    if "peft" in cfg:  # LoRA / DoRA: freeze the base, patch the target linears (before sharding and the optimizer)
        peft_config = build_section(cfg, "peft", SCHEMA["peft"])
        if "exclude_modules" not in cfg.peft:  # the language model only, unless the config says otherwise
            peft_config.exclude_modules = [f"{name}.*" for name in non_language_modules(model)]
        if "freeze_config" in cfg:
            logger.warning("freeze_config is ignored with peft: LoRA freezes every base weight already")
        peft_config, _ = apply_peft(model, peft_config)
    elif "freeze_config" in cfg:
        apply_freeze_config(model, build_section(cfg, "freeze_config", SCHEMA["freeze_config"]))
    run.precision.check(model, device)
    model.train()
    autocast = run.precision.autocast(device)

    # --- data --------------------------------------------------------------------------------------------------
    max_positions = model_max_positions(model)  # of the language model; the collate's max_length is checked against it
    loader_options = {
        "batch_size": cfg.step_scheduler.local_batch_size,
        "pad_token_id": processor.tokenizer.pad_token_id,
        "state": run.state,
        "seed": run.seed,
    }

    def loader_section(name: str) -> ConfigNode:
        return _within_positions(_with_collate(cfg, name, processor), name, max_positions)

    train_loader = build_dataloader(
        loader_section("dataloader"),
        build_section(cfg, "dataset", SCHEMA["dataset"]),
        train=True,
        global_batch_size=cfg.step_scheduler.global_batch_size,
        **loader_options,
    )
    val_loader = None
    if "validation_dataset" in cfg:
        val_loader = build_dataloader(
            loader_section("validation_dataloader"),
            build_section(cfg, "validation_dataset", SCHEMA["validation_dataset"]),
            train=False,
            **loader_options,
        )

    # --- parallelism, loss, optimizer, schedule ------------------------------------------------------------------
    train_model, identity = parallelize(cfg, SCHEMA, model, run, model_source)
    parts = build_optimization(cfg, SCHEMA, model, train_loader, run)

    def write_adapter(directory: Path) -> None:  # a PEFT run's model/ is the HF PEFT adapter, not the full model
        write_adapter_dir(
            model,
            directory,
            peft_config,
            base_model_name_or_path=model_source,
            rank=run.dist_info.rank,
            tokenizer=processor,
        )

    # --- resume, training loop, checkpoints (the processor is saved next to the weights) ----------------------------
    summary = train(
        cfg,
        SCHEMA,
        run,
        parts,
        model=model,
        train_model=train_model,
        identity=identity,
        val_loader=val_loader,
        autocast=autocast,
        text_side=processor,
        model_writer=None if peft_config is None else write_adapter,
    )
    hint = "transformers.AutoModelForImageTextToText.from_pretrained and AutoProcessor.from_pretrained"
    return finish(summary, adapter=peft_config is not None, load_hint=hint, merge_hint=False)


def preview(cfg: ConfigNode, *, split: str = "train", num_samples: int = 2, color: bool = True) -> list[str]:
    """Render the first samples of the train (or validation) dataset as the model sees them, with the tokens that
    carry loss highlighted and each image's tokens shown once with a count."""
    setup_logging(0)
    cfg, _ = reference_forms(cfg, text_tokenizer=False)  # validated by the caller
    section = "dataset" if split == "train" else "validation_dataset"
    if section not in cfg:
        raise UserError(f"{section}: the config has no such section to preview")
    model_source = cfg.model.get("pretrained_model_name_or_path")
    processor = _load_processor(cfg, resolve_model_path(model_source) if model_source is not None else None)
    dataset = build_section(cfg, section, SCHEMA[section])
    node = _with_collate(cfg, "dataloader" if split == "train" else "validation_dataloader", processor)
    batch = node["collate_fn"]([dataset[i] for i in range(min(num_samples, len(dataset)))])
    return render_vlm_batch(batch, processor.tokenizer, color=color)


def cli(argv: Iterable[str] | None = None) -> None:
    """`python automodel/recipes/vlm/finetune.py -c CONFIG [overrides]` (also what torchrun runs on every rank)."""
    recipe_cli(main, argv)


if __name__ == "__main__":
    cli()

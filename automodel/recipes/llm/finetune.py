"""Fine-tune a Hugging Face causal LM (SFT) from one YAML file.

    automodel llm finetune -c examples/llm/smollm2_135m_squad.yaml [--step_scheduler.max_steps 20 ...]
    python automodel/recipes/llm/finetune.py -c CONFIG [--dotted.key value ...]
    torchrun --nproc-per-node 2 automodel/recipes/llm/finetune.py -c CONFIG

The file reads top to bottom: validate -> process group and seed -> model and tokenizer -> data -> parallelism,
optimizer and schedule -> resume, loop and checkpoints -> report. Only the build steps read the config; the loop sees
built objects. What every recipe does the same way lives in `recipes/_common.py` (the phases of a run) and
`recipes/_steps.py` (one step, evaluation, the dataloader); the components do the work.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from automodel._shared.errors import UserError
from automodel.components._peft import apply_peft, write_adapter_dir
from automodel.components._transformers import NeMoAutoTokenizer, resolve_model_path, uses_flash_attention
from automodel.components.config import ConfigNode, Section, build_section
from automodel.components.datasets import PackedSequenceConfig
from automodel.components.datasets.preview import render_sample
from automodel.components.distributed import validate_for_model
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
from automodel.recipes._limits import check_packing_fits, length_limit, model_max_positions
from automodel.recipes._reference import reference_forms
from automodel.recipes._steps import build_dataloader, setup_logging

logger = logging.getLogger("automodel.recipes.llm.finetune")

# Every section a config may have: what builds it when it has no `_target_`, and what the recipe supplies at build
# time. The same entries drive validation (before anything loads) and build_section.
_DATASET_SUPPLIES = frozenset({"tokenizer", "seq_length"})
SCHEMA: dict[str, Section] = {
    **COMMON_SECTIONS,
    "tokenizer": Section(default_target=NeMoAutoTokenizer.from_pretrained),
    "packed_sequence": Section(default_target=PackedSequenceConfig),
    # A dataset gets the run's tokenizer, unless it names its own (`dataset.tokenizer: {_target_: ...}`), and the
    # model's positions as its seq_length when it sets none (recipes/_limits.py: length_limit).
    "dataset": Section(required=True, provided=_DATASET_SUPPLIES, overridable=_DATASET_SUPPLIES),
    "validation_dataset": Section(provided=_DATASET_SUPPLIES, overridable=_DATASET_SUPPLIES),
}


def validate(cfg: ConfigNode, world_size: int = 1) -> ConfigNode:
    """Check the whole config (keys, targets, types, batch sizes, value ranges) before any data or weights are
    touched; return it with the reference system's spellings rewritten to ours (recipes/_reference.py)."""
    cfg, refused = reference_forms(cfg, text_tokenizer=True)
    checks = common_checks(
        world_size, model_example="automodel.NeMoAutoModelForCausalLM.from_pretrained", companion="tokenizer"
    )
    validate_recipe(cfg, SCHEMA, [*checks, lambda _: refused])
    return cfg


def _load_tokenizer(cfg: ConfigNode, model_source: str | None) -> Any:
    if "tokenizer" in cfg:
        return build_section(cfg, "tokenizer", SCHEMA["tokenizer"])
    return NeMoAutoTokenizer.from_pretrained(model_source)  # the model's own


def _model_source(cfg: ConfigNode) -> str | None:
    source = cfg.model.get("pretrained_model_name_or_path")
    return None if source is None else resolve_model_path(source, cfg.model.get("gguf_file"))


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

    # --- model and tokenizer ---------------------------------------------------------------------------------
    model_source = _model_source(cfg)
    if run.state.tp_size > 1 and model_source is not None:  # head counts vs tp_size, before any weight is read
        validate_for_model(run.distributed, AutoConfig.from_pretrained(model_source))
    model = build_section(cfg, "model", SCHEMA["model"])  # with `init_device: meta`, parallelize loads the shards
    tokenizer = _load_tokenizer(cfg, model_source)
    peft_config = None
    if "peft" in cfg:  # LoRA / DoRA: freeze the base, patch the target linears (before sharding and the optimizer)
        peft_config, _ = apply_peft(model, build_section(cfg, "peft", SCHEMA["peft"]))
    run.precision.check(model, device)
    model.train()
    autocast = run.precision.autocast(device)

    # --- data --------------------------------------------------------------------------------------------------
    packing = build_section(cfg, "packed_sequence", SCHEMA["packed_sequence"])
    # No sample may be longer than the model's positions: checked before any row is tokenized, and a dataset
    # without seq_length is capped there (a 10 MB row would otherwise become a multi-million-token sample).
    max_positions = model_max_positions(model)
    if packing.enabled:
        check_packing_fits(packing.packed_sequence_size, max_positions)
    loader_options = {
        "batch_size": cfg.step_scheduler.local_batch_size,
        "pad_token_id": tokenizer.pad_token_id,
        "state": run.state,
        "seed": run.seed,
        "packing": packing,
        "flash_attention": uses_flash_attention(model),
    }

    def dataset(name: str) -> Any:
        limit = length_limit(cfg[name], name, max_positions)
        return build_section(cfg, name, SCHEMA[name], tokenizer=tokenizer, **limit)

    train_loader = build_dataloader(
        cfg.get("dataloader"),
        dataset("dataset"),
        train=True,
        global_batch_size=cfg.step_scheduler.global_batch_size,
        **loader_options,
    )
    val_loader = None
    if "validation_dataset" in cfg:
        val_loader = build_dataloader(
            cfg.get("validation_dataloader"), dataset("validation_dataset"), train=False, **loader_options
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
            tokenizer=tokenizer,
        )

    # --- resume, training loop, checkpoints ----------------------------------------------------------------------
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
        text_side=tokenizer,
        model_writer=None if peft_config is None else write_adapter,
    )
    return finish(
        summary, adapter=peft_config is not None, load_hint="transformers.AutoModelForCausalLM.from_pretrained"
    )


def preview(cfg: ConfigNode, *, split: str = "train", num_samples: int = 2, color: bool = True) -> list[str]:
    """Render the first samples of the train (or validation) dataset with the tokens that carry loss highlighted."""
    setup_logging(0)
    cfg, _ = reference_forms(cfg, text_tokenizer=True)  # validated by the caller
    section = "dataset" if split == "train" else "validation_dataset"
    if section not in cfg:
        raise UserError(f"{section}: the config has no such section to preview")
    tokenizer = _load_tokenizer(cfg, _model_source(cfg))
    dataset = build_section(cfg, section, SCHEMA[section], tokenizer=tokenizer)
    return [render_sample(dataset[i], tokenizer, color=color) for i in range(min(num_samples, len(dataset)))]


def cli(argv: Iterable[str] | None = None) -> None:
    """`python automodel/recipes/llm/finetune.py -c CONFIG [overrides]` (also what torchrun runs on every rank)."""
    recipe_cli(main, argv)


if __name__ == "__main__":
    cli()

"""Fine-tune a Hugging Face causal LM (SFT) from one YAML file.

    automodel llm finetune -c examples/llm/smollm2_135m_squad.yaml [--step_scheduler.max_steps 20 ...]
    python automodel/recipes/llm/finetune.py -c CONFIG [--dotted.key value ...]
    torchrun --nproc-per-node 2 automodel/recipes/llm/finetune.py -c CONFIG

The file reads top to bottom: validate -> distributed and seed -> build (model, data, loss, optimizer, schedule,
checkpoint, loggers) -> resume -> loop -> final save. Only the build section reads the config; the loop sees built
objects. Reusable pieces live in `automodel.components`; this file only composes them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import AutoConfig

from automodel._shared.errors import UserError, exit_on_user_error
from automodel.components._peft import PeftConfig, apply_peft, write_adapter_dir
from automodel.components._transformers import (
    NeMoAutoTokenizer,
    meta_weights_path,
    resolve_model_path,
    uses_flash_attention,
)
from automodel.components.checkpoint import CheckpointConfig, Checkpointer
from automodel.components.config import (
    ConfigNode,
    ConfigValidationError,
    Section,
    apply_overrides,
    instantiate,
    load_config,
    parse_cli_args,
    validate_config,
)
from automodel.components.datasets import PackedSequenceConfig
from automodel.components.datasets.preview import render_sample
from automodel.components.distributed import (
    CompileConfig,
    DistEnvConfig,
    DistributedConfig,
    build_parallel_state,
    clip_grad_norm_,
    destroy_distributed,
    initialize_distributed,
    parallelize_model,
    shard_optimizer,
    validate_for_model,
)
from automodel.components.loggers import LoggingConfig, WandbLogger, build_loggers
from automodel.components.loss.masked_ce import MaskedCrossEntropy
from automodel.components.optim import build_lr_scheduler
from automodel.components.training import (
    ClipGradNormConfig,
    MixedPrecisionConfig,
    ShutdownSignal,
    StatefulRNG,
    StepScheduler,
    default_peak_flops,
    flops_per_token,
    mfu,
    peak_memory_gib,
)
from automodel.recipes._limits import (
    check_packing_fits,
    length_limit,
    limit_checks,
    model_max_positions,
    one_per_key,
)
from automodel.recipes._reference import reference_forms
from automodel.recipes._steps import (
    build_dataloader,
    evaluate,
    model_identity,
    resume_latest,
    setup_logging,
    train_step,
)

logger = logging.getLogger("automodel.recipes.llm.finetune")

# Every section a config may have: what builds it when it has no `_target_`, and which keyword arguments the recipe
# supplies itself at build time. validate_config binds each section to that signature before anything is loaded.
_DATALOADER = Section(
    default_target=DataLoader,
    provided=frozenset({"dataset", "batch_size", "sampler", "collate_fn", "generator"}),
    ignore=frozenset({"shuffle", "group_by_length", "megabatch_mult"}),  # the recipe's own sampler takes these
)
SCHEMA: dict[str, Section] = {
    "seed": Section(),
    "step_scheduler": Section(
        default_target=StepScheduler, provided=frozenset({"dp_size", "dataloader"}), required=True
    ),
    "dist_env": Section(default_target=DistEnvConfig),
    "rng": Section(default_target=StatefulRNG, provided=frozenset({"rank"})),
    "model": Section(required=True),
    "tokenizer": Section(default_target=NeMoAutoTokenizer.from_pretrained),
    "peft": Section(default_target=PeftConfig),
    "distributed": Section(default_target=DistributedConfig),
    "compile": Section(default_target=CompileConfig),
    "mixed_precision": Section(default_target=MixedPrecisionConfig),
    "loss_fn": Section(default_target=MaskedCrossEntropy),
    "dataset": Section(required=True, provided=frozenset({"tokenizer"})),
    "packed_sequence": Section(default_target=PackedSequenceConfig),
    "dataloader": _DATALOADER,
    "validation_dataset": Section(provided=frozenset({"tokenizer"})),
    "validation_dataloader": _DATALOADER,
    "optimizer": Section(default_target=torch.optim.AdamW, provided=frozenset({"params"})),
    "lr_scheduler": Section(default_target=build_lr_scheduler, provided=frozenset({"optimizer", "total_steps"})),
    "clip_grad_norm": Section(default_target=ClipGradNormConfig),
    "checkpoint": Section(default_target=CheckpointConfig),
    "logging": Section(default_target=LoggingConfig),
    "wandb": Section(default_target=WandbLogger, provided=frozenset({"rank", "config"})),
}


def _checks(world_size: int) -> list[Callable[[ConfigNode], list[str]]]:
    """Cross-section rules that signatures alone cannot express."""

    def batch_sizes(cfg: ConfigNode) -> list[str]:
        gbs, lbs = cfg.get("step_scheduler.global_batch_size"), cfg.get("step_scheduler.local_batch_size")
        model_parallel = (cfg.get("distributed.tp_size", 1) or 1) * (cfg.get("distributed.cp_size", 1) or 1)
        dp = max(1, world_size // model_parallel) if isinstance(model_parallel, int) else world_size
        if isinstance(gbs, int) and isinstance(lbs, int) and lbs > 0 and gbs % (lbs * dp):
            return [
                f"step_scheduler.global_batch_size({gbs}) must be a multiple of local_batch_size({lbs}) x "
                f"data-parallel size({dp}) = {lbs * dp}"
            ]
        return []

    def scalars(cfg: ConfigNode) -> list[str]:
        errors = []
        if "seed" in cfg and (isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32):
            errors.append(f"seed: expected an integer in [0, 2**32), got {cfg.seed!r}")
        model = cfg.get("model")
        if isinstance(model, ConfigNode) and "_target_" not in model:
            errors.append("model: needs a _target_, e.g. automodel.NeMoAutoModelForCausalLM.from_pretrained")
        if isinstance(model, ConfigNode) and "tokenizer" not in cfg and "pretrained_model_name_or_path" not in model:
            errors.append(
                "tokenizer: a model built from a config needs a tokenizer section (pretrained_model_name_or_path)"
            )
        return errors

    # Sizes, step counts and rates in range, and no NaN anywhere (recipes/_limits.py).
    return [batch_sizes, scalars, *limit_checks()]


def validate(cfg: ConfigNode, world_size: int = 1) -> ConfigNode:
    """Check the whole config (keys, targets, types, batch sizes, value ranges) before any data or weights are
    touched; return it with the reference system's spellings rewritten to ours (recipes/_reference.py)."""
    cfg, refused = reference_forms(cfg, text_tokenizer=True)
    checked = cfg.copy()
    checked.pop("recipe", None)  # names the recipe for `automodel CONFIG.yaml`; the CLI reads it, not this recipe
    try:
        validate_config(checked, SCHEMA, checks=[*_checks(world_size), lambda _: refused])
    except ConfigValidationError as error:  # one message per key: a bad value can fail several checks
        raise ConfigValidationError(one_per_key(error.errors, SCHEMA)) from None
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------------------------
def main(cfg: ConfigNode) -> dict[str, Any]:
    """Run the fine-tune described by `cfg`; return a summary (validation losses, checkpoint path, step losses, and
    the trained model)."""
    # --- validation, distributed, logging, seed ----------------------------------------------------------------
    cfg = validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    dist_env = instantiate(cfg.get("dist_env"), default_target=DistEnvConfig)
    dist_info = initialize_distributed(dist_env.backend, dist_env.timeout_minutes)
    setup_logging(dist_info.rank)
    distributed = instantiate(cfg.get("distributed"), default_target=DistributedConfig)
    distributed.validate(dist_info.world_size, dist_info.device)
    state = build_parallel_state(distributed, dist_info)
    rng_node = cfg.get("rng") or ConfigNode({"seed": cfg.get("seed", 42)})
    rng = instantiate(rng_node, default_target=StatefulRNG, rank=dist_info.rank)
    seed = rng_node.get("seed", 42)

    # --- model and tokenizer ---------------------------------------------------------------------------------
    precision = instantiate(cfg.get("mixed_precision"), default_target=MixedPrecisionConfig)
    model_source = cfg.model.get("pretrained_model_name_or_path")
    if model_source is not None:
        model_source = resolve_model_path(model_source, cfg.model.get("gguf_file"))
    if state.tp_size > 1 and model_source is not None:  # head counts vs tp_size, before any weight is read
        validate_for_model(distributed, AutoConfig.from_pretrained(model_source))
    model = instantiate(cfg.model)  # on the meta device with `init_device: meta`: parallelize_model loads shards
    tokenizer = instantiate(
        cfg.get("tokenizer"),
        default_target=NeMoAutoTokenizer.from_pretrained,
        **({} if "tokenizer" in cfg else {"pretrained_model_name_or_path": model_source}),
    )
    peft_config = None
    if "peft" in cfg:  # LoRA / DoRA: freeze the base, patch the target linears (before sharding and the optimizer)
        peft_config, _ = apply_peft(model, instantiate(cfg.peft, default_target=PeftConfig))
    precision.check(model, dist_info.device)
    model.train()
    autocast = precision.autocast(dist_info.device)

    # --- data --------------------------------------------------------------------------------------------------
    local_batch_size = cfg.step_scheduler.local_batch_size
    packing = instantiate(cfg.get("packed_sequence"), default_target=PackedSequenceConfig)
    flash = uses_flash_attention(model)
    # No sample may be longer than the model's positions: checked before any row is tokenized, and a dataset
    # without seq_length is capped there (a 10 MB row would otherwise become a multi-million-token sample).
    max_positions = model_max_positions(model)
    if packing.enabled:
        check_packing_fits(packing.packed_sequence_size, max_positions)
    dataset = instantiate(cfg.dataset, tokenizer=tokenizer, **length_limit(cfg.dataset, "dataset", max_positions))
    train_loader = build_dataloader(
        cfg.get("dataloader"),
        dataset,
        batch_size=local_batch_size,
        pad_token_id=tokenizer.pad_token_id,
        state=state,
        seed=seed,
        train=True,
        packing=packing,
        flash_attention=flash,
        global_batch_size=cfg.step_scheduler.global_batch_size,
    )
    val_loader = None
    if "validation_dataset" in cfg:
        val_limit = length_limit(cfg.validation_dataset, "validation_dataset", max_positions)
        val_dataset = instantiate(cfg.validation_dataset, tokenizer=tokenizer, **val_limit)
        val_loader = build_dataloader(
            cfg.get("validation_dataloader"),
            val_dataset,
            batch_size=local_batch_size,
            pad_token_id=tokenizer.pad_token_id,
            state=state,
            seed=seed,
            train=False,
            packing=packing,
            flash_attention=flash,
        )

    # --- parallelism, loss, optimizer, schedule ------------------------------------------------------------------
    # TP -> activation checkpointing -> compile -> FSDP2 | DDP; moves the model to the device (loading its shards
    # when it was built on the meta device). The optimizer is built right after, over the sharded parameters.
    compile_config = instantiate(cfg.get("compile"), default_target=CompileConfig)
    train_model = parallelize_model(
        model,
        dist_info,
        distributed,
        compile_config,
        state=state,
        weights_path=meta_weights_path(model),
        cast_frozen_weights=precision.cast_frozen_linear_weights,  # frozen base weights stored in bf16 where it can
    )
    identity = model_identity(model, model_source)  # after the weights are loaded (meta-device init)
    loss_fn = instantiate(cfg.get("loss_fn"), default_target=MaskedCrossEntropy)
    step_scheduler = instantiate(
        cfg.step_scheduler, default_target=StepScheduler, dp_size=state.dp_size, dataloader=train_loader
    )
    # Named parameters: torch optimizers keep the names (param_names), and name-aware ones (Muon, no-decay groups)
    # need them.
    named_trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    trainable = [p for _, p in named_trainable]
    optimizer = instantiate(cfg.get("optimizer"), default_target=torch.optim.AdamW, params=named_trainable)
    optimizer = shard_optimizer(optimizer, distributed)  # Megatron-FSDP owns its optimizer's shards; else a no-op
    lr_scheduler = instantiate(
        cfg.get("lr_scheduler"),
        default_target=build_lr_scheduler,
        optimizer=optimizer,
        total_steps=step_scheduler.total_steps,
    )
    max_norm = instantiate(cfg.get("clip_grad_norm"), default_target=ClipGradNormConfig).max_norm

    # --- checkpointing and logging -------------------------------------------------------------------------------
    checkpointer = Checkpointer(
        instantiate(cfg.get("checkpoint"), default_target=CheckpointConfig),
        rank=dist_info.rank,
        world_size=dist_info.world_size,
    )
    log_cfg = instantiate(cfg.get("logging"), default_target=LoggingConfig)
    log_dir = log_cfg.resolve_log_dir(checkpointer.config.checkpoint_dir if checkpointer.config.enabled else None)
    metric_loggers = build_loggers(
        step_scheduler.total_steps,
        rank=dist_info.rank,
        jsonl_path=f"{log_dir}/metrics.jsonl",
        wandb=cfg.wandb.to_dict() if "wandb" in cfg else None,
        wandb_config=cfg.to_dict(raw=True),
        progress_bar=log_cfg.progress_bar,
        log_every_steps=log_cfg.log_every_steps,
    )
    peak_flops = log_cfg.peak_flops or default_peak_flops(dist_info.device, precision.torch_dtype or torch.float32)

    # --- resume ------------------------------------------------------------------------------------------------
    resume_latest(
        checkpointer,
        identity,
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        step_scheduler=step_scheduler,
        rng=rng,
        metric_loggers=metric_loggers,
        dp_size=state.dp_size,
        rank=dist_info.rank,
    )

    def save_checkpoint() -> None:
        path = checkpointer.save(
            step_scheduler.epoch,
            step_scheduler.step,
            model=model,
            tokenizer=tokenizer,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            train_state={"step_scheduler": step_scheduler.state_dict(), "dp_size": state.dp_size},
            rng_state=rng.state_dict(),
            config_yaml=cfg.to_yaml(),
            model_identity=identity,
            model_writer=None if peft_config is None else write_adapter,
        )
        summary["checkpoint"] = str(path)

    def write_adapter(directory: Path) -> None:  # a PEFT run's model/ is the HF PEFT adapter, not the full model
        write_adapter_dir(
            model,
            directory,
            peft_config,
            base_model_name_or_path=model_source,
            rank=dist_info.rank,
            tokenizer=tokenizer,
        )

    def validate_now() -> float | None:
        if val_loader is None:
            return None
        metrics = evaluate(train_model, val_loader, loss_fn, autocast, state)
        metric_loggers.log(metrics, step_scheduler.step, prefix="val")
        return metrics["loss"]

    # --- training loop -----------------------------------------------------------------------------------------
    summary: dict[str, Any] = {"train_losses": {}, "checkpoint": None}
    summary["val_loss_before"] = validate_now() if step_scheduler.step == 0 else None
    val_loss = summary["val_loss_before"]
    with ShutdownSignal() as shutdown:
        for batches in step_scheduler:
            start = time.perf_counter()
            stats = train_step(train_model, batches, loss_fn, autocast, state, step=step_scheduler.step)
            grad_norm = clip_grad_norm_(trainable, max_norm if max_norm else float("inf"))  # DTensor-aware
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - start
            tokens_per_s = stats["num_tokens"] / elapsed
            metrics = {
                "loss": stats["loss"],
                "grad_norm": grad_norm,
                "lr": optimizer.param_groups[0]["lr"],
                "tokens_per_s": tokens_per_s,
                "peak_memory_gib": peak_memory_gib(dist_info.device),
                "num_label_tokens": stats["num_label_tokens"],
                "step_time_s": elapsed,
                "epoch": step_scheduler.epoch,
            }
            if peak_flops:  # MFU per device: 6N + attention FLOPs per token (see training/throughput.py)
                per_device = tokens_per_s / dist_info.world_size
                metrics["mfu"] = mfu(per_device, flops_per_token(model.config, stats["seq_len"]), peak_flops)
            metric_loggers.log(metrics, step_scheduler.step)
            summary["train_losses"][step_scheduler.step] = stats["loss"]
            stop = shutdown.any_rank_requested()
            if step_scheduler.is_val_step and not step_scheduler.is_last_step:
                val_loss = validate_now()
            if checkpointer.config.enabled and (step_scheduler.is_ckpt_step or step_scheduler.is_last_step or stop):
                save_checkpoint()
            if stop:
                logger.warning("Stopping after step %d because a shutdown signal arrived", step_scheduler.step)
                break
        else:
            val_loss = validate_now() if summary["train_losses"] else val_loss

    # --- wrap up -----------------------------------------------------------------------------------------------
    summary["val_loss_after"] = val_loss
    summary["model"] = model  # the trained (unwrapped) model, for callers of main() from Python
    if summary["val_loss_before"] is not None and val_loss is not None:
        logger.info("Validation loss: %.4f before training -> %.4f after", summary["val_loss_before"], val_loss)
    if summary["checkpoint"] and peft_config is None:
        logger.info(
            "Saved %s/model (load it with transformers.AutoModelForCausalLM.from_pretrained)", summary["checkpoint"]
        )
    elif summary["checkpoint"]:
        logger.info(
            "Saved the adapter in %s/model (peft.PeftModel.from_pretrained(base, dir) loads it; "
            "`automodel peft merge --adapter DIR --output DIR` folds it into a full model)",
            summary["checkpoint"],
        )
    metric_loggers.close()
    destroy_distributed()
    return summary


def preview(cfg: ConfigNode, *, split: str = "train", num_samples: int = 2, color: bool = True) -> list[str]:
    """Render the first samples of the train (or validation) dataset with the tokens that carry loss highlighted."""
    setup_logging(0)
    cfg, _ = reference_forms(cfg, text_tokenizer=True)  # validated by the caller
    section = "dataset" if split == "train" else "validation_dataset"
    if section not in cfg:
        raise UserError(f"{section}: the config has no such section to preview")
    model_source = cfg.model.get("pretrained_model_name_or_path")
    if model_source is not None:
        model_source = resolve_model_path(model_source, cfg.model.get("gguf_file"))
    tokenizer = instantiate(
        cfg.get("tokenizer"),
        default_target=NeMoAutoTokenizer.from_pretrained,
        **({} if "tokenizer" in cfg else {"pretrained_model_name_or_path": model_source}),
    )
    dataset = instantiate(cfg[section], tokenizer=tokenizer)
    return [render_sample(dataset[i], tokenizer, color=color) for i in range(min(num_samples, len(dataset)))]


def cli(argv: Iterable[str] | None = None) -> None:
    """`python automodel/recipes/llm/finetune.py -c CONFIG [overrides]` (also what torchrun runs on every rank)."""

    def run() -> None:
        config_path, overrides = parse_cli_args(list(sys.argv[1:] if argv is None else argv))
        main(apply_overrides(load_config(config_path), overrides))

    exit_on_user_error(run)


if __name__ == "__main__":
    cli()

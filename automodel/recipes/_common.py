"""What every fine-tuning recipe shares, beyond one step (`_steps.py`): the sections every config has, their
cross-section checks, and the phases of a run that do not depend on the model family, in the order a recipe calls
them:

    run = start(cfg, SCHEMA)                      # process group, logging, parallel state, seed, precision
    ... the recipe builds its model, its tokenizer or processor, and its data ...
    train_model, identity = parallelize(cfg, SCHEMA, model, run, model_source)
    parts = build_optimization(cfg, SCHEMA, model, train_loader, run)
    summary = train(cfg, SCHEMA, run, parts, model=..., train_model=..., ...)   # resume, loop, checkpoints

One `Section` per config section says what builds it and what the recipe supplies; `build_section` reads it, and so
does `validate_config`, so validation and build cannot drift.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from automodel._shared.errors import exit_on_user_error
from automodel.components._peft import PeftConfig
from automodel.components._transformers import meta_weights_path
from automodel.components.checkpoint import CheckpointConfig, Checkpointer
from automodel.components.config import (
    ConfigNode,
    ConfigValidationError,
    Section,
    apply_overrides,
    build_section,
    load_config,
    parse_cli_args,
    validate_config,
)
from automodel.components.distributed import (
    CompileConfig,
    DistEnvConfig,
    DistInfo,
    DistributedConfig,
    ParallelState,
    build_parallel_state,
    clip_grad_norm_,
    destroy_distributed,
    initialize_distributed,
    parallelize_model,
    shard_optimizer,
)
from automodel.components.loggers import LoggingConfig, MultiLogger, WandbLogger, build_loggers
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
from automodel.recipes._limits import limit_checks, one_per_key
from automodel.recipes._steps import evaluate, model_identity, setup_logging, train_step

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# The sections every recipe has
# ---------------------------------------------------------------------------------------------------------------
_DATALOADER = Section(
    default_target=DataLoader,
    provided={"dataset", "batch_size", "sampler", "generator"},
    mirrors={"batch_size": "step_scheduler.local_batch_size"},  # the reference system's form, when it agrees
    ignore={"shuffle", "group_by_length", "megabatch_mult", "collate_fn"},  # the recipe's sampler and collate
)
COMMON_SECTIONS: dict[str, Section] = {
    "seed": Section(),
    "step_scheduler": Section(
        default_target=StepScheduler,
        provided={"dp_size", "dataloader"},
        mirrors={"dp_size": "distributed.dp_size"},
        required=True,
    ),
    "dist_env": Section(default_target=DistEnvConfig),
    "rng": Section(default_target=StatefulRNG, provided={"rank"}),
    "model": Section(required=True),
    "peft": Section(default_target=PeftConfig),
    "distributed": Section(default_target=DistributedConfig),
    "compile": Section(default_target=CompileConfig),
    "mixed_precision": Section(default_target=MixedPrecisionConfig),
    "loss_fn": Section(default_target=MaskedCrossEntropy),
    "dataset": Section(required=True),
    "dataloader": _DATALOADER,
    "validation_dataset": Section(),
    "validation_dataloader": _DATALOADER,
    "optimizer": Section(default_target=torch.optim.AdamW, provided={"params"}),
    "lr_scheduler": Section(default_target=build_lr_scheduler, provided={"optimizer", "total_steps"}),
    "clip_grad_norm": Section(default_target=ClipGradNormConfig),
    "checkpoint": Section(default_target=CheckpointConfig),
    "logging": Section(default_target=LoggingConfig),
    "wandb": Section(default_target=WandbLogger, provided={"rank", "config"}),
}


def common_checks(world_size: int, *, model_example: str, companion: str) -> list[Callable[[ConfigNode], list[str]]]:
    """Cross-section rules that signatures alone cannot express. `companion` is the section that names the text side
    of a model built from a config (`tokenizer` or `processor`)."""

    def batch_sizes(cfg: ConfigNode) -> list[str]:
        gbs, lbs = cfg.get("step_scheduler.global_batch_size"), cfg.get("step_scheduler.local_batch_size")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (gbs, lbs)):
            return []  # their own checks report them
        dp_size = data_parallel_size(cfg.get("distributed"), world_size)
        problem = (
            None
            if dp_size is None
            else StepScheduler.batch_size_problem(gbs, lbs, dp_size, dp_name="data-parallel size")
        )
        return [problem] if problem else []

    def seed_and_model(cfg: ConfigNode) -> list[str]:
        errors = []
        if "seed" in cfg and (isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32):
            errors.append(f"seed: expected an integer in [0, 2**32), got {cfg.seed!r}")
        model = cfg.get("model")
        if isinstance(model, ConfigNode) and "_target_" not in model:
            errors.append(f"model: needs a _target_, e.g. {model_example}")
        if isinstance(model, ConfigNode) and companion not in cfg and "pretrained_model_name_or_path" not in model:
            errors.append(
                f"{companion}: a model built from a config needs a {companion} section (pretrained_model_name_or_path)"
            )
        return errors

    # Sizes, step counts and rates in range, and no NaN anywhere (recipes/_limits.py).
    return [batch_sizes, seed_and_model, *limit_checks()]


def data_parallel_size(section: Any, world_size: int) -> int | None:
    """The data-parallel size of the `distributed:` section on `world_size` processes (what the batch rule divides
    by), or None when the section itself is wrong (its own check reports that)."""
    known = {f.name for f in fields(DistributedConfig)}
    values = {k: v for k, v in (section or {}).items() if k in known} if isinstance(section, Mapping) else {}
    try:
        return DistributedConfig(**values).resolve_dp_size(world_size)
    except (ValueError, TypeError):
        return None


def validate_recipe(cfg: ConfigNode, schema: Mapping[str, Section], checks: Iterable[Callable]) -> None:
    """Validate `cfg` against `schema` and `checks`, reporting each key's first problem once."""
    cfg = cfg.copy()
    cfg.pop("recipe", None)  # names the recipe for `automodel CONFIG.yaml`; the CLI reads it, not the recipe
    try:
        validate_config(cfg, schema, checks=list(checks))
    except ConfigValidationError as error:  # one message per key: a bad value can fail several checks
        raise ConfigValidationError(one_per_key(error.errors, schema)) from None


def recipe_cli(main: Callable[[ConfigNode], Any], argv: Iterable[str] | None = None) -> None:
    """`python automodel/recipes/<domain>/finetune.py -c CONFIG [overrides]` (also what torchrun runs on each rank)."""

    def run() -> None:
        config_path, overrides = parse_cli_args(list(sys.argv[1:] if argv is None else argv))
        main(apply_overrides(load_config(config_path), overrides))

    exit_on_user_error(run)


# ---------------------------------------------------------------------------------------------------------------
# The phases of a run
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Where the run happens and with what numerics: built first, before the model."""

    dist_info: DistInfo
    distributed: DistributedConfig
    state: ParallelState
    rng: StatefulRNG
    seed: int
    precision: MixedPrecisionConfig


def start(cfg: ConfigNode, schema: Mapping[str, Section]) -> Run:
    """Join the process group (torchrun's environment, or none for one process), set up logging, build the
    device mesh and seed every random stream."""
    dist_env = build_section(cfg, "dist_env", schema["dist_env"])
    dist_info = initialize_distributed(dist_env.backend, dist_env.timeout_minutes)
    setup_logging(dist_info.rank)
    distributed = build_section(cfg, "distributed", schema["distributed"])
    distributed.validate(dist_info.world_size, dist_info.device)
    state = build_parallel_state(distributed, dist_info)
    if cfg.get("rng") is not None:
        rng = build_section(cfg, "rng", schema["rng"], rank=dist_info.rank)
        seed = cfg.rng.get("seed", 42)  # the data order's seed: the same on every rank, even with `ranked: true`
    else:  # the top-level `seed:` form
        seed = cfg.get("seed", 42)
        rng = StatefulRNG(seed=seed, rank=dist_info.rank)
    precision = build_section(cfg, "mixed_precision", schema["mixed_precision"])
    return Run(dist_info, distributed, state, rng, seed, precision)


def parallelize(
    cfg: ConfigNode, schema: Mapping[str, Section], model: torch.nn.Module, run: Run, model_source: str | None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """TP -> activation checkpointing -> compile -> FSDP2 | DDP; moves the model to the device (loading its shards
    when it was built on the meta device). Returns the module to train and the model's identity (recorded once the
    weights are loaded, for checkpoints)."""
    train_model = parallelize_model(
        model,
        run.dist_info,
        run.distributed,
        build_section(cfg, "compile", schema["compile"]),
        state=run.state,
        weights_path=meta_weights_path(model),
        cast_frozen_weights=run.precision.cast_frozen_linear_weights,  # frozen base weights in bf16 where it can
    )
    return train_model, model_identity(model, model_source)


@dataclass
class Optimization:
    """What one optimizer step needs, built right after sharding (over the sharded parameters)."""

    loss_fn: Any
    step_scheduler: StepScheduler
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    trainable: list[torch.nn.Parameter]
    max_norm: float | None


def build_optimization(
    cfg: ConfigNode, schema: Mapping[str, Section], model: torch.nn.Module, train_loader: Any, run: Run
) -> Optimization:
    loss_fn = build_section(cfg, "loss_fn", schema["loss_fn"])
    step_scheduler = build_section(
        cfg, "step_scheduler", schema["step_scheduler"], dp_size=run.state.dp_size, dataloader=train_loader
    )
    # Named parameters: torch optimizers keep the names (param_names), and name-aware ones (Muon, no-decay groups)
    # need them.
    named_trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    optimizer = build_section(cfg, "optimizer", schema["optimizer"], params=named_trainable)
    optimizer = shard_optimizer(optimizer, run.distributed)  # Megatron-FSDP owns its optimizer's shards; else no-op
    lr_scheduler = build_section(
        cfg, "lr_scheduler", schema["lr_scheduler"], optimizer=optimizer, total_steps=step_scheduler.total_steps
    )
    max_norm = build_section(cfg, "clip_grad_norm", schema["clip_grad_norm"]).max_norm
    trainable = [p for _, p in named_trainable]
    return Optimization(loss_fn, step_scheduler, optimizer, lr_scheduler, trainable, max_norm)


def resume_latest(
    checkpointer: Checkpointer,
    identity: dict[str, Any],
    *,
    model: torch.nn.Module,
    parts: Optimization,
    run: Run,
    metric_loggers: MultiLogger,
) -> None:
    """Continue from the newest complete checkpoint, if there is one: weights, optimizer, LR schedule, data position,
    RNG streams and the loggers' step."""
    resume_from = checkpointer.find_resume_checkpoint()
    if resume_from is None:
        return
    checkpointer.check_identity(resume_from, identity)
    restored = checkpointer.load(
        resume_from, model=model, optimizer=parts.optimizer, lr_scheduler=parts.lr_scheduler, rank=run.dist_info.rank
    )
    parts.step_scheduler.load_state_dict(restored["train_state"]["step_scheduler"])
    if restored["rng_state"] is not None:
        run.rng.load_state_dict(restored["rng_state"])
    dp_size = run.state.dp_size
    saved_dp_size = restored["train_state"].get("dp_size", dp_size)
    if saved_dp_size != dp_size:
        logger.warning(
            "Resuming with %d data-parallel ranks, saved with %d: weights and optimizer state were resharded, "
            "but from here on the data order differs from the original run's",
            dp_size,
            saved_dp_size,
        )
    metric_loggers.resume(parts.step_scheduler.step)
    step = parts.step_scheduler
    logger.info("Resumed from %s at step %d (epoch %d)", resume_from, step.step, step.epoch)


def train(
    cfg: ConfigNode,
    schema: Mapping[str, Section],
    run: Run,
    parts: Optimization,
    *,
    model: torch.nn.Module,
    train_model: torch.nn.Module,
    identity: dict[str, Any],
    val_loader: Any,
    autocast: Any,
    text_side: Any,
    model_writer: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Checkpointing and loggers, resume, then the loop: one optimizer step per iteration, validation and
    checkpoints on their cadence, a clean stop on SIGTERM / SIGUSR1. `text_side` (tokenizer or processor) is saved
    next to the weights; `model_writer(dir)` replaces the consolidated model (a PEFT run writes its adapter).
    Returns the summary: step losses, validation losses before / after, the last checkpoint and the trained model."""
    dist_info, state, step_scheduler, optimizer = run.dist_info, run.state, parts.step_scheduler, parts.optimizer
    checkpointer = Checkpointer(
        build_section(cfg, "checkpoint", schema["checkpoint"]), rank=dist_info.rank, world_size=dist_info.world_size
    )
    log_cfg = build_section(cfg, "logging", schema["logging"])
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
    peak_flops = log_cfg.peak_flops or default_peak_flops(dist_info.device, run.precision.torch_dtype or torch.float32)
    resume_latest(checkpointer, identity, model=model, parts=parts, run=run, metric_loggers=metric_loggers)
    summary: dict[str, Any] = {"train_losses": {}, "checkpoint": None}

    def save_checkpoint() -> None:
        path = checkpointer.save(
            step_scheduler.epoch,
            step_scheduler.step,
            model=model,
            tokenizer=text_side,  # written with save_pretrained next to the weights
            optimizer=optimizer,
            lr_scheduler=parts.lr_scheduler,
            train_state={"step_scheduler": step_scheduler.state_dict(), "dp_size": state.dp_size},
            rng_state=run.rng.state_dict(),
            config_yaml=cfg.to_yaml(),
            model_identity=identity,
            model_writer=model_writer,
        )
        summary["checkpoint"] = str(path)

    def validate_now() -> float | None:
        if val_loader is None:
            return None
        metrics = evaluate(train_model, val_loader, parts.loss_fn, autocast, state)
        metric_loggers.log(metrics, step_scheduler.step, prefix="val")
        return metrics["loss"]

    # --- the loop ----------------------------------------------------------------------------------------------
    summary["val_loss_before"] = validate_now() if step_scheduler.step == 0 else None
    val_loss = summary["val_loss_before"]
    with ShutdownSignal() as shutdown:
        for batches in step_scheduler:
            start_time = time.perf_counter()
            stats = train_step(train_model, batches, parts.loss_fn, autocast, state, step=step_scheduler.step)
            grad_norm = clip_grad_norm_(parts.trainable, parts.max_norm or float("inf"))  # DTensor-aware
            optimizer.step()
            parts.lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - start_time
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
            if peak_flops:  # MFU per device: 6N + attention FLOPs per token of the (language) model
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

    summary["val_loss_after"] = val_loss
    summary["model"] = model  # the trained (unwrapped) model, for callers of main() from Python
    if summary["val_loss_before"] is not None and val_loss is not None:
        logger.info("Validation loss: %.4f before training -> %.4f after", summary["val_loss_before"], val_loss)
    metric_loggers.close()
    return summary


def finish(summary: dict[str, Any], *, adapter: bool, load_hint: str, merge_hint: bool = True) -> dict[str, Any]:
    """Say where the result is and how to load it; leave the process group."""
    merge = "; `automodel peft merge --adapter DIR --output DIR` folds it into a full model" if merge_hint else ""
    if summary["checkpoint"] and not adapter:
        logger.info("Saved %s/model (load it with %s)", summary["checkpoint"], load_hint)
    elif summary["checkpoint"]:
        logger.info(
            "Saved the adapter in %s/model (peft.PeftModel.from_pretrained(base, dir) loads it%s)",
            summary["checkpoint"],
            merge,
        )
    destroy_distributed()
    return summary


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))

"""Resource limits both recipes check before spending anything on them.

At validation (config only, nothing loaded): sizes, step counts and rates must be real numbers in range; NaN is
refused everywhere. At build time: sample lengths against the model's positions (capping them when the config sets
no limit), and the batch against the dataset once it is built and packed. Each validation check takes the config
and returns its messages, so the validator reports every problem at once.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from automodel._shared.errors import UserError
from automodel.components.config import ConfigError, ConfigNode, resolve_target
from automodel.components.training import StepScheduler

logger = logging.getLogger(__name__)

DATASET_SECTIONS = ("dataset", "validation_dataset")
DATALOADER_SECTIONS = ("dataloader", "validation_dataloader")


class LimitError(UserError):
    """A size that does not fit: a sequence longer than the model's positions, a batch larger than the dataset."""


# ---------------------------------------------------------------------------------------------------------------
# Validation: one function per concern, each returning its messages
# ---------------------------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rate_problem(key: str, value: Any) -> str | None:
    """A learning rate, weight decay or epsilon: a finite number >= 0, or null. NaN is left to `no_nan`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        return f"{key} must be a finite number >= 0, got {value!r}"
    return None


def _count_problem(key: str, value: Any, *, minimum: int, what: str, nullable: bool = True) -> str | None:
    """An integer count >= minimum, or null (an unset limit). NaN is left to `no_nan`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        return f"{key} must be an integer >= {minimum} ({what}){' or null' if nullable else ''}, got {value!r}"
    return None


def no_nan(cfg: Mapping[str, Any]) -> list[str]:
    """No setting takes NaN: a `nan` in the YAML or an override would only make the run diverge or hang later."""
    errors: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, float) and math.isnan(value):
            errors.append(f"{path}: got nan, which no setting accepts; set a finite number")
        elif isinstance(value, Mapping):
            for key, child in value.items():
                walk(child, f"{path}.{key}" if path else str(key))
        elif isinstance(value, (list, tuple)):
            for i, child in enumerate(value):
                walk(child, f"{path}[{i}]")

    walk(cfg, "")
    return errors


def schedule_settings(cfg: Mapping[str, Any]) -> list[str]:
    """Batch sizes and step counts: what StepScheduler refuses at build time, reported at validation."""
    node = cfg.get("step_scheduler")
    if not isinstance(node, Mapping) or not str(node.get("_target_", "StepScheduler")).endswith("StepScheduler"):
        return []
    names = ("max_steps", "num_epochs", "val_every_steps", "ckpt_every_steps")
    return StepScheduler.check_settings(
        node.get("global_batch_size", 1),  # a missing one is reported by the signature check
        node.get("local_batch_size", 1),
        **{name: node[name] for name in names if name in node},
    )


def optimizer_settings(cfg: Mapping[str, Any]) -> list[str]:
    """lr, weight_decay and eps (and Muon's adamw_* twins) finite and >= 0, betas in [0, 1), lr_multipliers >= 0.

    torch's optimizers raise a bare ValueError for these at build time, after the model and data are loaded.
    """
    node = cfg.get("optimizer")
    if not isinstance(node, Mapping):
        return []
    errors = []
    for key, value in node.items():
        path = f"optimizer.{key}"
        if key in ("lr", "weight_decay", "eps") or key.endswith(("_lr", "_weight_decay", "_eps")):
            errors.append(_rate_problem(path, value))
        elif key == "betas" or key.endswith("_betas"):
            errors.extend(_betas_problems(path, value))
        elif key == "lr_multipliers" and isinstance(value, Mapping):
            errors.extend(_rate_problem(f"{path}[{pattern!r}]", factor) for pattern, factor in value.items())
    return [error for error in errors if error]


def _betas_problems(path: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return [f"{path} must be a list of two numbers in [0, 1), e.g. [0.9, 0.999], got {value!r}"]
    errors = []
    for i, beta in enumerate(value):
        if isinstance(beta, float) and math.isnan(beta):
            continue
        if not _is_number(beta) or not 0 <= beta < 1:
            errors.append(f"{path}[{i}] must be a number in [0, 1) (e.g. [0.9, 0.999]), got {beta!r}")
    return errors


# lr_scheduler keys (with the NeMo / Megatron spellings build_lr_scheduler accepts) and what each holds.
_SCHEDULE_RATES = ("max_lr", "min_lr", "lr_warmup_init", "init_lr", "start_weight_decay", "end_weight_decay")
_SCHEDULE_RATES += ("start_wd", "end_wd")
_SCHEDULE_STEPS = ("lr_warmup_steps", "lr_warmup_iters", "lr_decay_steps", "lr_decay_iters", "wsd_decay_steps")
_SCHEDULE_STEPS += ("lr_wsd_decay_iters", "weight_decay_incr_steps", "wd_incr_steps")


def lr_scheduler_settings(cfg: Mapping[str, Any]) -> list[str]:
    """min_lr / max_lr / warmup values finite and >= 0; warmup and decay lengths integer step counts >= 0."""
    node = cfg.get("lr_scheduler")
    if not isinstance(node, Mapping):
        return []
    errors = [_rate_problem(f"lr_scheduler.{key}", node[key]) for key in _SCHEDULE_RATES if key in node]
    errors += [
        _count_problem(f"lr_scheduler.{key}", node[key], minimum=0, what="optimizer steps")
        for key in _SCHEDULE_STEPS
        if key in node
    ]
    return [error for error in errors if error]


def data_sizes(cfg: Mapping[str, Any]) -> list[str]:
    """seq_length and limit_dataset_samples of the dataset sections, num_workers of the dataloaders.

    packed_sequence.packed_sequence_size is checked by its own dataclass (PackedSequenceConfig) at validation.
    """
    errors = []
    for section in DATASET_SECTIONS:
        node = cfg.get(section)
        if not isinstance(node, Mapping):
            continue
        if "seq_length" in node:
            errors.append(
                _count_problem(f"{section}.seq_length", node["seq_length"], minimum=2, what="tokens per sample")
            )
        if "limit_dataset_samples" in node:
            errors.append(
                _count_problem(
                    f"{section}.limit_dataset_samples", node["limit_dataset_samples"], minimum=1, what="rows to keep"
                )
            )
    for section in DATALOADER_SECTIONS:
        node = cfg.get(section)
        if isinstance(node, Mapping) and node.get("num_workers") is not None:
            errors.append(
                _count_problem(
                    f"{section}.num_workers",
                    node["num_workers"],
                    minimum=0,
                    what="worker processes, 0 for none",
                    nullable=False,
                )
            )
    return [error for error in errors if error]


def collate_lengths(cfg: Mapping[str, Any]) -> list[str]:
    """The VLM collate functions' `max_length` (tokens per sample, image tokens included)."""
    errors = []
    for section in DATALOADER_SECTIONS:
        node = cfg.get(section)
        collate = node.get("collate_fn") if isinstance(node, Mapping) else None
        if isinstance(collate, Mapping) and "max_length" in collate:
            key = f"{section}.collate_fn.max_length"
            errors.append(_count_problem(key, collate["max_length"], minimum=2, what="tokens per sample"))
    return [error for error in errors if error]


def limit_checks() -> list[Callable[[ConfigNode], list[str]]]:
    """The validation checks of this module, for a recipe's `_checks`."""
    return [no_nan, schedule_settings, optimizer_settings, lr_scheduler_settings, data_sizes]


_LEADING_KEY = re.compile(r"([A-Za-z_][\w-]*)(?:\.[\w-]+|\[[^\]]*\])+")


def one_per_key(errors: Iterable[str], sections: Iterable[str]) -> list[str]:
    """The first message for each dotted key under one of `sections`: `lr: true` is reported once (by the signature
    check, which runs first), not again by a range check or the NaN check."""
    sections = set(sections)
    seen: set[str] = set()
    kept = []
    for error in errors:
        match = _LEADING_KEY.match(error)
        if match is not None and match.group(1) in sections:
            if match.group(0) in seen:
                continue
            seen.add(match.group(0))
        kept.append(error)
    return kept


# ---------------------------------------------------------------------------------------------------------------
# Build time: sequence lengths against the model, the batch against the dataset
# ---------------------------------------------------------------------------------------------------------------
def model_max_positions(model: Any) -> int | None:
    """The model's maximum positions (``max_position_embeddings``, or GPT-2's ``n_positions``; the language
    model's for a vision-language model), or None when its config does not say."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    configs = [config]
    if callable(getattr(config, "get_text_config", None)):
        configs.insert(0, config.get_text_config())
    for candidate in configs:
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(candidate, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _parameters(target: Any) -> Mapping[str, inspect.Parameter] | None:
    try:
        return inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None


def length_limit(
    node: Mapping[str, Any] | None,
    key: str,
    max_positions: int | None,
    *,
    option: str = "seq_length",
    target: Any = None,
) -> dict[str, int]:
    """Keep every sample of a dataset (or collate function) within the model's positions.

    `node` is the config section at dotted `key` whose `option` limits the sample length. A value above
    `max_positions` is an error; no value (or null) with a builder that takes `option` returns ``{option:
    max_positions}`` for the caller to pass, with a note in the log, so a 10 MB row is cut or dropped (the builder's
    on_overflow) instead of becoming a sample of millions of tokens. `target` is the builder when the section has
    no `_target_`.
    """
    if max_positions is None or not isinstance(node, Mapping):
        return {}
    value = node.get(option)
    if _is_number(value):
        if value > max_positions:
            raise LimitError(
                f"{key}.{option}({value}) is larger than the model's max_position_embeddings({max_positions}): a "
                f"sample that long runs past the positions the model has; set {key}.{option} to at most "
                f"{max_positions}"
            )
        return {}
    if target is None and "_target_" in node:
        try:
            target = resolve_target(node["_target_"], key=f"{key}._target_")
        except ConfigError:  # opted in through a policy this module does not see: instantiate reports real problems
            return {}
    params = _parameters(target) if target is not None else None
    if params is None or option not in params:
        return {}
    default = params[option].default
    if _is_number(default) and default <= max_positions:
        return {}
    logger.info(
        "%s.%s is not set: samples are capped at the model's max_position_embeddings (%d tokens); longer ones are "
        "cut or dropped as its on_overflow says. Set %s.%s to choose another limit",
        key,
        option,
        max_positions,
        key,
        option,
    )
    return {option: max_positions}


def check_packing_fits(packed_sequence_size: int, max_positions: int | None) -> None:
    """A packed row is one sequence to the model (its attention and memory), so it must fit the model's positions
    too."""
    if max_positions is not None and packed_sequence_size > max_positions:
        raise LimitError(
            f"packed_sequence.packed_sequence_size({packed_sequence_size}) is larger than the model's "
            f"max_position_embeddings({max_positions}); set it to at most {max_positions}"
        )


def check_dataset_fits(
    dataset: Any,
    *,
    train: bool,
    local_batch_size: int,
    dp_size: int,
    global_batch_size: int | None = None,
    num_unpacked: int | None = None,
) -> None:
    """Refuse a training set smaller than one global batch (a rank would get no full batch, or no optimizer step
    could be made), and an empty dataset. `num_unpacked` is the sample count before packing, when packed."""
    section = "dataset" if train else "validation_dataset"
    try:
        size = len(dataset)
    except TypeError:  # an iterable dataset: its length is unknown until it is read
        return
    if size == 0:
        raise LimitError(f"{section}: the dataset has no samples; check its split, path and limit_dataset_samples")
    if not train:
        return
    needed = max(global_batch_size or 0, local_batch_size * dp_size)
    if size // dp_size >= local_batch_size and size >= needed:
        return
    what, smaller_rows = f"{size} sample(s)", ""
    if num_unpacked is not None:
        row_size = getattr(dataset, "packed_sequence_size", "?")
        what = f"{size} packed row(s) ({num_unpacked} samples packed into rows of {row_size} tokens)"
        smaller_rows = ", a smaller packed_sequence.packed_sequence_size"
    raise LimitError(
        f"{section}: the training set has {what}, fewer than one global batch of {needed} "
        f"(step_scheduler.global_batch_size({global_batch_size}), local_batch_size({local_batch_size}) on each of "
        f"{dp_size} data-parallel rank(s)); lower step_scheduler.global_batch_size and local_batch_size so that one "
        f"global batch fits in {size}{smaller_rows}, or use more data"
    )


def check_loader_yields(loader: Any, *, train: bool, local_batch_size: int) -> None:
    """A dataloader that yields nothing (drop_last with fewer samples than one batch) would skip validation
    silently and log a loss of 0."""
    try:
        batches = len(loader)
        per_rank = len(loader.sampler)
    except (TypeError, AttributeError):
        return
    if batches == 0:
        section = "dataloader" if train else "validation_dataloader"
        raise LimitError(
            f"{section}: yields no batch: {per_rank} sample(s) on this rank, fewer than "
            f"step_scheduler.local_batch_size({local_batch_size}), and {section}.drop_last drops the partial batch; "
            f"remove {section}.drop_last or use more data"
        )

"""Plain functions every recipe's loop calls: data loading, the forward/backward of one optimizer step, evaluation.

They sit in the recipes layer (not in a component) because they combine several components: the datasets' sampler,
the distributed component's parallel state and gradient-sync contexts, the loss.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader

from automodel._shared.errors import UserError
from automodel._shared.logs import CurrentStderrHandler
from automodel.components.checkpoint import frozen_fingerprint
from automodel.components.config import ConfigNode, build_callable, instantiate, node_policy
from automodel.components.datasets import PackedSequenceConfig, ResumableSampler, pack_dataset, packed_collater
from automodel.components.datasets.utils import default_collater
from automodel.components.distributed import (
    ParallelState,
    context_parallel_batch,
    full_output_weight,
    model_class_name,
    no_sync,
)
from automodel.recipes._limits import check_dataset_fits, check_loader_yields

logger = logging.getLogger(__name__)


def build_dataloader(
    node: ConfigNode | None,
    dataset: Any,
    *,
    batch_size: int,
    pad_token_id: int,
    state: ParallelState,
    seed: int,
    train: bool,
    packing: PackedSequenceConfig | None = None,
    flash_attention: bool = False,
    global_batch_size: int | None = None,
) -> DataLoader:
    """A dataloader whose order is a pure function of (seed, epoch), so a resumed run sees the same batches.

    With packing, samples are first packed into rows (a deterministic function of their lengths and the seed) and
    batches carry position_ids instead of an attention mask. Without it, `group_by_length: true` in the dataloader
    section batches samples of similar lengths together (less padding). A training set (after packing) smaller than
    one global batch, an empty dataset, or a loader that would yield no batch is a LimitError naming the sizes.
    """
    node = node.copy() if node is not None else ConfigNode({})
    where = node.path or "dataloader"
    for key in ("dataset", "sampler", "generator"):  # validation reports these first; this is the backstop
        if key in node:
            raise UserError(f"{where}.{key}: the recipe supplies '{key}' itself; remove it from the config")
    if "batch_size" in node and node.pop("batch_size") != batch_size:
        raise UserError(
            f"{where}.batch_size differs from step_scheduler.local_batch_size({batch_size}), which the recipe batches "
            "by; remove dataloader.batch_size or set step_scheduler.local_batch_size"
        )
    shuffle = bool(node.pop("shuffle", train))
    group_by_length = bool(node.pop("group_by_length", False))
    megabatch_mult = int(node.pop("megabatch_mult", 50))
    num_unpacked = None
    if packing is not None and packing.enabled:
        num_unpacked = len(dataset)
        dataset = pack_dataset(dataset, packing.packed_sequence_size, seed=seed, on_overflow=packing.on_overflow)
        default_collate: Callable = functools.partial(packed_collater, flash_varlen=flash_attention)
    else:
        default_collate = default_collater
    check_dataset_fits(
        dataset,
        train=train,
        local_batch_size=batch_size,
        dp_size=state.dp_size,
        global_batch_size=global_batch_size,
        num_unpacked=num_unpacked,
    )
    collate = default_collate
    if "collate_fn" in node:  # a dotted name or a section (a partial); with the user's --allow-target policy
        named = build_callable(node.pop("collate_fn"), policy=node_policy(node, None), key="dataloader.collate_fn")
        packed = packing is not None and packing.enabled
        collate = _packed_collate(named, flash_attention) if packed else named
    if "pad_token_id" in inspect.signature(getattr(collate, "func", collate)).parameters:
        collate = functools.partial(collate, pad_token_id=pad_token_id)
    grouping = group_by_length and not (packing is not None and packing.enabled)
    if group_by_length and not grouping:
        logger.warning("dataloader.group_by_length is ignored with packing (packed rows are already full)")
    sampler = ResumableSampler(
        len(dataset),
        shuffle=shuffle,
        seed=seed,
        num_replicas=state.dp_size,  # tensor/context-parallel ranks of one replica read the same samples
        rank=state.dp_rank,
        drop_last=train,
        lengths=getattr(dataset, "lengths", None) if grouping else None,
        group_by_length=grouping,
        batch_size=batch_size if grouping else None,
        megabatch_mult=megabatch_mult,
    )
    # A generator of its own: otherwise every new iterator (each epoch, each validation) draws its worker seed from
    # the global RNG, and a resumed run's dropout masks would drift from the original run's.
    generator = torch.Generator().manual_seed(seed)
    loader = instantiate(
        node,
        default_target=DataLoader,
        dataset=dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        generator=generator,
    )
    check_loader_yields(loader, train=train, local_batch_size=batch_size)
    return loader


def _packed_collate(named: Callable, flash_attention: bool) -> Callable:
    """The collate function for packed rows when the config names one: packed rows need per-document attention
    (position_ids, no attention_mask), which only packed_collater builds. The plain padding collaters (ours, and the
    reference system's names for them) are swapped for it with their settings kept; anything else is refused rather
    than silently letting packed documents attend to each other."""
    func = getattr(named, "func", named)
    keywords = dict(getattr(named, "keywords", {}) or {})
    if func is packed_collater:
        return functools.partial(packed_collater, **{"flash_varlen": flash_attention, **keywords})
    if func is default_collater:
        logger.info(
            "packed_sequence: packed rows are collated by packed_collater (per-document attention through "
            "position_ids), not by the dataloader.collate_fn default_collater; its settings %s are kept",
            keywords or "{}",
        )
        return functools.partial(packed_collater, flash_varlen=flash_attention, **keywords)
    name = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', func)}"
    raise UserError(
        f"dataloader.collate_fn: {name} cannot collate packed rows (packed_sequence is on): packed documents would "
        "attend to each other; remove dataloader.collate_fn (packed rows get "
        "automodel.components.datasets.packing.packed_collater) or turn packing off"
    )


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    # Non-tensor entries (flash-attention's max_length_q/k ints) stay as they are.
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def forward_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    loss_fn: Callable,
    num_label_tokens: Any,
    autocast: contextlib.AbstractContextManager,
) -> torch.Tensor:
    # Every key but the labels and metadata ("_"-prefixed, e.g. a packed batch's _token_mask) is a model input
    # (input_ids, attention_mask or position_ids, pixel_values...).
    # use_cache=False: training never needs the KV cache, and with it packed documents would attend to each other.
    inputs = {key: value for key, value in batch.items() if key != "labels" and not key.startswith("_")}
    if getattr(loss_fn, "needs_hidden_states", False):
        # A fused linear cross-entropy projects the final hidden states itself (only at supervised positions, a
        # chunk at a time); logits_to_keep=1 stops the model from computing logits for every position first.
        with autocast:
            out = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
            with full_output_weight(model) as weight:
                return loss_fn(out.hidden_states[-1], batch["labels"], weight, num_label_tokens)
    with autocast:
        logits = model(**inputs, use_cache=False).logits
    return loss_fn(logits, batch["labels"], num_label_tokens=num_label_tokens)


def count_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens of a batch (what tokens/s counts)."""
    mask = batch.get("_token_mask", batch.get("attention_mask"))
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: DataLoader, loss_fn: Callable, autocast: Any, state: ParallelState
) -> dict:
    """Mean loss per supervised token over the whole validation set (summed over data-parallel ranks).

    Every sample counts once, whatever the number of ranks: when the set does not divide by it, the sampler repeats a
    few samples so that every rank runs the same number of forwards (FSDP2 needs that), and their labels are masked.
    """
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=state.device)  # [loss sum, supervised tokens]
    sampler = getattr(loader, "sampler", None)
    padding = sampler.padding_flags() if hasattr(sampler, "padding_flags") else None
    seen = 0
    for batch in loader:
        rows = batch["labels"].shape[0]
        if padding is not None and any(padding[seen : seen + rows]):
            pad_rows = torch.tensor(padding[seen : seen + rows], dtype=torch.bool)
            batch = {**batch, "labels": batch["labels"].masked_fill(pad_rows[:, None], -100)}
        seen += rows
        batch = to_device(batch, state.device)
        with context_parallel_batch(state, batch) as local:  # this rank's slice of the sequences under CP
            totals[0] += forward_loss(model, local, loss_fn, 1, autocast).double()  # num_label_tokens=1: the sum
            totals[1] += (local["labels"] != -100).sum()
    model.train()
    loss_sum, tokens = state.all_reduce_dp(totals).tolist()
    loss = loss_sum / max(tokens, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": int(tokens)}


def train_step(
    model: torch.nn.Module,
    batches: list[dict],
    loss_fn: Callable,
    autocast: Any,
    state: ParallelState,
    step: int | None = None,
) -> dict:
    """Forward and backward over the micro-batches of one optimizer step (`step`, for messages).

    Each micro-batch loss is its summed token loss divided by the supervised-token count of the whole global batch
    (all micro-batches, all data-parallel ranks), times the data-parallel size because DDP / FSDP2 average gradients
    over ranks: the accumulated gradient then equals that of one big batch, however it is split. A loss that is not
    finite stops the run with a UserError before the optimizer applies it (every rank sees the same reduced loss).
    """
    batches = [to_device(b, state.device) for b in batches]
    counts = torch.tensor(
        [sum(int((b["labels"] != -100).sum()) for b in batches), sum(count_tokens(b) for b in batches)],
        dtype=torch.float64,
        device=state.device,
    )
    # host sync: one small all-reduce per step. Context-parallel peers hold the same batch: count it once.
    num_label_tokens, num_tokens = (state.all_reduce_dp(counts) / state.cp_size).tolist()
    if num_label_tokens == 0:
        raise UserError("a global batch has no supervised token (all labels are -100); check the dataset's loss mask")
    loss_sum = torch.zeros((), device=state.device)
    for i, batch in enumerate(batches):
        # Only the last micro-batch reduces gradients across ranks (no_sync skips it for the others).
        sync = contextlib.nullcontext() if i == len(batches) - 1 else no_sync(model)
        with sync, context_parallel_batch(state, batch) as local:
            loss = forward_loss(model, local, loss_fn, num_label_tokens, autocast) * state.dp_cp_size
            loss.backward()
        loss_sum += loss.detach() / state.dp_cp_size
    step_loss = state.all_reduce_dp(loss_sum).item()
    if not math.isfinite(step_loss):
        _diverged(step_loss, step)
    return {
        "loss": step_loss,
        "num_label_tokens": int(num_label_tokens),
        "num_tokens": int(num_tokens),
        "seq_len": max(b["input_ids"].shape[1] for b in batches),
    }


def _diverged(loss: float, step: int | None) -> None:
    # The loss of step N is computed with the weights of update N - 1, so a checkpoint saved right after that update
    # may already hold the diverged weights.
    at = f" at step {step}" if step is not None else ""
    raise UserError(
        f"the training loss is {loss}{at}: training diverged; lower optimizer.lr or set clip_grad_norm.max_norm, "
        "and start again from a checkpoint written before the loss diverged (or an empty checkpoint.checkpoint_dir). "
        "Nothing was saved for this step, but the previous step's checkpoint may already hold the diverged weights"
    )


def setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
        handlers=[CurrentStderrHandler()],
    )
    # Library chatter that would drown our lines: transformers' INFO and load bars, datasets' "Generating split"
    # bars, and a torchdata deprecation warning emitted on every dataloader start.
    import datasets
    import transformers

    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


def model_identity(model: torch.nn.Module, source: str | None) -> dict:
    """What a checkpoint records of the model, and a resume compares: the structure, and a fingerprint of the frozen
    (base) weights, so a LoRA adapter is never resumed onto another base model of the same shape. Call it once the
    weights are loaded (after parallelize_model for meta-device init); collective under FSDP2 / TP."""
    config = getattr(model, "config", None)
    return {
        "architecture": model_class_name(model),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": getattr(config, "vocab_size", None),
        "name_or_path": source,
        "frozen_fingerprint": frozen_fingerprint(model),
    }

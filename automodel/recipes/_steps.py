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
from torch.distributed.fsdp import FSDPModule
from torch.utils.data import DataLoader

from automodel._shared.errors import UserError
from automodel.components.config import ConfigNode, instantiate, resolve_target
from automodel.components.datasets import PackedSequenceConfig, ResumableSampler, pack_dataset, packed_collater
from automodel.components.datasets.utils import default_collater
from automodel.components.distributed import ParallelState, context_parallel_batch, no_sync

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
) -> DataLoader:
    """A dataloader whose order is a pure function of (seed, epoch), so a resumed run sees the same batches.

    With packing, samples are first packed into rows (a deterministic function of their lengths and the seed) and
    batches carry position_ids instead of an attention mask. Without it, `group_by_length: true` in the dataloader
    section batches samples of similar lengths together (less padding).
    """
    node = node.copy() if node is not None else ConfigNode({})
    shuffle = bool(node.pop("shuffle", train))
    group_by_length = bool(node.pop("group_by_length", False))
    megabatch_mult = int(node.pop("megabatch_mult", 50))
    if packing is not None and packing.enabled:
        dataset = pack_dataset(dataset, packing.packed_sequence_size, seed=seed, on_overflow=packing.on_overflow)
        default_collate: Callable = functools.partial(packed_collater, flash_varlen=flash_attention)
    else:
        default_collate = default_collater
    collate = resolve_target(node.pop("collate_fn")) if "collate_fn" in node else default_collate
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
    return instantiate(
        node,
        default_target=DataLoader,
        dataset=dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        generator=generator,
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
            weight, reshard = _output_weight(model)
            loss = loss_fn(out.hidden_states[-1], batch["labels"], weight, num_label_tokens)
        if reshard is not None:
            reshard()
        return loss
    with autocast:
        logits = model(**inputs, use_cache=False).logits
    return loss_fn(logits, batch["labels"], num_label_tokens=num_label_tokens)


def _output_weight(model: torch.nn.Module) -> tuple[torch.Tensor, Callable[[], None] | None]:
    """The output projection's weight, read after the forward, and what to call once the loss is computed.

    In training FSDP2 keeps the root (lm_head included) unsharded from forward to backward; after a no-grad forward
    it has already resharded, so the weight is gathered again for the loss and released after it.
    """
    for attr in ("module", "_orig_mod"):  # DDP, torch.compile wrappers
        model = getattr(model, attr, model)
    weight = model.get_output_embeddings().weight
    if hasattr(weight, "full_tensor") and isinstance(model, FSDPModule) and not torch.is_grad_enabled():
        model.unshard()
        return model.get_output_embeddings().weight, model.reshard
    if hasattr(weight, "full_tensor"):
        raise UserError(
            "loss_fn: FusedLinearCrossEntropy needs the whole output projection, but it is sharded here (tensor "
            "parallel lm_head); use automodel.components.loss.masked_ce.MaskedCrossEntropy with tp_size > 1"
        )
    return weight, None


def count_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens of a batch (what tokens/s counts)."""
    mask = batch.get("_token_mask", batch.get("attention_mask"))
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: DataLoader, loss_fn: Callable, autocast: Any, state: ParallelState
) -> dict:
    """Mean loss per supervised token over the whole validation set (summed over data-parallel ranks)."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=state.device)  # [loss sum, supervised tokens]
    for batch in loader:
        batch = to_device(batch, state.device)
        with context_parallel_batch(state, batch) as local:  # this rank's slice of the sequences under CP
            totals[0] += forward_loss(model, local, loss_fn, 1, autocast).double()  # num_label_tokens=1: the sum
            totals[1] += (local["labels"] != -100).sum()
    model.train()
    loss_sum, tokens = state.all_reduce_dp(totals).tolist()
    loss = loss_sum / max(tokens, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": int(tokens)}


def train_step(
    model: torch.nn.Module, batches: list[dict], loss_fn: Callable, autocast: Any, state: ParallelState
) -> dict:
    """Forward and backward over the micro-batches of one optimizer step.

    Each micro-batch loss is its summed token loss divided by the supervised-token count of the whole global batch
    (all micro-batches, all data-parallel ranks), times the data-parallel size because DDP / FSDP2 average gradients
    over ranks: the accumulated gradient then equals that of one big batch, however it is split.
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
    return {
        "loss": state.all_reduce_dp(loss_sum).item(),
        "num_label_tokens": int(num_label_tokens),
        "num_tokens": int(num_tokens),
        "seq_len": max(b["input_ids"].shape[1] for b in batches),
    }


def setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
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
    config = getattr(model, "config", None)
    return {
        "architecture": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": getattr(config, "vocab_size", None),
        "name_or_path": source,
    }


def resume_latest(
    checkpointer: Any,
    identity: Any,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    lr_scheduler: Any,
    step_scheduler: Any,
    rng: Any,
    metric_loggers: Any,
    dp_size: int,
    rank: int,
) -> None:
    """Continue from the newest complete checkpoint, if there is one: weights, optimizer, LR schedule, data position,
    RNG streams and the loggers' step."""
    resume_from = checkpointer.find_resume_checkpoint()
    if resume_from is None:
        return
    checkpointer.check_identity(resume_from, identity)
    restored = checkpointer.load(resume_from, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, rank=rank)
    step_scheduler.load_state_dict(restored["train_state"]["step_scheduler"])
    if restored["rng_state"] is not None:
        rng.load_state_dict(restored["rng_state"])
    saved_dp_size = restored["train_state"].get("dp_size", dp_size)
    if saved_dp_size != dp_size:
        logger.warning(
            "Resuming with %d data-parallel ranks, saved with %d: weights and optimizer state were resharded, "
            "but from here on the data order differs from the original run's",
            dp_size,
            saved_dp_size,
        )
    metric_loggers.resume(step_scheduler.step)
    logger.info("Resumed from %s at step %d (epoch %d)", resume_from, step_scheduler.step, step_scheduler.epoch)

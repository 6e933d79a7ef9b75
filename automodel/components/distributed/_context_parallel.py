"""Context parallelism (cp_size > 1): each CP rank holds a slice of every sequence, attention is ring SDPA.

Written for CUDA with torch's `context_parallel` and not run here: it has no CPU kernel, so `DistributedConfig.validate`
refuses cp_size > 1 on CPU before anything is loaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from automodel.components.distributed._parallel_state import ParallelState
from automodel.components.distributed.config import DistributedError

_SHARDED_KEYS = ("input_ids", "labels", "position_ids", "attention_mask")


@contextlib.contextmanager
def context_parallel_batch(state: ParallelState, batch: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """Wrap forward *and* backward: yields the batch this CP rank computes on (its slice of the sequence).

        with context_parallel_batch(state, batch) as local:
            loss = loss_fn(model(**local, use_cache=False).logits, local["labels"], num_label_tokens=n)
            loss.backward()

    Inside, torch replaces SDPA with ring attention over the `cp` mesh axis. Batches must be unpadded (packed or
    fixed-length) with a length divisible by 2 x cp_size (the load balancer splits each sequence in 2 x cp chunks).
    With cp_size 1 the batch is yielded unchanged. Loss sums and token counts are then partial per CP rank:
    `ParallelState.all_reduce_dp` sums them over the CP ranks too.
    """
    if state.cp_size == 1:
        yield batch
        return
    from torch.distributed.tensor.experimental import context_parallel

    assert state.mesh is not None  # cp_size > 1 means several processes
    input_ids = batch["input_ids"]
    seq_len = input_ids.shape[1]
    if seq_len % (2 * state.cp_size):
        raise DistributedError(
            f"distributed.cp_size({state.cp_size}): the sequence length {seq_len} must be a multiple of 2 x cp_size = "
            f"{2 * state.cp_size}; pad batches to it (collate pad_seq_len_divisible: {2 * state.cp_size}) or pack them"
        )
    mask = batch.get("attention_mask")
    if mask is not None and not bool(mask.all()):  # host sync, once per micro-batch
        raise DistributedError(
            "distributed.cp_size > 1 needs batches without padding (ring attention is causal-only); use packed "
            "sequences (packed_sequence.packed_sequence_size) or fixed-length samples"
        )
    local = {k: v for k, v in batch.items() if k not in _SHARDED_KEYS}
    # Explicit global positions, sharded with the tokens: otherwise each rank's rotary embedding starts at 0. The
    # all-ones mask (sharded too) keeps transformers from reading the load-balanced, non-contiguous positions as
    # packed documents; it then passes no mask and is_causal=True to SDPA, which ring attention implements.
    position_ids = batch.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(seq_len, device=input_ids.device).expand_as(input_ids)
    buffers = {
        "input_ids": input_ids.contiguous(),
        "labels": batch["labels"].contiguous(),
        "position_ids": position_ids.contiguous().clone(),
        "attention_mask": torch.ones_like(input_ids),
    }
    with context_parallel(
        state.mesh["cp"],
        buffers=list(buffers.values()),
        buffer_seq_dims=[1] * len(buffers),
        no_restore_buffers=set(buffers.values()),
    ):
        yield {**local, **buffers}

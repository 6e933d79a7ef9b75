"""Random-token data for throughput benchmarks and smoke tests (no tokenizer or download needed).

Every sample is ``seq_length`` random token ids with every position supervised, so a benchmark measures the model at
exactly the sequence length it asks for. It learns nothing meaningful: use it only to time and size runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from automodel.components.datasets._errors import DatasetError
from automodel.components.datasets.llm.sft import SFTDataset


def make_synthetic_dataset(
    tokenizer: Any = None,
    vocab_size: int | None = None,
    seq_length: int = 4096,
    num_samples: int = 256,
    seed: int = 0,
    min_token_id: int = 10,
) -> SFTDataset:
    """``num_samples`` rows of ``seq_length`` token ids drawn uniformly from ``[min_token_id, vocab_size)``.

    ``vocab_size`` defaults to the tokenizer's length (ids below ``min_token_id`` are left out: special tokens).
    """
    if vocab_size is None:
        if tokenizer is None:
            raise DatasetError("make_synthetic_dataset needs vocab_size (or a tokenizer to take it from)")
        vocab_size = len(tokenizer)
    if vocab_size <= min_token_id or seq_length < 2 or num_samples < 1:
        raise DatasetError(
            f"make_synthetic_dataset: need vocab_size > min_token_id ({vocab_size} vs {min_token_id}), seq_length >= 2 "
            f"and num_samples >= 1 (got {seq_length}, {num_samples})"
        )
    rng = np.random.default_rng(seed)
    ids = rng.integers(min_token_id, vocab_size, size=(num_samples, seq_length + 1), dtype=np.int64)
    # Labels shifted per the data contract: position t predicts token t + 1; every position carries loss.
    return SFTDataset(ids[:, :-1].tolist(), ids[:, 1:].tolist())

"""Seeds every global RNG (python, numpy, torch CPU and CUDA) and saves / restores their exact state."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

from automodel.components.training.errors import TrainingError

logger = logging.getLogger(__name__)

_MAX_SEED = 2**32  # numpy's legacy global RNG takes seeds in [0, 2**32)


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    # a tensor rather than an ndarray: the state is plain tensors, numbers and lists (stored as safetensors + JSON)
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def _capture(include_cuda: bool) -> dict[str, Any]:
    state: dict[str, Any] = {
        "random": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if include_cuda:
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["random"]))
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states is None:
        return
    if not torch.cuda.is_available():
        logger.warning(
            "the RNG state holds CUDA generator states but CUDA is not available here; they are not restored"
        )
        return
    if len(cuda_states) != torch.cuda.device_count():
        logger.warning(
            "the RNG state holds %d CUDA generator states but %d devices are visible; restoring the first %d",
            len(cuda_states),
            torch.cuda.device_count(),
            min(len(cuda_states), torch.cuda.device_count()),
        )
    for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(cuda_state, device)


def _as_tuples(value: Any) -> Any:
    # random.setstate wants nested tuples; a state that went through a serialiser may come back as lists
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


class StatefulRNG:
    """Seeds python ``random``, numpy and torch (CPU and CUDA) on construction.

    ``ranked=True`` adds ``rank`` to the seed, so ranks draw different dropout masks / shuffles. ``state_dict()`` /
    ``load_state_dict()`` capture and restore every generator (CUDA ones when CUDA is available). Used as
    ``with StatefulRNG(seed=1): ...`` it restores, on exit, the global state the caller had before construction.
    """

    def __init__(self, seed: int = 42, ranked: bool = False, rank: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _MAX_SEED:
            raise TrainingError(f"rng.seed must be an integer in [0, 2**32), got {seed!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise TrainingError(f"StatefulRNG rank must be a non-negative integer, got {rank!r}")
        self.seed = (seed + rank) % _MAX_SEED if ranked else seed
        self.ranked = ranked
        self.rank = rank
        # Only capture CUDA generators that exist already: reading them would otherwise initialise CUDA here.
        self._previous = _capture(include_cuda=torch.cuda.is_available() and torch.cuda.is_initialized())
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)  # seeds the CUDA generators too (lazily when CUDA is not initialised yet)

    def state_dict(self) -> dict[str, Any]:
        """The state of every global generator: tensors, numbers and lists only (no pickle needed to store it)."""
        return _capture(include_cuda=torch.cuda.is_available())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the generators to a state returned by :meth:`state_dict`."""
        missing = [key for key in ("random", "numpy", "torch") if key not in state_dict]
        if missing:
            raise TrainingError(f"RNG state lacks {missing}; it was not produced by StatefulRNG.state_dict()")
        _restore(state_dict)

    def __enter__(self) -> StatefulRNG:
        return self

    def __exit__(self, *exc_info: object) -> None:
        _restore(self._previous)

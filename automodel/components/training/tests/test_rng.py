import random

import numpy as np
import pytest
import torch

from automodel.components.training import StatefulRNG, TrainingError


def draw() -> tuple:
    return (
        [random.random() for _ in range(3)],
        np.random.rand(3).tolist(),
        np.random.randn(1).tolist(),  # leaves numpy with a cached gaussian, part of the state
        torch.rand(3).tolist(),
    )


def test_save_draw_load_draw_is_identical(tmp_path):
    rng = StatefulRNG(seed=7)
    draw()
    state = rng.state_dict()
    expected = draw()

    draw()  # move every generator on
    rng.load_state_dict(state)
    assert draw() == expected

    # the state survives torch.save / torch.load(weights_only=True), as in a checkpoint
    torch.save(state, tmp_path / "rng.pt")
    draw()
    rng.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draw() == expected


def test_same_seed_same_numbers_and_ranked_offsets_the_seed():
    StatefulRNG(seed=3)
    a = draw()
    StatefulRNG(seed=3)
    assert draw() == a

    rank1 = StatefulRNG(seed=3, ranked=True, rank=1)
    assert rank1.seed == 4
    b = draw()
    assert b != a
    StatefulRNG(seed=4)
    assert draw() == b
    assert StatefulRNG(seed=3, ranked=False, rank=1).seed == 3


def test_context_manager_restores_the_callers_state():
    StatefulRNG(seed=11)
    state_before = StatefulRNG(seed=11).state_dict()
    expected = draw()

    StatefulRNG(seed=11)
    with StatefulRNG(seed=99):
        inside = draw()
    assert draw() == expected  # as if the block had not run
    assert inside != expected
    assert torch.equal(state_before["torch"], StatefulRNG(seed=11).state_dict()["torch"])


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_invalid_seed(seed):
    with pytest.raises(TrainingError, match=r"rng.seed must be an integer in \[0, 2\*\*32\)"):
        StatefulRNG(seed=seed)


def test_load_rejects_foreign_state():
    with pytest.raises(TrainingError, match=r"lacks \['numpy'\]"):
        StatefulRNG().load_state_dict({"random": random.getstate(), "torch": torch.get_rng_state()})

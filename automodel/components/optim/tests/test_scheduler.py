import logging
import math

import pytest
import torch

from automodel.components.optim import OptimError, OptimizerParamScheduler, build_lr_scheduler


def _optimizer(*lrs, weight_decays=None):
    weight_decays = weight_decays or [0.0] * len(lrs)
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr, "weight_decay": wd}
        for lr, wd in zip(lrs, weight_decays)
    ]
    return torch.optim.SGD(groups, lr=lrs[0])


def _lrs(scheduler, num_steps):
    """lr of group 0 at steps 0..num_steps (the value each optimizer step would use)."""
    values = [scheduler.get_last_lr()[0]]
    for _ in range(num_steps):
        scheduler.step()
        values.append(scheduler.get_last_lr()[0])
    return values


def _sched(style, **kw):
    kw = {"lr_warmup_steps": 2, "lr_decay_steps": 10, "min_lr": 0.1, **kw}
    return OptimizerParamScheduler(_optimizer(1.0), lr_decay_style=style, **kw)


def test_cosine_warmup_then_decay_to_min_lr():
    lrs = _lrs(_sched("cosine"), 12)
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])  # linear warmup from lr_warmup_init=0
    assert lrs[6] == pytest.approx(0.55)  # half-way through decay: min + 0.5 * (max - min)
    assert lrs[4] == pytest.approx(0.1 + 0.9 * 0.5 * (math.cos(math.pi * 0.25) + 1))
    assert lrs[10:] == pytest.approx([0.1, 0.1, 0.1])  # at and after lr_decay_steps: min_lr


def test_linear_decay_and_warmup_init():
    lrs = _lrs(_sched("linear", lr_warmup_init=0.2), 11)
    assert lrs[:3] == pytest.approx([0.2, 0.6, 1.0])
    assert lrs[4] == pytest.approx(0.775)  # 2 of 8 decay steps: coeff 0.75
    assert lrs[6] == pytest.approx(0.55)
    assert lrs[10:] == pytest.approx([0.1, 0.1])


def test_constant_after_warmup_needs_no_decay_steps():
    scheduler = OptimizerParamScheduler(_optimizer(3e-4), lr_decay_style="constant", lr_warmup_steps=3)
    assert _lrs(scheduler, 6) == pytest.approx([0.0, 1e-4, 2e-4, 3e-4, 3e-4, 3e-4, 3e-4])


def test_inverse_square_root_floored_at_min_lr():
    scheduler = OptimizerParamScheduler(
        _optimizer(1.0), lr_decay_style="inverse-square-root", lr_warmup_steps=4, min_lr=0.1
    )
    assert scheduler.get_lr(4) == pytest.approx(1.0)
    assert scheduler.get_lr(16) == pytest.approx(0.5)
    assert scheduler.get_lr(64) == pytest.approx(0.25)
    assert scheduler.get_lr(1600) == pytest.approx(0.1)  # sqrt(4/1600) = 0.05 < min_lr


@pytest.mark.parametrize(
    ("wsd_style", "expected_7_8"),
    [
        ("linear", (0.75, 0.5)),
        ("cosine", (0.5 * (math.cos(math.pi / 4) + 1), 0.5)),
        ("exponential", (2 * 0.5**0.25 - 1, 2 * 0.5**0.5 - 1)),
        ("minus_sqrt", (0.5, 1 - math.sqrt(0.5))),
    ],
)
def test_wsd_warmup_stable_then_final_decay(wsd_style, expected_7_8):
    scheduler = _sched("WSD", min_lr=0.0, wsd_decay_steps=4, lr_wsd_decay_style=wsd_style)
    lrs = _lrs(scheduler, 11)
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[2:7] == pytest.approx([1.0] * 5)  # stable until lr_decay_steps - wsd_decay_steps = 6
    assert lrs[7:9] == pytest.approx(list(expected_7_8))
    assert lrs[10:] == pytest.approx([0.0, 0.0])


def test_param_groups_keep_their_lr_ratio_and_max_lr_overrides():
    scheduler = OptimizerParamScheduler(_optimizer(1.0, 0.1), lr_decay_style="linear", lr_decay_steps=4)
    assert scheduler.get_last_lr() == pytest.approx([1.0, 0.1])
    scheduler.step(2)
    assert scheduler.get_last_lr() == pytest.approx([0.5, 0.05])
    scheduler = OptimizerParamScheduler(_optimizer(1.0, 0.5), lr_decay_style="constant", max_lr=2.0)
    assert scheduler.get_last_lr() == pytest.approx([2.0, 1.0])


def test_lr_reaches_the_optimizer_update():
    optimizer = _optimizer(0.5)
    param = optimizer.param_groups[0]["params"][0]
    scheduler = OptimizerParamScheduler(optimizer, lr_decay_style="constant", lr_warmup_steps=2)
    for expected_lr in (0.0, 0.25, 0.5):
        before = param.detach().clone()
        param.grad = torch.ones_like(param)
        optimizer.step()
        scheduler.step()
        torch.testing.assert_close(before - param.detach(), torch.full_like(before, expected_lr))


@pytest.mark.parametrize(
    ("style", "expected_at_2"), [("linear", 0.02), ("cosine", 0.1 * 0.5 * (1 - math.cos(0.2 * math.pi)))]
)
def test_weight_decay_schedule_only_touches_decaying_groups(style, expected_at_2):
    optimizer = _optimizer(1.0, 1.0, weight_decays=[0.05, 0.0])
    scheduler = OptimizerParamScheduler(
        optimizer,
        lr_decay_style="constant",
        start_weight_decay=0.0,
        end_weight_decay=0.1,
        weight_decay_incr_style=style,
        total_steps=10,
    )
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.0]
    scheduler.step(2)
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(expected_at_2)
    scheduler.step(3)
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.05)
    scheduler.step(10)
    assert [g["weight_decay"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.0])


def test_weight_decay_untouched_when_not_scheduled():
    optimizer = _optimizer(1.0, weight_decays=[0.03])
    scheduler = OptimizerParamScheduler(optimizer, lr_decay_style="linear", total_steps=5)
    scheduler.step(3)
    assert scheduler.get_wd() is None
    assert optimizer.param_groups[0]["weight_decay"] == 0.03


def test_state_dict_round_trip_continues_the_same_sequence(tmp_path):
    kw = {"lr_decay_style": "cosine", "lr_warmup_steps": 3, "min_lr": 0.01, "total_steps": 12}
    uninterrupted = _lrs(OptimizerParamScheduler(_optimizer(1.0), **kw), 12)

    first = OptimizerParamScheduler(_optimizer(1.0), **kw)
    head = _lrs(first, 5)
    torch.save(first.state_dict(), tmp_path / "sched.pt")

    resumed = OptimizerParamScheduler(_optimizer(1.0), **kw)  # a fresh run starts at step 0 ...
    resumed.load_state_dict(torch.load(tmp_path / "sched.pt", weights_only=True))  # ... and jumps to step 5
    tail = _lrs(resumed, 7)
    assert head[:-1] + tail == pytest.approx(uninterrupted)
    assert resumed.num_steps == 12


def test_load_state_dict_warns_when_settings_changed(caplog):
    saved = OptimizerParamScheduler(_optimizer(1.0), lr_decay_style="linear", total_steps=10)
    saved.step(4)
    changed = OptimizerParamScheduler(_optimizer(1.0), lr_decay_style="linear", total_steps=20)
    with caplog.at_level(logging.WARNING):
        changed.load_state_dict(saved.state_dict())
    assert "lr_decay_steps: checkpoint 10 -> config 20" in caplog.text
    assert changed.get_last_lr()[0] == pytest.approx(0.8)  # the config's schedule at the saved step


def test_errors_name_the_key_and_the_fix():
    with pytest.raises(
        OptimError, match=r"lr_decay_style='cosinus'.*\['constant', 'linear', 'cosine', 'inverse-square-root', 'WSD'\]"
    ):
        _sched("cosinus")
    with pytest.raises(OptimError, match=r"lr_wsd_decay_style='step'.*'minus_sqrt'"):
        _sched("WSD", wsd_decay_steps=2, lr_wsd_decay_style="step")
    with pytest.raises(OptimError, match=r"min_lr=0.5 is larger than the peak lr 0.1"):
        OptimizerParamScheduler(_optimizer(0.1), min_lr=0.5, total_steps=10)
    with pytest.raises(OptimError, match=r"lr_warmup_steps=20 exceeds lr_decay_steps=10"):
        OptimizerParamScheduler(_optimizer(0.1), lr_warmup_steps=20, total_steps=10)
    with pytest.raises(OptimError, match=r"lr_warmup_steps=-1 must be >= 0"):
        OptimizerParamScheduler(_optimizer(0.1), lr_warmup_steps=-1, total_steps=10)
    with pytest.raises(OptimError, match=r"needs lr_decay_steps .*step_scheduler.max_steps"):
        OptimizerParamScheduler(_optimizer(0.1), lr_decay_style="linear")
    with pytest.raises(OptimError, match=r"'WSD' needs wsd_decay_steps"):
        _sched("WSD")
    with pytest.raises(OptimError, match=r"wsd_decay_steps=9 does not fit after the warmup"):
        _sched("WSD", wsd_decay_steps=9)
    with pytest.raises(OptimError, match=r"'constant' but start_weight_decay=0.0 != end_weight_decay=0.1"):
        _sched("linear", start_weight_decay=0.0, end_weight_decay=0.1)


def test_build_lr_scheduler_defaults_and_aliases():
    # No section: the optimizer's lr throughout.
    assert _lrs(build_lr_scheduler(_optimizer(0.3), 5), 5) == pytest.approx([0.3] * 6)
    # Any key set: cosine by default (as in NeMo), decaying over total_steps.
    scheduler = build_lr_scheduler(_optimizer(1.0), 10, min_lr=0.1)
    assert scheduler.lr_decay_style == "cosine" and scheduler.get_lr(5) == pytest.approx(0.55)
    # NeMo / Megatron spellings.
    scheduler = build_lr_scheduler(
        _optimizer(1.0), 100, lr_decay_style="linear", lr_decay_iters=10, init_lr=0.5, lr_warmup_iters=2
    )
    assert (scheduler.lr_decay_steps, scheduler.lr_warmup_init, scheduler.lr_warmup_steps) == (10, 0.5, 2)
    assert scheduler.get_lr(1) == pytest.approx(0.75)
    scheduler = build_lr_scheduler(
        _optimizer(1.0, weight_decays=[0.1]), 10, start_wd=0.0, end_wd=0.2, wd_incr_style="linear"
    )
    assert scheduler.get_wd(5) == pytest.approx(0.1)
    with pytest.raises(OptimError, match=r"lr_decay_iters and lr_scheduler.lr_decay_steps are the same setting"):
        build_lr_scheduler(_optimizer(1.0), 10, lr_decay_steps=5, lr_decay_iters=5)

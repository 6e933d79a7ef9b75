import logging

import pytest
import torch

from automodel.components.optim import SOAP, Muon, OptimError, OptimizerParamScheduler, build_optimizer


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(11, 8)
        self.q_proj = torch.nn.Linear(8, 8)
        self.input_layernorm = torch.nn.LayerNorm(8)
        self.lm_head = torch.nn.Linear(8, 11, bias=False)
        self.frozen = torch.nn.Linear(8, 8).requires_grad_(False)

    def forward(self, ids):
        return self.lm_head(self.input_layernorm(torch.tanh(self.q_proj(self.embed_tokens(ids)))))


def named(model):
    return list(model.named_parameters())


def run(model, optimizer, num_steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 11, (3, 5), generator=generator)
    labels = torch.randint(0, 11, (3, 5), generator=generator)
    losses = []
    for _ in range(num_steps):
        loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), labels.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def names_by_group(optimizer):
    return [sorted(g["param_names"]) for g in optimizer.param_groups]


@pytest.mark.parametrize(("name", "cls"), [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam)])
def test_adam_is_fused_on_cpu_and_matches_torch_reference(name, cls):
    torch.manual_seed(0)
    model = TinyLM()
    reference_model = TinyLM()
    reference_model.load_state_dict(model.state_dict())
    optimizer = build_optimizer(named(model), name, lr=0.01, weight_decay=0.1, betas=(0.8, 0.9))
    assert isinstance(optimizer, cls)
    assert all(g["fused"] for g in optimizer.param_groups)

    ref_params = dict(reference_model.named_parameters())
    decay = ["embed_tokens.weight", "q_proj.weight", "lm_head.weight"]
    reference = cls(
        [
            {"params": [ref_params[n] for n in decay], "weight_decay": 0.1},
            {"params": [p for n, p in ref_params.items() if n not in decay and p.requires_grad], "weight_decay": 0.0},
        ],
        lr=0.01,
        betas=(0.8, 0.9),
        foreach=False,  # the plain for-loop implementation
    )
    run(model, optimizer, 3)
    run(reference_model, reference, 3)
    for (n, p), ref in zip(model.named_parameters(), reference_model.parameters()):
        torch.testing.assert_close(p.detach(), ref.detach(), rtol=0, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def test_explicit_implementation_choice_is_respected():
    optimizer = build_optimizer(named(TinyLM()), "adamw", foreach=True)
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]
    optimizer = build_optimizer(named(TinyLM()), "adamw", fused=False)
    assert not optimizer.defaults["fused"] and optimizer.defaults["foreach"] is None
    # lr and weight_decay default to the chosen optimizer's own defaults.
    assert (optimizer.defaults["lr"], optimizer.defaults["weight_decay"]) == (1e-3, 1e-2)
    assert build_optimizer(named(TinyLM()), "muon").defaults["lr"] == 0.02


def test_groups_weight_decay_and_lr_multipliers():
    optimizer = build_optimizer(
        named(TinyLM()),
        "adamw",
        lr=1e-3,
        weight_decay=0.1,
        lr_multipliers={"*embed_tokens*": 0.1, "lm_head": 2.0, "*.weight": 0.5},  # first match wins
    )
    assert names_by_group(optimizer) == [
        ["input_layernorm.bias", "q_proj.bias"],  # base lr (no pattern matches), no decay (1-D)
        ["embed_tokens.weight"],
        ["lm_head.weight"],
        ["q_proj.weight"],
        ["input_layernorm.weight"],  # '*.weight' sets its lr; the name 'norm' still keeps it from decaying
    ]
    # param_groups[0] has the base lr that the scheduler's max_lr refers to, even though it does not decay.
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-4, 2e-3, 5e-4, 5e-4])
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.1, 0.1, 0.1, 0.0]
    custom = build_optimizer(named(TinyLM()), "adamw", weight_decay=0.1, no_decay_patterns=["embed", "*.bias"])
    assert names_by_group(custom) == [
        ["lm_head.weight", "q_proj.weight"],
        ["embed_tokens.weight", "input_layernorm.bias", "input_layernorm.weight", "q_proj.bias"],
    ]


def test_lr_multipliers_survive_the_lr_scheduler():
    optimizer = build_optimizer(named(TinyLM()), "adamw", lr=1e-3, weight_decay=0.1, lr_multipliers={"embed": 0.1})
    scheduler = OptimizerParamScheduler(
        optimizer, lr_decay_style="cosine", lr_warmup_steps=2, lr_decay_steps=6, max_lr=2e-3, min_lr=1e-4
    )
    seen = []
    for _ in range(7):
        lrs = scheduler.get_last_lr()
        embed = next(g["lr"] for g in optimizer.param_groups if g["lr_multiplier"] == 0.1)
        assert embed == pytest.approx(0.1 * lrs[0])
        assert all(lr == pytest.approx(lrs[0]) for g, lr in zip(optimizer.param_groups, lrs) if g["lr_multiplier"] == 1)
        seen.append(lrs[0])
        scheduler.step()
    assert seen[2] == pytest.approx(2e-3) and seen[6] == pytest.approx(1e-4)  # max_lr / min_lr: the base group's


def test_muon_groups_from_build_optimizer():
    optimizer = build_optimizer(
        named(TinyLM()), "muon", lr=0.02, weight_decay=0.1, adamw_lr=1e-3, lr_multipliers={"embed": 0.5}
    )
    assert isinstance(optimizer, Muon)
    summary = [(g["use_muon"], sorted(g["param_names"]), g["lr"], g["weight_decay"]) for g in optimizer.param_groups]
    assert summary == [
        (True, ["q_proj.weight"], 0.02, 0.1),
        (False, ["lm_head.weight"], 1e-3, 0.1),  # adamw_weight_decay defaults to weight_decay
        (False, ["input_layernorm.bias", "input_layernorm.weight", "q_proj.bias"], 1e-3, 0.0),
        (False, ["embed_tokens.weight"], 5e-4, 0.1),  # the multiplier scales adamw_lr as well
    ]
    scheduler = OptimizerParamScheduler(optimizer, lr_decay_style="linear", lr_decay_steps=4)
    scheduler.step(2)
    assert scheduler.get_last_lr() == pytest.approx([0.01, 5e-4, 5e-4, 2.5e-4])
    only_adamw_decay = build_optimizer(named(TinyLM()), "muon", weight_decay=0.0, adamw_weight_decay=0.01)
    assert [g["weight_decay"] for g in only_adamw_decay.param_groups] == [0.0, 0.01, 0.0]


@pytest.mark.parametrize("name", ["adamw", "adam", "muon", "soap"])
def test_state_round_trip_continues_exactly(tmp_path, name):
    def fresh():
        torch.manual_seed(0)
        model = TinyLM()
        settings = {"precondition_frequency": 2} if name == "soap" else {}
        return model, build_optimizer(named(model), name, lr=0.01, weight_decay=0.01, **settings)

    model, optimizer = fresh()
    run(model, optimizer, 3)
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    uninterrupted = run(model, optimizer, 3, seed=1)

    model, optimizer = fresh()
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optim"])
    resumed = run(model, optimizer, 3, seed=1)
    assert resumed == uninterrupted and resumed[-1] < resumed[0]


def test_unnamed_parameters_use_the_ndim_rule(caplog):
    model = TinyLM()
    with caplog.at_level(logging.WARNING):
        optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], "soap", weight_decay=0.1)
    assert isinstance(optimizer, SOAP)
    assert [len(g["params"]) for g in optimizer.param_groups] == [3, 3]
    assert "no_decay_patterns ['bias', 'norm'] are not applied" in caplog.text


def test_errors_name_the_key_and_the_choices():
    params = named(TinyLM())
    with pytest.raises(
        OptimError, match=r"optimizer.name='lion' is not a known optimizer; .*\['adamw', 'adam', 'muon'"
    ):
        build_optimizer(params, "lion")
    with pytest.raises(
        OptimError,
        match=r"optimizer.beta, optimizer.momentum are not options of adamw \(torch.optim.adamw.AdamW\); "
        r"accepted: amsgrad, betas, .*lr_multipliers.*",
    ):
        build_optimizer(params, "adamw", beta=0.9, momentum=0.9)
    with pytest.raises(OptimError, match=r"optimizer.betas is not an option of muon .*adamw_betas"):
        build_optimizer(params, "muon", betas=(0.9, 0.95))
    with pytest.raises(
        OptimError, match=r"lr_multipliers pattern\(s\) \['\*embeding\*'\] match no trainable parameter"
    ):
        build_optimizer(params, lr_multipliers={"*embeding*": 0.1})
    with pytest.raises(OptimError, match=r"lr_multipliers\['embed'\]=-1 must be a number >= 0"):
        build_optimizer(params, lr_multipliers={"embed": -1})
    with pytest.raises(OptimError, match="lr_multipliers needs parameter names"):
        build_optimizer([p for _, p in params], lr_multipliers={"embed": 0.1})
    with pytest.raises(OptimError, match="pass \\(name, parameter\\) pairs, not param-group dicts"):
        build_optimizer([{"params": [p for _, p in params]}])
    with pytest.raises(OptimError, match=r"optimizer \(adamw\): Invalid beta parameter at index 0: 1.5"):
        build_optimizer(params, betas=(1.5, 0.9))
    with pytest.raises(OptimError, match=r"optimizer.weight_decay=-0.1 must be >= 0"):
        build_optimizer(params, weight_decay=-0.1)
    with pytest.raises(OptimError, match="Muon needs parameter names"):
        build_optimizer([p for _, p in params], "muon", no_decay_patterns=())

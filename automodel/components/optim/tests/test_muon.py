import math

import pytest
import torch

from automodel.components.optim import Muon, OptimError, OptimizerParamScheduler, newton_schulz

A, B, C = 3.4445, -4.7750, 2.0315


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(11, 8)
        self.q_proj = torch.nn.Linear(8, 8, bias=False)
        self.up_proj = torch.nn.Linear(8, 13)  # tall (13 x 8): spectral lr scale sqrt(13/8)
        self.down_proj = torch.nn.Linear(13, 8)  # wide (8 x 13): scale 1
        self.norm = torch.nn.LayerNorm(8)
        self.lm_head = torch.nn.Linear(8, 11, bias=False)

    def forward(self, ids):
        h = self.embed_tokens(ids)
        h = h + self.down_proj(torch.tanh(self.up_proj(self.q_proj(h))))
        return self.lm_head(self.norm(h))


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


def test_newton_schulz_applies_the_quintic_to_each_singular_value():
    # Reference through the SVD: X = U S V^T, NS(X) = U p(p(...p(S / |X|_F))) V^T with p(s) = a s + b s^3 + c s^5.
    torch.manual_seed(0)
    for shape in [(6, 9), (9, 6)]:
        matrix = torch.randn(*shape, dtype=torch.float64)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        s = s / (matrix.norm() + 1e-7)
        for _ in range(5):
            s = A * s + B * s**3 + C * s**5
        torch.testing.assert_close(newton_schulz(matrix, 5, torch.float64), u @ torch.diag(s) @ vh, rtol=0, atol=1e-10)


def test_newton_schulz_in_bf16_orthogonalises_approximately():
    torch.manual_seed(0)
    # Ill-conditioned on purpose: singular values spread over 3 orders of magnitude.
    u, _ = torch.linalg.qr(torch.randn(64, 64))
    v, _ = torch.linalg.qr(torch.randn(32, 32))
    matrix = u[:, :32] @ torch.diag(torch.logspace(0, -3, 32)) @ v.T
    out = newton_schulz(matrix, 5)
    assert out.dtype == torch.bfloat16
    singular_values = torch.linalg.svdvals(out.float())
    assert singular_values.max() < 1.25 and singular_values[:16].min() > 0.65


def reference_muon(model, grads_per_step, *, lr, momentum, nesterov, weight_decay, scale_rule, adamw):
    """Straightforward Muon on the model's hidden matrices; the rest is checked against torch's AdamW."""
    muon_names = {"q_proj.weight", "up_proj.weight", "down_proj.weight"}
    params = {n: p.detach().clone() for n, p in model.named_parameters() if n in muon_names}
    buffers = {n: torch.zeros_like(p) for n, p in params.items()}
    for grads in grads_per_step:
        for name, param in params.items():
            buffers[name] = momentum * buffers[name] + grads[name]
            update = grads[name] + momentum * buffers[name] if nesterov else buffers[name]
            x = update / (update.norm() + 1e-7)
            tall = x.shape[0] > x.shape[1]
            x = x.T if tall else x
            for _ in range(5):
                x = A * x + (B * (x @ x.T) + C * (x @ x.T) @ (x @ x.T)) @ x
            x = x.T if tall else x
            rows, cols = param.shape
            scale = math.sqrt(max(1, rows / cols)) if scale_rule == "spectral" else 0.2 * math.sqrt(max(rows, cols))
            params[name] = param * (1 - lr * weight_decay) - lr * scale * x
    others = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters() if n not in muon_names}
    optimizer = torch.optim.AdamW(list(others.values()), foreach=False, **adamw)
    for grads in grads_per_step:
        for name, param in others.items():
            param.grad = grads[name].clone()
        optimizer.step()
    return {**params, **{n: p.detach() for n, p in others.items()}}


@pytest.mark.parametrize(
    ("nesterov", "adjust_lr", "weight_decay"), [(True, "spectral", 0.0), (False, "match_rms_adamw", 0.1)]
)
def test_muon_matches_reference(nesterov, adjust_lr, weight_decay):
    torch.manual_seed(0)
    model = TinyLM()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = Muon(
        model.named_parameters(),
        lr=0.05,
        momentum=0.9,
        nesterov=nesterov,
        weight_decay=weight_decay,
        adjust_lr=adjust_lr,
        ns_dtype="float32",
        adamw_lr=0.01,
        adamw_betas=(0.8, 0.9),
        adamw_eps=1e-6,
        adamw_weight_decay=0.05,
    )
    grads_per_step = []
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = {n: torch.randn(p.shape, generator=generator) for n, p in model.named_parameters()}
        for name, param in model.named_parameters():
            param.grad = grads[name].clone()
        optimizer.step()
        grads_per_step.append(grads)

    reference_model = TinyLM()
    reference_model.load_state_dict(start)
    expected = reference_muon(
        reference_model,
        grads_per_step,
        lr=0.05,
        momentum=0.9,
        nesterov=nesterov,
        weight_decay=weight_decay,
        scale_rule=adjust_lr,
        adamw={"lr": 0.01, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.05},
    )
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_which_parameters_get_muon_and_group_order():
    model = TinyLM()
    optimizer = Muon(model.named_parameters(), lr=0.02, adamw_lr=1e-3, weight_decay=0.1)
    groups = optimizer.param_groups
    assert [g["use_muon"] for g in groups] == [True, False]  # Muon first: param_groups[0] carries the Muon lr
    assert groups[0]["param_names"] == ["q_proj.weight", "up_proj.weight", "down_proj.weight"]
    assert sorted(groups[1]["param_names"]) == [
        "down_proj.bias",
        "embed_tokens.weight",
        "lm_head.weight",
        "norm.bias",
        "norm.weight",
        "up_proj.bias",
    ]
    assert (groups[1]["lr"], groups[1]["weight_decay"]) == (1e-3, 0.1)  # adamw_weight_decay defaults to weight_decay

    # Custom patterns: a glob sends the down projections to AdamW too.
    optimizer = Muon(model.named_parameters(), adamw_patterns=["embed", "lm_head", "*down_proj*"])
    assert optimizer.param_groups[0]["param_names"] == ["q_proj.weight", "up_proj.weight"]


def test_scheduler_keeps_the_adamw_to_muon_lr_ratio():
    optimizer = Muon(TinyLM().named_parameters(), lr=0.02, adamw_lr=1e-3)
    scheduler = OptimizerParamScheduler(optimizer, lr_decay_style="linear", lr_decay_steps=4, max_lr=0.04)
    assert scheduler.get_last_lr() == pytest.approx([0.04, 2e-3])
    scheduler.step(2)
    assert scheduler.get_last_lr() == pytest.approx([0.02, 1e-3])


def test_default_bf16_muon_trains_like_fp32():
    final = {}
    for ns_dtype in ("bfloat16", "float32"):
        torch.manual_seed(0)
        model = TinyLM()
        losses = run(model, Muon(model.named_parameters(), lr=0.02, adamw_lr=3e-3, ns_dtype=ns_dtype), 30)
        assert losses[-1] < 0.7 * losses[0]
        final[ns_dtype] = losses[-1]
    assert final["bfloat16"] == pytest.approx(final["float32"], rel=0.05)


def test_state_dict_round_trip_continues_exactly(tmp_path):
    def fresh():
        torch.manual_seed(0)
        model = TinyLM()
        return model, Muon(model.named_parameters(), lr=0.02, adamw_lr=3e-3, weight_decay=0.01)

    model, optimizer = fresh()
    run(model, optimizer, 3)
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    uninterrupted = run(model, optimizer, 3, seed=1)

    model, optimizer = fresh()
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optim"])
    assert run(model, optimizer, 3, seed=1) == uninterrupted


def test_errors_are_clear():
    model = TinyLM()
    with pytest.raises(OptimError, match=r"Muon needs parameter names .* list\(model.named_parameters\(\)\)"):
        Muon(model.parameters())
    no_matrix = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.LayerNorm(4))
    with pytest.raises(
        OptimError,
        match=r"Muon found no hidden weight matrix among the 3 trainable parameters \(embed.0.weight \(5, 4\), .*\): .*"
        r"adamw_patterns=\['embed', 'lm_head', 'wte', 'wpe'\].*torch.optim.AdamW",
    ):
        Muon([(f"embed.{n}", p) for n, p in no_matrix.named_parameters()])
    with pytest.raises(OptimError, match="Muon got an empty parameter list"):
        Muon([])
    with pytest.raises(OptimError, match=r"adjust_lr='rms' is not one of \['spectral', 'match_rms_adamw', 'none'\]"):
        Muon(model.named_parameters(), adjust_lr="rms")
    with pytest.raises(OptimError, match=r"ns_dtype='fp8' is not one of \['bfloat16', 'float32', 'float64'\]"):
        Muon(model.named_parameters(), ns_dtype="fp8")
    with pytest.raises(OptimError, match=r"optimizer.momentum=1.0 must be in \[0, 1\)"):
        Muon(model.named_parameters(), momentum=1.0)
    with pytest.raises(OptimError, match=r"optimizer.adamw_betas=\[0.9\] must be two numbers"):
        Muon(model.named_parameters(), adamw_betas=[0.9])

import pytest
import torch

from automodel.components.optim import SOAP, OptimError


def random_grads(shape, num_steps, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(num_steps)]


def apply(optimizer, param, grads):
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()


def reference_soap(start, grads, *, lr, betas, eps, weight_decay, frequency, left=True, right=True):
    """SOAP written out for one matrix: Adam on Q_L^T G Q_R, both factors' eigenbases refreshed by QR."""
    beta1, beta2 = betas
    shampoo_beta = beta2
    weight = start.clone()
    rows, cols = weight.shape
    exp_avg = torch.zeros_like(weight)
    exp_avg_sq = torch.zeros_like(weight)
    left_factor, right_factor = torch.zeros(rows, rows), torch.zeros(cols, cols)
    q_left, q_right = torch.eye(rows), torch.eye(cols)
    for i, grad in enumerate(grads):
        if i == 0:  # basis from the first gradient, no update
            left_factor = (1 - shampoo_beta) * (grad @ grad.T)
            right_factor = (1 - shampoo_beta) * (grad.T @ grad)
            if left:
                q_left = torch.linalg.eigh(left_factor).eigenvectors.flip(-1)
            if right:
                q_right = torch.linalg.eigh(right_factor).eigenvectors.flip(-1)
            continue
        t = i
        rotated = q_left.T @ grad @ q_right
        exp_avg = beta1 * exp_avg + (1 - beta1) * rotated
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * rotated**2
        m_hat = exp_avg / (1 - beta1**t)
        v_hat = exp_avg_sq / (1 - beta2**t)
        weight = weight * (1 - lr * weight_decay) - lr * (q_left @ (m_hat / (v_hat.sqrt() + eps)) @ q_right.T)
        left_factor = shampoo_beta * left_factor + (1 - shampoo_beta) * (grad @ grad.T)
        right_factor = shampoo_beta * right_factor + (1 - shampoo_beta) * (grad.T @ grad)
        if t % frequency == 0:
            momentum = q_left @ exp_avg @ q_right.T
            if left:
                order = torch.argsort(torch.diag(q_left.T @ left_factor @ q_left), descending=True)
                exp_avg_sq = exp_avg_sq[order, :]
                q_left = torch.linalg.qr(left_factor @ q_left[:, order]).Q
            if right:
                order = torch.argsort(torch.diag(q_right.T @ right_factor @ q_right), descending=True)
                exp_avg_sq = exp_avg_sq[:, order]
                q_right = torch.linalg.qr(right_factor @ q_right[:, order]).Q
            exp_avg = q_left.T @ momentum @ q_right
    return weight


SETTINGS = {"lr": 0.01, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}


@pytest.mark.parametrize(
    ("shape", "max_precond_dim", "left", "right"),
    [((7, 5), 8192, True, True), ((5, 12), 8, True, False), ((12, 5), 8, False, True)],
)
def test_soap_matches_reference(shape, max_precond_dim, left, right):
    torch.manual_seed(0)
    start = torch.randn(shape)
    param = torch.nn.Parameter(start.clone())
    grads = random_grads(shape, 7)
    optimizer = SOAP([param], precondition_frequency=2, max_precond_dim=max_precond_dim, **SETTINGS)
    apply(optimizer, param, grads)
    assert sorted(k for k in optimizer.state[param] if k.startswith("q_")) == ["q_0"] * left + ["q_1"] * right
    expected = reference_soap(start, grads, frequency=2, left=left, right=right, **SETTINGS)
    torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-6)


def test_first_step_sets_the_basis_only_and_vectors_get_adamw():
    torch.manual_seed(0)
    matrix = torch.nn.Parameter(torch.randn(4, 3))
    vector = torch.nn.Parameter(torch.randn(4))
    cube = torch.nn.Parameter(torch.randn(2, 3, 2))  # more than 2 dims: AdamW
    start = [p.detach().clone() for p in (matrix, vector, cube)]
    optimizer = SOAP([matrix, vector, cube], **SETTINGS)
    reference_params = [torch.nn.Parameter(s.clone()) for s in start[1:]]
    reference = torch.optim.AdamW(reference_params, foreach=False, **SETTINGS)
    for step in range(3):
        grads = [torch.randn(p.shape) for p in (matrix, vector, cube)]
        for p, g in zip((matrix, vector, cube), grads):
            p.grad = g
        for p, g in zip(reference_params, grads[1:]):
            p.grad = g.clone()
        optimizer.step()
        reference.step()
        if step == 0:
            assert torch.equal(matrix.detach(), start[0])
        else:
            assert not torch.equal(matrix.detach(), start[0])
        for p, r in zip((vector, cube), reference_params):
            torch.testing.assert_close(p.detach(), r.detach(), rtol=0, atol=1e-6)


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(11, 8)
        self.up_proj = torch.nn.Linear(8, 13)
        self.norm = torch.nn.LayerNorm(13)
        self.lm_head = torch.nn.Linear(13, 11, bias=False)

    def forward(self, ids):
        return self.lm_head(self.norm(torch.tanh(self.up_proj(self.embed_tokens(ids)))))


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


def test_soap_trains_a_tiny_lm():
    torch.manual_seed(0)
    model = TinyLM()
    losses = run(model, SOAP(model.named_parameters(), lr=0.01, precondition_frequency=5), 30)
    assert losses[-1] < 0.5 * losses[0]


def test_state_dict_round_trip_continues_exactly(tmp_path):
    def fresh():
        torch.manual_seed(0)
        model = TinyLM()
        return model, SOAP(model.named_parameters(), lr=0.01, precondition_frequency=2)

    model, optimizer = fresh()
    run(model, optimizer, 4)
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    uninterrupted = run(model, optimizer, 4, seed=1)  # crosses two basis refreshes

    model, optimizer = fresh()
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optim"])
    assert run(model, optimizer, 4, seed=1) == uninterrupted


def test_bf16_parameters_keep_float32_factors_after_loading():
    param = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.bfloat16))
    optimizer = SOAP([param])
    apply(optimizer, param, [torch.randn(4, 3, dtype=torch.bfloat16) for _ in range(2)])
    resumed = SOAP([param])
    resumed.load_state_dict(optimizer.state_dict())  # torch casts state to bf16 here; SOAP undoes it for factors
    state = resumed.state[param]
    assert state["exp_avg"].dtype == torch.bfloat16
    assert {state[k].dtype for k in ("gg_0", "q_0", "gg_1", "q_1")} == {torch.float32}
    apply(resumed, param, [torch.randn(4, 3, dtype=torch.bfloat16)])


def test_errors_name_the_key():
    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    with pytest.raises(OptimError, match=r"SOAP: optimizer.precondition_frequency=0 must be an integer >= 1"):
        SOAP(params, precondition_frequency=0)
    with pytest.raises(OptimError, match=r"SOAP: optimizer.betas=\(0.9, 1.0\) must be two numbers in \[0, 1\)"):
        SOAP(params, betas=(0.9, 1.0))
    with pytest.raises(OptimError, match=r"SOAP: optimizer.shampoo_beta=1.5 must be in \[0, 1\)"):
        SOAP(params, shampoo_beta=1.5)
    with pytest.raises(OptimError, match=r"SOAP: optimizer.lr=-1 must be >= 0"):
        SOAP(params, lr=-1)

"""FSDP2 (2 processes, gloo on CPU) gives the same parameters as one process, for every optimizer offered."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from automodel.components.optim import build_optimizer

VOCAB, HIDDEN, FFN = 33, 16, 23  # odd sizes: FSDP2 shards dim 0 unevenly (17 + 16 rows, 12 + 11 rows)
NUM_STEPS, RESUME_AT = 3, 2  # SOAP: step 1 sets the basis, step 3 refreshes it (after the resume)
SETTINGS = {
    "adamw": {"lr": 0.01, "weight_decay": 0.1},
    "muon": {"lr": 0.02, "adamw_lr": 0.01, "weight_decay": 0.1, "ns_dtype": "float32"},
    "soap": {"lr": 0.01, "weight_decay": 0.1, "precondition_frequency": 2},
}


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(HIDDEN)
        self.up_proj = torch.nn.Linear(HIDDEN, FFN)
        self.down_proj = torch.nn.Linear(FFN, HIDDEN)

    def forward(self, h):
        return h + self.down_proj(torch.tanh(self.up_proj(self.norm(h))))


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(VOCAB, HIDDEN)
        self.layers = torch.nn.ModuleList([Block(), Block()])
        self.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, ids):
        h = self.embed_tokens(ids)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(h)


def batch(rank):
    """Rank ``rank``'s half of the global batch (one process takes both halves)."""
    generator = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(0, VOCAB, (2, 8), generator=generator)
    return ids, torch.randint(0, VOCAB, (2, 8), generator=generator)


def train(model, optimizer, ranks, num_steps):
    for _ in range(num_steps):
        for rank in ranks:
            ids, labels = batch(rank)
            logits = model(ids)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()) / len(ranks)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def full_params(model):
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in model.named_parameters()
    }


def _worker(rank, port, out_dir):
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        results = {}
        for name, settings in SETTINGS.items():

            def sharded(name=name, settings=settings):
                torch.manual_seed(0)
                model = TinyLM()
                for layer in model.layers:
                    fully_shard(layer, mesh=mesh)
                fully_shard(model, mesh=mesh)
                # Built right after sharding (see ENVIRONMENT.md: a forward first leaves root params unsharded).
                return model, build_optimizer(list(model.named_parameters()), name, **settings)

            # One run, checkpointed after RESUME_AT steps; a fresh run loads that checkpoint and finishes too.
            model, optimizer = sharded()
            train(model, optimizer, [rank], RESUME_AT)
            path = os.path.join(out_dir, f"{name}_rank{rank}.pt")
            torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, path)
            train(model, optimizer, [rank], NUM_STEPS - RESUME_AT)
            results[name] = full_params(model)

            model, optimizer = sharded()
            saved = torch.load(path, weights_only=True)  # DTensor state included
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optim"])
            train(model, optimizer, [rank], NUM_STEPS - RESUME_AT)
            results[f"{name}_resumed"] = full_params(model)

            # The same through torch's full (unsharded) state dicts, as a consolidated checkpoint would store them.
            model, optimizer = sharded()
            saved = torch.load(path, weights_only=True)  # afresh: load_state_dict aliases, the run above mutated it
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optim"])
            options = StateDictOptions(full_state_dict=True)
            full_path = os.path.join(out_dir, f"{name}_full_rank{rank}.pt")
            torch.save(get_optimizer_state_dict(model, optimizer, options=options), full_path)
            model, optimizer = sharded()
            model.load_state_dict(saved["model"])
            full_state = torch.load(full_path, weights_only=True)
            set_optimizer_state_dict(model, optimizer, full_state, options=options)
            train(model, optimizer, [rank], NUM_STEPS - RESUME_AT)
            results[f"{name}_resumed_full"] = full_params(model)
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "fsdp2.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fsdp2_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("fsdp2")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=2, join=True)
    return torch.load(out_dir / "fsdp2.pt", weights_only=True)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_fsdp2_matches_one_process(fsdp2_results, name):
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = build_optimizer(list(model.named_parameters()), name, **SETTINGS[name])
    start = full_params(model)
    train(model, optimizer, [0, 1], NUM_STEPS)
    expected = full_params(model)
    for key in (name, f"{name}_resumed", f"{name}_resumed_full"):
        for param_name, value in fsdp2_results[key].items():
            assert not torch.equal(value, start[param_name]), f"{param_name} never moved under FSDP2"
            where = f"{key}: {param_name}"
            torch.testing.assert_close(
                value, expected[param_name], rtol=0, atol=1e-6, msg=lambda m, w=where: f"{w}: {m}"
            )

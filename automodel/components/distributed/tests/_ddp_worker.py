"""Run under torchrun by test_distributed.py: DDP on gloo must give the gradient of the full batch."""

import json
import logging
import sys

import torch

from automodel.components.distributed import (
    DistributedConfig,
    all_reduce_sum,
    destroy_distributed,
    initialize_distributed,
    parallelize_model,
)

logging.basicConfig(level=logging.WARNING)
info = initialize_distributed(backend="nccl", timeout_minutes=1)  # no CUDA here: must fall back to gloo
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
ddp = parallelize_model(model, info, DistributedConfig())
x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
y = torch.randn(4, 1, generator=torch.Generator().manual_seed(2))
shard = slice(info.rank * 2, info.rank * 2 + 2)
loss = ((ddp(x[shard]) - y[shard]) ** 2).sum() / 4 * info.world_size  # DDP averages over ranks
loss.backward()
total = all_reduce_sum(loss.detach().clone() / info.world_size)
if info.rank == 0:
    out = {"backend": info.backend, "type": type(ddp).__name__, "loss": total.item()}
    out["grad"] = [p.grad.flatten().tolist() for p in model.parameters()]
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
destroy_distributed()  # without it gloo's threads can abort the interpreter at exit

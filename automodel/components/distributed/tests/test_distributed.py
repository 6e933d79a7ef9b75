import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from automodel.components.distributed import (
    DistEnvConfig,
    DistributedConfig,
    DistributedError,
    initialize_distributed,
    parallelize_model,
)


def test_single_process_has_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = initialize_distributed("nccl")
    assert (info.rank, info.world_size, info.backend, info.is_main) == (0, 1, None, True)
    model = torch.nn.Linear(2, 2)
    assert parallelize_model(model, info) is model


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "fsdp3"}, r"distributed.strategy: 'fsdp3' is not available; supported: ddp"),
        ({"tp_size": 2}, r"distributed.tp_size: 2 is not supported"),
        ({"dp_size": 0}, r"dp_size must be >= 1"),
    ],
)
def test_invalid_distributed_config(kwargs, match):
    with pytest.raises(DistributedError, match=match):
        DistributedConfig(**kwargs)


def test_dp_size_must_match_world_size():
    assert DistributedConfig(dp_size=None).resolve_dp_size(4) == 4
    with pytest.raises(DistributedError, match=r"dp_size\(2\) x tp_size\(1\) x cp_size\(1\) != world size\(4\)"):
        DistributedConfig(dp_size=2).resolve_dp_size(4)


def test_bad_backend():
    with pytest.raises(DistributedError, match="dist_env.backend"):
        DistEnvConfig(backend="mpi")


def test_ddp_two_processes_match_one_process(tmp_path: Path):
    out = tmp_path / "out.json"
    worker = Path(__file__).with_name("_ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(worker), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "using 'gloo' instead" in proc.stderr  # nccl requested without CUDA
    result = json.loads(out.read_text())
    assert result["backend"] == "gloo" and result["type"] == "DistributedDataParallel"

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randn(4, 1, generator=torch.Generator().manual_seed(2))
    loss = ((model(x) - y) ** 2).sum() / 4
    loss.backward()
    assert result["loss"] == pytest.approx(loss.item(), abs=1e-6)
    for got, param in zip(result["grad"], model.parameters()):
        torch.testing.assert_close(torch.tensor(got), param.grad.flatten(), atol=1e-6, rtol=1e-5)


def test_activation_checkpointing_same_gradients():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
    )
    torch.manual_seed(0)
    plain = LlamaForCausalLM(cfg)
    ckpt = LlamaForCausalLM(cfg)
    ckpt.load_state_dict(plain.state_dict())
    info = initialize_distributed()
    parallelize_model(ckpt, info, DistributedConfig(activation_checkpointing=True))
    assert any(getattr(m, "gradient_checkpointing", False) for m in ckpt.modules())
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    for m in (plain, ckpt):
        m.train()
        m(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    for a, b in zip(plain.parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)

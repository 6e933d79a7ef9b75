import logging
import types

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM

from automodel.components.training import throughput
from automodel.components.training.errors import TrainingError
from automodel.components.training.throughput import (
    ThroughputMeter,
    default_peak_flops,
    flops_per_token,
    matmul_params,
    mfu,
    peak_memory_gib,
)

TINY_LLAMA = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 100,
}


def test_flops_formula_against_a_hand_count():
    config = LlamaConfig(**TINY_LLAMA)
    # per layer: q, o 64x64 each + k, v 64x32 each (GQA: 2 KV heads x head_dim 16) + gate/up/down 3 x 64x128
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128
    assert per_layer == 36864
    assert matmul_params(config) == 2 * per_layer + 100 * 64  # + LM head
    # 6 * N + 12 * layers * hidden * seq_len
    assert flops_per_token(config, seq_len=32) == 6 * 80128 + 12 * 2 * 64 * 32 == 529920


def test_matmul_params_match_the_real_model_linear_weights():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA, tie_word_embeddings=True))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_params(model.config) == linear  # the tied LM head is counted: its matmul still runs


def test_non_gated_mlp_and_mha_defaults():
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100)  # no intermediate size: 4 x hidden
    assert matmul_params(config) == 2 * (4 * 64 * 64 + 2 * 64 * 256) + 100 * 64
    plain = types.SimpleNamespace(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, vocab_size=10)
    assert matmul_params(plain) == 4 * 8 * 8 + 3 * 8 * 32 + 10 * 8
    with pytest.raises(TrainingError, match="cannot count FLOPs for SimpleNamespace.*vocab_size"):
        matmul_params(types.SimpleNamespace(hidden_size=8))


def test_mfu_arithmetic():
    assert mfu(1000.0, 6e9, 1e13) == pytest.approx(0.6)
    with pytest.raises(TrainingError, match="peak_flops=0 must be > 0"):
        mfu(1.0, 1.0, 0)


def test_default_peak_flops_tables(monkeypatch, caplog):
    assert default_peak_flops("cpu") == 880e9
    assert default_peak_flops("cpu", torch.float32) == 213e9
    assert default_peak_flops("cpu", torch.float16) is None
    for name, expected in [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H20", 148e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
    ]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert default_peak_flops("cuda:0") == expected, name
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with caplog.at_level(logging.WARNING):
        assert default_peak_flops("cuda:0") is None
    assert "unknown GPU 'Tesla T4'" in caplog.text and "set peak_flops" in caplog.text
    assert default_peak_flops("cuda:0", torch.float32) is None


def test_peak_memory_is_positive_and_covers_live_tensors():
    x = torch.ones(16 * 2**20)  # 64 MiB, touched so it is resident
    assert peak_memory_gib("cpu") >= x.numel() * 4 / 2**30 > 0


def test_meter_counts_real_tokens_over_micro_batches(monkeypatch):
    clock = iter([10.0, 12.0, 20.0, 22.0])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    meter = ThroughputMeter("cpu", flops_per_token=1e6, peak_flops=1e7)
    meter.start()
    meter.add(torch.tensor([[1, 1, 0], [1, 0, 0]]))  # 3 real tokens, 3 padding
    meter.add(5)
    assert meter.local_tokens() == 8
    metrics = meter.stop()
    assert metrics["num_tokens"] == 8 and metrics["tokens_per_s"] == pytest.approx(4.0)
    assert metrics["mfu"] == pytest.approx(4.0 * 1e6 / 1e7)
    assert metrics["peak_memory_gib"] > 0
    # Two data-parallel ranks: the all-reduced count gives the job's tokens/s, MFU stays per device.
    meter.start()
    meter.add(8)
    metrics = meter.stop(num_tokens=torch.tensor(16), num_devices=2)
    assert metrics["tokens_per_s"] == pytest.approx(8.0) and metrics["mfu"] == pytest.approx(0.4)


def test_meter_without_flops_has_no_mfu_and_rejects_bad_peak():
    meter = ThroughputMeter("cpu")
    meter.start()
    assert "mfu" not in meter.stop()
    assert ThroughputMeter("cpu", dtype=torch.float32).peak_flops == 213e9
    with pytest.raises(TrainingError, match="peak_flops=-1 must be > 0"):
        ThroughputMeter("cpu", peak_flops=-1)

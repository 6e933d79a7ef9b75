"""Validation of `distributed:` and `dist_env:`: every error before a weight is loaded, naming every operand."""

from __future__ import annotations

import logging

import pytest
import torch

from automodel.components.distributed import (
    DistEnvConfig,
    DistributedConfig,
    DistributedError,
    FSDP2Manager,
    MegatronFSDPManager,
    validate_for_model,
)
from automodel.components.distributed.tests._tiny import tiny_config


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"strategy": "fsdp3"},
            r"distributed.strategy: 'fsdp3' is not available; supported: fsdp2, ddp, megatron_fsdp",
        ),
        ({"tp_size": 0}, r"distributed.tp_size must be an integer >= 1, got 0"),
        ({"dp_size": 0}, r"dp_size must be >= 1 or none"),
        ({"sequence_parallel": True}, r"sequence_parallel .* but tp_size is 1; set tp_size > 1"),
        ({"strategy": "ddp", "tp_size": 2}, r"distributed.tp_size: 2 is not supported with strategy 'ddp'"),
        ({"strategy": "ddp", "dp_replicate_size": 2}, r"dp_replicate_size: 2 is not supported with strategy 'ddp'"),
        ({"param_dtype": "float8"}, r"distributed.param_dtype: 'float8' is not a dtype; expected one of bf16"),
    ],
)
def test_invalid_values_are_refused_at_construction(kwargs, match):
    with pytest.raises(DistributedError, match=match):
        DistributedConfig(**kwargs)


def test_sizes_are_inferred_from_the_world_size():
    assert DistributedConfig().resolve_dp_size(8) == 8
    assert DistributedConfig(tp_size=2).resolve_dp_size(8) == 4
    assert DistributedConfig(tp_size=2, cp_size=2, dp_replicate_size=2).resolve_dp_size(8) == 2
    assert DistributedConfig(dp_size=4, dp_replicate_size=2, tp_size=2).resolve_dp_size(8) == 4


@pytest.mark.parametrize(
    ("kwargs", "world_size", "match"),
    [
        (
            {"dp_size": 6, "dp_replicate_size": 2, "tp_size": 2},
            8,
            r"distributed: dp_replicate\(2\) x dp_shard\(3\) x tp\(2\) x cp\(1\) = 12 != world size\(8\); set dp_size: none",
        ),
        ({"dp_size": 2}, 4, r"dp_replicate\(1\) x dp_shard\(2\) x tp\(1\) x cp\(1\) = 2 != world size\(4\)"),
        ({"tp_size": 3}, 8, r"tp_size\(3\) x cp_size\(1\) = 3 does not divide the world size\(8\)"),
        ({"dp_replicate_size": 3}, 8, r"dp_size\(8\) is not a multiple of dp_replicate_size\(3\)"),
        ({"tp_size": 2}, 1, r"tp_size\(2\) x cp_size\(1\) = 2 does not divide the world size\(1\)"),
    ],
)
def test_sizes_that_do_not_fit_the_world_name_every_operand(kwargs, world_size, match):
    with pytest.raises(DistributedError, match=match):
        DistributedConfig(**kwargs).resolve_dp_size(world_size)


def test_context_parallel_and_megatron_fsdp_need_cuda():
    with pytest.raises(DistributedError, match=r"distributed.cp_size: 2 needs CUDA .* runs on cpu: set cp_size: 1"):
        DistributedConfig(cp_size=2).validate(2, "cpu")
    with pytest.raises(DistributedError, match=r"megatron_fsdp needs CUDA GPUs; this process runs on cpu"):
        DistributedConfig(strategy="megatron_fsdp").validate(2, torch.device("cpu"))
    # On a CUDA machine without the package: one line naming the extra.
    with pytest.raises(DistributedError, match=r"needs the megatron-fsdp package: pip install 'automodel\[megatron\]'"):
        DistributedConfig(strategy="megatron_fsdp").validate(2, "cuda")
    assert DistributedConfig(cp_size=2).validate(4, "cuda") == 2  # CP is fine where CUDA exists


@pytest.mark.parametrize(
    ("tp_size", "overrides", "match"),
    [
        (3, {}, r"distributed.tp_size\(3\) must divide the model's num_attention_heads\(4\) \(llama\)"),
        (4, {}, r"distributed.tp_size\(4\) must divide the model's num_key_value_heads\(2\) \(llama\)"),
    ],
)
def test_tp_size_must_divide_the_heads(tp_size, overrides, match):
    with pytest.raises(DistributedError, match=match):
        validate_for_model(DistributedConfig(tp_size=tp_size), tiny_config("llama", **overrides))


def test_models_without_a_tp_plan_are_refused_before_loading():
    validate_for_model(DistributedConfig(tp_size=2), tiny_config("qwen3"))  # our plan
    validate_for_model(DistributedConfig(tp_size=2), tiny_config("olmo2"))  # transformers' plan
    validate_for_model(DistributedConfig(), object())  # tp_size 1: nothing to check
    gpt2 = type("Config", (), {"model_type": "gpt2", "num_attention_heads": 4})()
    with pytest.raises(DistributedError, match=r"no tensor-parallel plan for model type 'gpt2'"):
        validate_for_model(DistributedConfig(tp_size=2), gpt2)
    with pytest.raises(DistributedError, match=r"sequence_parallel: only automodel's own plans .* 'olmo2'"):
        validate_for_model(DistributedConfig(tp_size=2, sequence_parallel=True), tiny_config("olmo2"))


def test_mixed_precision_defaults_depend_on_the_device():
    assert DistributedConfig().mixed_precision_dtypes("cpu") == (None, None)
    assert DistributedConfig().mixed_precision_dtypes("cuda") == (torch.bfloat16, torch.float32)
    assert DistributedConfig(param_dtype="bf16").mixed_precision_dtypes("cpu") == (torch.bfloat16, None)
    assert DistributedConfig(param_dtype="fp32", reduce_dtype="bf16").mixed_precision_dtypes("cuda") == (
        torch.float32,
        torch.bfloat16,
    )


def test_reference_system_manager_names(caplog):
    with caplog.at_level(logging.WARNING):
        manager = FSDP2Manager(dp_size=None, tp_size=1, backend="nccl")
    assert manager.strategy == "fsdp2" and "distributed.backend is ignored" in caplog.text
    assert isinstance(manager, DistributedConfig)
    assert MegatronFSDPManager().strategy == "megatron_fsdp"


def test_bad_backend():
    with pytest.raises(DistributedError, match="dist_env.backend"):
        DistEnvConfig(backend="mpi")

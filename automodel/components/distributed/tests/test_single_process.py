"""One process: nothing is wrapped, but checkpointing, clipping, meta-device loading and the helpers work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from automodel.components.distributed import (
    DistInfo,
    DistributedConfig,
    DistributedError,
    build_parallel_state,
    clip_grad_norm_,
    context_parallel_batch,
    initialize_distributed,
    load_model_weights_sharded,
    no_sync,
    parallelize_model,
    shard_optimizer,
)
from automodel.components.distributed.tests._tiny import tiny_config, tiny_model, training_batch
from automodel.components.distributed.tests._worker import logits_of

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


def meta_model(folder: Path, model_type: str = "llama") -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tiny_config(model_type), attn_implementation="sdpa")
    model.name_or_path = str(folder)  # where the weights are (a loader passes weights_path explicitly)
    return model


def test_single_process_has_no_process_group_and_wraps_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = initialize_distributed("nccl")
    assert (info.rank, info.world_size, info.backend, info.is_main) == (0, 1, None, True)
    model = tiny_model()
    for strategy in ("fsdp2", "ddp"):
        assert parallelize_model(model, info, DistributedConfig(strategy=strategy)) is model
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())


def test_single_process_state():
    state = build_parallel_state(DistributedConfig(), CPU)
    assert (state.dp_size, state.dp_rank, state.tp_size, state.dp_cp_size, state.mesh, state.dp_group) == (
        1,
        0,
        1,
        1,
        None,
        None,
    )
    value = torch.tensor([3.0])
    assert state.all_reduce_dp(value) is value and value.item() == 3.0
    batch = training_batch(2)
    with context_parallel_batch(state, batch) as local:
        assert local is batch  # cp_size 1: unchanged
    optimizer = torch.optim.SGD(tiny_model().parameters(), lr=0.1)
    assert shard_optimizer(optimizer, DistributedConfig()) is optimizer


def test_activation_checkpointing_same_gradients():
    plain, ckpt = tiny_model(), tiny_model()
    parallelize_model(ckpt, CPU, DistributedConfig(activation_checkpointing=True))
    assert any(getattr(m, "gradient_checkpointing", False) for m in ckpt.modules())
    batch = training_batch(2)
    for model in (plain, ckpt):
        model.train()
        with no_sync(model):  # a plain module: no-op
            model(input_ids=batch["input_ids"], labels=batch["input_ids"], use_cache=False).loss.backward()
    for a, b in zip(plain.parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_clip_grad_norm_matches_torch(norm_type):
    ours, reference = tiny_model(), tiny_model()
    batch = training_batch(2)
    for model in (ours, reference):
        model(input_ids=batch["input_ids"], labels=batch["input_ids"], use_cache=False).loss.backward()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.1, norm_type=norm_type).item()
    total = clip_grad_norm_(ours.parameters(), 0.1, norm_type=norm_type)
    assert isinstance(total, float) and total == pytest.approx(expected, rel=1e-6)
    assert total > 0.1  # so clipping happened: the gradients must now be equal to torch's clipped ones
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-5)
    assert clip_grad_norm_([torch.zeros(2, requires_grad=True)], 1.0) == 0.0  # no gradients at all


@pytest.mark.parametrize("model_type", ["llama", "gemma", "gemma3_text"])
def test_meta_model_is_loaded_with_its_rebuilt_buffers(tmp_path: Path, model_type: str):
    reference = tiny_model(model_type)
    reference.save_pretrained(tmp_path)
    model = meta_model(tmp_path, model_type)
    assert parallelize_model(model, CPU, DistributedConfig()) is model
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied after to_empty
    for (name, buffer), expected in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(buffer, expected, atol=0, rtol=0, msg=name)
    torch.testing.assert_close(logits_of(model), logits_of(reference), atol=0, rtol=0)


def test_meta_loading_errors(tmp_path: Path):
    with pytest.raises(DistributedError, match=r"has no model.safetensors or model.safetensors.index.json"):
        load_model_weights_sharded(meta_model(tmp_path))
    reference = tiny_model()
    state = {k: v for k, v in reference.state_dict().items() if k not in ("lm_head.weight", "model.norm.weight")}
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(DistributedError, match=r"the checkpoint has no tensor for model.norm.weight \(1 missing\)"):
        load_model_weights_sharded(meta_model(tmp_path))
    state["model.norm.weight"] = torch.ones(32)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(
        DistributedError, match=r"tensor model.norm.weight has shape \(32,\), the model expects \(64,\)"
    ):
        load_model_weights_sharded(meta_model(tmp_path))


def test_unknown_non_persistent_buffers_are_refused(tmp_path: Path):
    model = meta_model(tmp_path)
    model.model.layers[0].mlp.register_buffer("cache", torch.zeros(4, device="meta"), persistent=False)
    with pytest.raises(DistributedError, match=r"LlamaMLP \(model.layers.0.mlp\) has non-persistent buffers cache"):
        load_model_weights_sharded(model, "cpu", tmp_path)


def test_transformers_tp_plans_are_translated():
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    from automodel.components.distributed._tp_plans import hf_plan

    model = tiny_model("olmo2")
    plan = hf_plan(model)
    q_proj, o_proj = plan["model.layers.*.self_attn.q_proj"], plan["model.layers.*.self_attn.o_proj"]
    # colwise_gather_output / rowwise_split_input: whole q for Olmo2's q_norm, then a split before o_proj.
    assert isinstance(q_proj, ColwiseParallel) and q_proj.output_layouts == (Replicate(),)
    assert isinstance(o_proj, RowwiseParallel) and o_proj.input_layouts == (Replicate(),)
    assert isinstance(plan["lm_head"], ColwiseParallel)
    model.config.base_model_tp_plan = {"layers.*.mlp.experts": "grouped_gemm"}
    with pytest.raises(DistributedError, match=r"uses style 'grouped_gemm' for 'model.layers.\*.mlp.experts'"):
        hf_plan(model)

"""Run under torchrun (2 processes, gloo) by the tests: `python -m torch.distributed.run ... _worker.py SCENARIO OUT`.

Rank 0 writes the results under OUT; the tests compare them with single-process runs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from automodel.components.distributed import (
    DistributedConfig,
    ParallelState,
    build_parallel_state,
    clip_grad_norm_,
    destroy_distributed,
    initialize_distributed,
    no_sync,
    parallelize_model,
)
from automodel.components.distributed.tests._tiny import sum_loss, tiny_model, training_batch

NUM_STEPS = 5
MAX_NORM = 1.0
LR = 1e-3
PARITY_MODES = {
    "fsdp2": {},
    "hsdp": {"dp_replicate_size": 2},
    "ddp": {"strategy": "ddp"},
    "tp": {"tp_size": 2},
    "tp_sp": {"tp_size": 2, "sequence_parallel": True},
}
# 2-D meshes need 4 processes (slower on 2 cores, so a separate launch): FSDP2 shards the TP DTensors.
PARITY_MODES_4_RANKS = {
    "fsdp2_x_tp": {"tp_size": 2},
    "hsdp_x_tp_sp": {"tp_size": 2, "dp_replicate_size": 2, "sequence_parallel": True},
}
OUR_PLAN_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text")
HF_PLAN_FAMILIES = ("olmo2", "starcoder2")


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def train(model: torch.nn.Module, train_model: torch.nn.Module, state: ParallelState) -> dict:
    """5 AdamW steps on the global batch; this rank takes its data-parallel slice, in 2 micro-batches."""
    batch = training_batch()
    per_rank = batch["input_ids"].shape[0] // state.dp_size
    mine = {k: v[state.dp_rank * per_rank : (state.dp_rank + 1) * per_rank] for k, v in batch.items()}
    micro = [{k: v[i::2] for k, v in mine.items()} for i in range(2)]
    num_label_tokens = int((batch["labels"] != -100).sum())
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    losses, norms = [], []
    for _ in range(NUM_STEPS):
        total = torch.zeros(())
        for i, mb in enumerate(micro):
            sync = no_sync(train_model) if i == 0 else torch.enable_grad()
            with sync:
                logits = train_model(
                    input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], use_cache=False
                ).logits
                # Normalised by the global token count, times dp_cp_size because DDP / FSDP2 average gradients.
                loss = sum_loss(logits, mb["labels"]) / num_label_tokens
                (loss * state.dp_cp_size).backward()
            total += loss.detach()
        norms.append(clip_grad_norm_(model.parameters(), MAX_NORM))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(state.all_reduce_dp(total).item())
    return {"losses": losses, "grad_norms": norms}


def parity(out: Path) -> None:
    info = initialize_distributed("nccl", timeout_minutes=2)  # no CUDA here: falls back to gloo with a warning
    modes = PARITY_MODES if info.world_size == 2 else PARITY_MODES_4_RANKS
    for mode, kwargs in modes.items():
        config = DistributedConfig(**kwargs)
        state = build_parallel_state(config, info)
        model = tiny_model()
        train_model = parallelize_model(model, info, config, state=state)
        result = train(model, train_model, state)
        result["state_dict"] = full_state(model)
        result["wrapper"] = type(train_model).__name__
        result["param_types"] = sorted({type(p).__name__ for p in model.parameters()})
        result["tied"] = model.lm_head.weight is model.model.embed_tokens.weight
        if info.rank == 0:
            torch.save(result, out / f"{mode}.pt")
    destroy_distributed()


def logits_of(model: torch.nn.Module) -> torch.Tensor:
    batch = training_batch(num_samples=2, seq_len=16, seed=3)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


def tp_families(out: Path) -> None:
    """Forward logits of every family under TP=2, with and without sequence parallelism."""
    info = initialize_distributed("gloo", timeout_minutes=2)
    state = build_parallel_state(DistributedConfig(tp_size=2), info)
    results = {}
    cases = [(t, sp) for t in OUR_PLAN_FAMILIES for sp in (False, True)] + [(t, False) for t in HF_PLAN_FAMILIES]
    for model_type, sequence_parallel in cases:
        config = DistributedConfig(tp_size=2, sequence_parallel=sequence_parallel)
        model = parallelize_model(tiny_model(model_type), info, config, state=state)
        num_dtensors = sum(isinstance(p, DTensor) for p in model.parameters())
        results[(model_type, sequence_parallel)] = {"logits": logits_of(model), "num_dtensors": num_dtensors}
    if info.rank == 0:
        torch.save(results, out / "tp_families.pt")
    destroy_distributed()


def meta_load(out: Path, single_file: str, sharded: str) -> None:
    """Models built on the meta device, parallelised, then loaded shard by shard from safetensors."""
    from transformers import AutoConfig, AutoModelForCausalLM

    info = initialize_distributed("gloo", timeout_minutes=2)
    results = {}
    cases = {"fsdp2": ({}, sharded), "tp": ({"tp_size": 2}, single_file), "ddp": ({"strategy": "ddp"}, single_file)}
    for name, (kwargs, folder) in cases.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), attn_implementation="sdpa")
        config = DistributedConfig(**kwargs)
        train_model = parallelize_model(model, info, config, weights_path=folder)
        local = {n: p.to_local().numel() if hasattr(p, "to_local") else p.numel() for n, p in model.named_parameters()}
        results[name] = {
            "logits": logits_of(train_model),
            "local_numel": sum(local.values()),
            "full_numel": sum(p.numel() for p in model.parameters()),
            "on_meta": any(t.is_meta for t in [*model.parameters(), *model.buffers()]),
            "inv_freq": model.model.rotary_emb.inv_freq.clone(),
        }
    if info.rank == 0:
        torch.save(results, out / "meta_load.pt")


def reshard_pitfall(out: Path) -> None:
    """A no-grad forward before the optimizer is built: our FSDP2 path still updates the root parameters; plain
    fully_shard (the control) silently does not."""
    from torch.distributed.fsdp import fully_shard

    info = initialize_distributed("gloo", timeout_minutes=2)
    config = DistributedConfig()
    state = build_parallel_state(config, info)
    results = {}
    for name in ("ours", "plain_fully_shard"):
        model = tiny_model()
        if name == "ours":
            parallelize_model(model, info, config, state=state)
        else:
            for layer in model.model.layers:
                fully_shard(layer, mesh=state.submesh("dp_shard_cp"))
            fully_shard(model, mesh=state.submesh("dp_shard_cp"))
        before = full_state(model)
        logits_of(model)  # e.g. a validation pass before training starts
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        batch = training_batch()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        sum_loss(logits, batch["labels"]).backward()
        optimizer.step()
        after = full_state(model)
        results[name] = {key: not torch.equal(before[key], after[key]) for key in before}
    if info.rank == 0:
        torch.save(results, out / "reshard_pitfall.pt")


def fsdp2_loading_and_eval(out: Path, single_file: str, sharded: str) -> None:
    """Both FSDP2-state scenarios in one launch (torchrun start-up dominates their run time)."""
    meta_load(out, single_file, sharded)
    reshard_pitfall(out)
    destroy_distributed()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    scenario, out_dir, *args = sys.argv[1:]
    scenarios = {"parity": parity, "tp_families": tp_families, "fsdp2_loading_and_eval": fsdp2_loading_and_eval}
    scenarios[scenario](Path(out_dir), *args)

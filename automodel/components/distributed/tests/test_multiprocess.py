"""Two gloo processes under torchrun (see _worker.py) compared with one plain-PyTorch process.

Tolerances (fp32): losses and gradient norms within 1e-5; weights after 5 AdamW steps within 5e-5 (Adam divides by
sqrt(v), which turns reduction-order noise of ~1e-7 in tiny gradients into up to ~1e-5 in the update); logits of a
single forward within 1e-5.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from automodel.components.distributed.tests._tiny import sum_loss, tiny_model, training_batch
from automodel.components.distributed.tests._worker import (
    HF_PLAN_FAMILIES,
    LR,
    MAX_NORM,
    NUM_STEPS,
    OUR_PLAN_FAMILIES,
    PARITY_MODES,
    PARITY_MODES_4_RANKS,
    logits_of,
)

WORKER = Path(__file__).with_name("_worker.py")


def torchrun(scenario: str, out: Path, *args: str, nproc: int = 2) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(WORKER)]
    proc = subprocess.run([*cmd, scenario, str(out), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stderr


@pytest.fixture(scope="module")
def single_process() -> dict:
    """The same 5 steps in one process with torch's own clipping: the ground truth."""
    model = tiny_model()
    batch = training_batch()
    num_label_tokens = int((batch["labels"] != -100).sum())
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    losses, norms = [], []
    for _ in range(NUM_STEPS):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        loss = sum_loss(logits, batch["labels"]) / num_label_tokens
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM).item())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert norms[0] > MAX_NORM > norms[-1], "the run should clip some steps and not others"
    return {"losses": losses, "grad_norms": norms, "state_dict": model.state_dict()}


@pytest.fixture(scope="module")
def parity_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("parity")
    stderr = torchrun("parity", out)
    assert "using 'gloo' instead" in stderr  # nccl requested without CUDA
    return {mode: torch.load(out / f"{mode}.pt") for mode in PARITY_MODES}


@pytest.fixture(scope="module")
def parity_runs_4_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("parity_4")
    torchrun("parity", out, nproc=4)
    return {mode: torch.load(out / f"{mode}.pt") for mode in PARITY_MODES_4_RANKS}


@pytest.fixture(scope="module")
def fsdp2_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, torch.nn.Module]:
    """Meta-device loading (from a single-file and a sharded checkpoint) and the no-grad-forward trap."""
    out = tmp_path_factory.mktemp("fsdp2")
    model = tiny_model()
    model.save_pretrained(out / "single")
    model.save_pretrained(out / "sharded", max_shard_size="60KB")
    assert (out / "sharded" / "model.safetensors.index.json").is_file()
    torchrun("fsdp2_loading_and_eval", out, str(out / "single"), str(out / "sharded"))
    return torch.load(out / "meta_load.pt"), torch.load(out / "reshard_pitfall.pt"), model


@pytest.mark.parametrize(
    ("mode", "wrapper", "param_types"),
    [
        ("fsdp2", "FSDPLlamaForCausalLM", ["DTensor"]),
        ("hsdp", "FSDPLlamaForCausalLM", ["DTensor"]),
        ("ddp", "DistributedDataParallel", ["Parameter"]),
        ("tp", "LlamaForCausalLM", ["DTensor", "Parameter"]),  # norms stay plain without sequence parallelism
        ("tp_sp", "LlamaForCausalLM", ["DTensor"]),
    ],
)
def test_two_processes_match_one_process(parity_runs, single_process, mode, wrapper, param_types):
    check_parity(parity_runs[mode], single_process, wrapper, param_types)


@pytest.mark.parametrize("mode", ["fsdp2_x_tp", "hsdp_x_tp_sp"])
def test_four_processes_on_2d_meshes_match_one_process(parity_runs_4_ranks, single_process, mode):
    check_parity(parity_runs_4_ranks[mode], single_process, "FSDPLlamaForCausalLM", ["DTensor"])


def check_parity(run: dict, single_process: dict, wrapper: str, param_types: list[str]) -> None:
    assert run["wrapper"] == wrapper and run["param_types"] == param_types
    assert run["tied"], "lm_head and the embeddings must stay one parameter"
    torch.testing.assert_close(run["losses"], single_process["losses"], atol=1e-5, rtol=0)
    torch.testing.assert_close(run["grad_norms"], single_process["grad_norms"], atol=1e-5, rtol=0)
    expected = single_process["state_dict"]
    assert set(run["state_dict"]) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(run["state_dict"][key], value, atol=5e-5, rtol=0, msg=key)


def test_tensor_parallel_plans_for_every_family(tmp_path: Path):
    torchrun("tp_families", tmp_path)
    results = torch.load(tmp_path / "tp_families.pt")
    expected_cases = {(t, sp) for t in OUR_PLAN_FAMILIES for sp in (False, True)} | {
        (t, False) for t in HF_PLAN_FAMILIES
    }
    assert set(results) == expected_cases
    for (model_type, sequence_parallel), result in results.items():
        assert result["num_dtensors"] >= 7 * 2, (model_type, "projections must be sharded")
        expected = logits_of(tiny_model(model_type))
        torch.testing.assert_close(
            result["logits"], expected, atol=1e-5, rtol=0, msg=f"{model_type} sp={sequence_parallel}"
        )


def test_meta_init_loads_only_local_shards(fsdp2_runs):
    results, _, model = fsdp2_runs
    expected = logits_of(model)
    for name, result in results.items():
        assert not result["on_meta"], name
        torch.testing.assert_close(result["logits"], expected, atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(result["inv_freq"], model.model.rotary_emb.inv_freq, atol=0, rtol=0)
    # FSDP2 and TP keep about half of the weights on each of the 2 ranks; DDP keeps all of them.
    assert results["fsdp2"]["local_numel"] == results["fsdp2"]["full_numel"] // 2
    assert results["tp"]["local_numel"] < 0.6 * results["tp"]["full_numel"]
    assert results["ddp"]["local_numel"] == results["ddp"]["full_numel"]


def test_no_grad_forward_before_the_optimizer_still_updates_root_parameters(fsdp2_runs):
    _, results, _ = fsdp2_runs
    root = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    # The control shows the trap is real: plain fully_shard leaves the root parameters untouched...
    assert [key for key, changed in results["plain_fully_shard"].items() if not changed] == root
    # ...and our FSDP2 path updates every parameter, the root and the last layer (kept unsharded) included.
    assert all(results["ours"].values()), [key for key, changed in results["ours"].items() if not changed]

"""The recipe's per-token losses equal an independent plain-PyTorch reference for random data configurations
(packing on/off, collate_fn absent / named / a section / the reference system's name, local batch 1..8) on 1 and 2
processes, and validation loss is the same for any number of processes (see _parity_worker.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_parity_worker.py")
REPO = Path(__file__).resolve().parents[4]


def _run(command: list[str], out: Path) -> list[dict]:
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def results(tiny_model_dir: Path, tmp_path_factory) -> dict[int, list[dict]]:
    tmp = tmp_path_factory.mktemp("parity")
    one = _run([sys.executable, str(WORKER), str(tiny_model_dir), str(tmp / "one.jsonl"), "7", "12"], tmp / "one.jsonl")
    two = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29517",
            str(WORKER),
            str(tiny_model_dir),
            str(tmp / "two.jsonl"),
            "11",
            "8",
        ],
        tmp / "two.jsonl",
    )
    return {1: one, 2: two}


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
def test_training_loss_equals_the_per_document_reference(results, world_size):
    train = [r for r in results[world_size] if r["check"] == "train"]
    assert len(train) >= 8
    assert any(r["case"]["packing"] for r in train) and any(r["case"]["collate"] for r in train)
    for r in train:
        # fp32 throughout; a packed batch whose documents attended to each other is off by ~1e-3 (issue #12)
        assert r["ours"] == pytest.approx(r["reference"], rel=2e-5, abs=2e-5), r


@pytest.mark.slow
def test_validation_loss_is_the_same_on_any_number_of_processes(results):
    for world_size in (1, 2):
        for r in (r for r in results[world_size] if r["check"] == "validation"):
            assert r["tokens"] == r["reference_tokens"], r  # every sample counted once, none twice
            assert r["ours"] == pytest.approx(r["reference"], rel=2e-5), r
    one = {r["case"]["packing"]: r["ours"] for r in results[1] if r["check"] == "validation"}
    two = {r["case"]["packing"]: r["ours"] for r in results[2] if r["check"] == "validation"}
    assert one == pytest.approx(two, rel=1e-6)

"""Optimizer benchmark: SmolLM2-135M fine-tuning on the example data, one real CLI run per optimizer.

Each variant runs ``python -m automodel llm finetune -c <example with its optimizer section swapped>`` for the same
number of steps, with checkpointing off, and is read back from its ``metrics.jsonl``: train loss over the last
steps, validation loss after training, tokens/s and step time (median over steps, the first one excluded as
warm-up). Same data order, seed, LR schedule and batch for every variant.

    automodel prepare smollm2                       # once: models/SmolLM2-135M-Instruct
    python benchmarks/optimizers.py                 # the example's 40 steps, all variants (run on a quiet machine)
    python benchmarks/optimizers.py --max-steps 2 --only adamw_foreach muon    # smoke check

Needs nothing beyond the project itself; prints a table and a final ratio line, and writes ``results.json`` and
``results.md`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "examples/llm/smollm2_135m_squad.yaml"

# The example's AdamW (lr 1e-4, betas 0.9/0.95, weight decay 0.01) in torch's three implementations, then Muon and
# SOAP at the same lr. Muon uses the AdamW-matched update size (adjust_lr: match_rms_adamw, Moonlight), which is what
# makes an AdamW lr meaningful for it; its embeddings, head and norms run AdamW at the same lr.
ADAMW = {"_target_": "torch.optim.AdamW", "lr": 1e-4, "betas": [0.9, 0.95], "weight_decay": 0.01}
VARIANTS: dict[str, dict] = {
    "adamw_forloop": {**ADAMW, "foreach": False, "fused": False},
    "adamw_foreach": {**ADAMW, "foreach": True, "fused": False},
    "adamw_fused": {**ADAMW, "fused": True},
    "muon": {
        "_target_": "automodel.components.optim.build_optimizer",
        "name": "muon",
        "lr": 1e-4,
        "weight_decay": 0.01,
        "adjust_lr": "match_rms_adamw",
        "adamw_lr": 1e-4,
        "adamw_betas": [0.9, 0.95],
    },
    "soap": {
        "_target_": "automodel.components.optim.build_optimizer",
        "name": "soap",
        "lr": 1e-4,
        "betas": [0.9, 0.95],
        "weight_decay": 0.01,
        "precondition_frequency": 10,
    },
}
BASELINE = "adamw_forloop"


def run_variant(name: str, optimizer: dict, args: argparse.Namespace) -> dict:
    """One CLI run; returns its summary (or the error tail when the run failed)."""
    run_dir = args.out_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)  # the JSONL logger appends; a rerun must not mix with an old one
    config = yaml.safe_load(args.config.read_text())
    config["optimizer"] = copy.deepcopy(optimizer)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    warmup = min(config.get("lr_scheduler", {}).get("lr_warmup_steps", 0), args.max_steps - 1)
    command = [
        sys.executable,
        "-m",
        "automodel",
        "llm",
        "finetune",
        "-c",
        str(config_path),
        "--step_scheduler.max_steps",
        str(args.max_steps),
        "--lr_scheduler.lr_warmup_steps",
        str(warmup),
        "--checkpoint.enabled",
        "false",
        "--logging.log_dir",
        str(run_dir),
        "--logging.progress_bar",
        "false",
        *args.overrides,
    ]
    print(f"[{name}] {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with open(run_dir / "stdout.log", "w") as log:
        # Paths in the example config are relative to the repository root.
        returncode = subprocess.call(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wall_s = time.perf_counter() - start
    if returncode != 0:
        tail = (run_dir / "stdout.log").read_text().splitlines()[-15:]
        return {"name": name, "error": f"exit {returncode}", "log_tail": tail, "wall_s": wall_s}

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    timed = train[1:] or train  # the first step pays for allocation and lazy init
    last = train[-args.loss_window :]
    return {
        "name": name,
        "steps": len(train),
        "train_loss_last": sum(r["loss"] for r in last) / len(last),
        "val_loss_before": val[0]["loss"] if val else None,
        "val_loss_after": val[-1]["loss"] if len(val) > 1 else None,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
        "step_time_s": statistics.median(r["step_time_s"] for r in timed),
        "peak_memory_gib": max(r.get("peak_memory_gib") or 0.0 for r in train),
        "wall_s": wall_s,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[dict], loss_window: int) -> str:
    header = (
        f"| optimizer | steps | train loss (last {loss_window}) | val loss before -> after | tokens/s | "
        "step time (s) | peak mem (GiB) | wall (s) |"
    )
    lines = [header, "|" + "---|" * 8]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} |  |  |  |  |  |  |")
            continue
        lines.append(
            f"| {r['name']} | {r['steps']} | {_fmt(r['train_loss_last'], '.4f')} | "
            f"{_fmt(r['val_loss_before'], '.4f')} -> {_fmt(r['val_loss_after'], '.4f')} | "
            f"{_fmt(r['tokens_per_s'], '.0f')} | {_fmt(r['step_time_s'], '.3f')} | "
            f"{_fmt(r['peak_memory_gib'], '.2f')} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def ratio_line(results: list[dict]) -> str:
    ok = {r["name"]: r for r in results if "error" not in r}
    base = ok.get(BASELINE) or next(iter(ok.values()), None)
    if base is None:
        return "RATIO: no run succeeded"
    parts = []
    for name, r in ok.items():
        if r is base:
            continue
        speed = r["tokens_per_s"] / base["tokens_per_s"]
        loss = (
            f"{r['val_loss_after'] / base['val_loss_after']:.3f}x"
            if r["val_loss_after"] and base["val_loss_after"]
            else "-"
        )
        parts.append(f"{name} tokens/s {speed:.2f}x val loss {loss}")
    return f"RATIO vs {base['name']}: " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs/bench_optimizers")
    parser.add_argument("--loss-window", type=int, default=5, help="train loss is averaged over this many last steps")
    parser.add_argument(
        "overrides", nargs="*", help="extra CLI overrides for every run, after '--' (e.g. -- --model.torch_dtype=bf16)"
    )
    args = parser.parse_args()
    if args.max_steps < 2:
        parser.error("--max-steps must be >= 2 (the first step is excluded from the timings)")
    args.out_dir = args.out_dir.resolve()

    results = [run_variant(name, VARIANTS[name], args) for name in args.only]
    for r in results:
        if "error" in r:
            print(f"[{r['name']}] FAILED ({r['error']}):\n  " + "\n  ".join(r["log_tail"]), flush=True)
    text = table(results, args.loss_window)
    ratios = ratio_line(results)
    print(text)
    print(ratios)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (args.out_dir / "results.md").write_text(text + "\n\n" + ratios + "\n")
    sys.exit(1 if any("error" in r for r in results) else 0)


if __name__ == "__main__":
    main()

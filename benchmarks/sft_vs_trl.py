"""Side-by-side training throughput and memory: automodel (full fine-tune, LoRA) vs TRL's SFTTrainer (+ peft LoRA).

    python benchmarks/sft_vs_trl.py                                   # the LoRA comparison (issue 3)
    python benchmarks/sft_vs_trl.py --runs ours-full,trl-full --steps 30

Same model (SmolLM2-135M-Instruct, `automodel prepare smollm2`), same data (the shipped SQuAD-format QA data, or
`--data` with any file in that format, e.g. GSM8K converted), same chat formatting and loss on the answer only, same
batch, max length, learning rate, bf16 autocast over fp32 weights, same number of optimizer steps. Each run is a
separate process (so each peak RSS is its own), one after the other on the same machine. The first `--warmup` steps
are not timed. tokens/s counts non-padding tokens. Prints a table and the ratios; `--json` writes the raw results.
Needs `pip install trl` for the trl-* runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = ("ours-full", "ours-lora", "trl-lora", "trl-full")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def load_rows(path: Path, limit: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()[:limit]]
    return [{"context": r["context"], "question": r["question"], "answer": r["answers"]["text"][0]} for r in rows]


# --- automodel -----------------------------------------------------------------------------------------------------
def run_ours(args: argparse.Namespace, lora: bool) -> dict:
    from automodel.components.config import apply_overrides, load_config
    from automodel.recipes.llm import finetune

    log_dir = Path(tempfile.mkdtemp(prefix="bench_ours_"))
    cfg = load_config(REPO / "examples/llm/smollm2_135m_squad.yaml")
    del cfg["validation_dataset"], cfg["validation_dataloader"]
    if not lora:
        cfg.pop("peft", None)
    overrides = {
        "model.pretrained_model_name_or_path": str(args.model),
        "dataset.dataset_name": str(args.data),
        "dataset.split": f"train[:{args.rows}]",
        "dataset.seq_length": args.max_length,
        "step_scheduler.global_batch_size": args.batch,
        "step_scheduler.local_batch_size": args.batch,
        "step_scheduler.max_steps": args.warmup + args.steps,
        "step_scheduler.val_every_steps": None,
        "step_scheduler.ckpt_every_steps": None,
        "checkpoint.enabled": False,
        "logging.log_dir": str(log_dir),
        "logging.progress_bar": False,
        "optimizer.lr": args.lr,
        "lr_scheduler.lr_decay_style": "constant",
        "lr_scheduler.lr_warmup_steps": 0,
        "lr_scheduler.min_lr": 0.0,
    }
    if lora:
        overrides.update({"peft.target_modules": LORA_TARGETS, "peft.dim": 8, "peft.alpha": 32, "peft.dropout": 0.0})
    apply_overrides(cfg, list(overrides.items()))
    summary = finetune.main(cfg)
    records = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["split"] == "train" and r["step"] > args.warmup]
    tokens = sum(r["tokens_per_s"] * r["step_time_s"] for r in timed)
    seconds = sum(r["step_time_s"] for r in timed)
    losses = summary["train_losses"]
    return {"tokens": tokens, "seconds": seconds, "final_loss": losses[max(losses)]}


# --- TRL -------------------------------------------------------------------------------------------------------------
def run_trl(args: argparse.Namespace, lora: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    rows = load_rows(args.data, args.rows)
    # The conversational prompt-completion format: TRL applies the chat template and trains on the completion only,
    # which is exactly what automodel's SQuAD formatting does with a chat template.
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"Context: {r['context']}\nQuestion: {r['question']}"}],
                "completion": [{"role": "assistant", "content": r["answer"]}],
            }
            for r in rows
        ]
    )
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=8, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
        )
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_trl_"),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.01,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        bf16=True,
        use_cpu=True,
        max_length=args.max_length,
        packing=False,
        completion_only_loss=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        seed=1234,
        disable_tqdm=True,
    )

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.ends: list[float] = []
            self.losses: list[float] = []

        def on_step_begin(self, *_args, **_kwargs):
            self.starts.append(time.perf_counter())

        def on_step_end(self, *_args, **_kwargs):
            self.ends.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **_kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    timer = Timer()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    counts: list[int] = []
    collate = trainer.data_collator

    def counting_collator(features):  # non-padding tokens of each batch, as automodel counts them
        batch = collate(features)
        counts.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    steps = range(args.warmup, args.warmup + args.steps)
    return {
        "tokens": float(sum(counts[i] for i in steps)),
        "seconds": sum(timer.ends[i] - timer.starts[i] for i in steps),
        "final_loss": timer.losses[-1] if timer.losses else float("nan"),
    }


# --- driver ----------------------------------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    kind, method = args.child.split("-")
    result = (run_ours if kind == "ours" else run_trl)(args, lora=method == "lora")
    result["peak_rss_gib"] = peak_rss_gib()
    Path(args.out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="ours-full,ours-lora,trl-lora", help=f"comma-separated, from {RUNS}")
    parser.add_argument("--model", type=Path, default=REPO / "models/SmolLM2-135M-Instruct")
    parser.add_argument("--data", type=Path, default=REPO / "examples/llm/data/facts_squad/train.jsonl")
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if not (args.model / "config.json").is_file():
        sys.exit(f"error: no model in {args.model}; run `automodel prepare smollm2` first")
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if unknown := [r for r in runs if r not in RUNS]:
        sys.exit(f"error: unknown run(s) {unknown}; choose from {RUNS}")

    results = {}
    for name in runs:
        out = Path(tempfile.mkstemp(suffix=".json")[1])
        command = [sys.executable, __file__, "--child", name, "--out", str(out)]
        command += [
            f"--{k.replace('_', '-')}={v}"
            for k, v in vars(args).items()
            if k not in ("runs", "json", "child", "out") and v is not None
        ]
        print(f"running {name} ...", flush=True)
        started = time.time()
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
        results[name] = json.loads(out.read_text())
        results[name]["wall_s"] = time.time() - started

    print()
    print(
        f"SmolLM2-135M-Instruct, batch {args.batch}, max length {args.max_length}, bf16 autocast, "
        f"{args.steps} timed steps after {args.warmup}, {args.threads} threads"
    )
    print("| run | tokens/s | peak RSS (GiB) | final train loss |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['tokens'] / r['seconds']:.0f} | {r['peak_rss_gib']:.2f} | {r['final_loss']:.4f} |")
    speed = {name: r["tokens"] / r["seconds"] for name, r in results.items()}
    ratios = []
    for a, b in (("ours-lora", "ours-full"), ("ours-lora", "trl-lora"), ("ours-full", "trl-full")):
        if a in speed and b in speed:
            ratios.append(
                f"{a}/{b} tokens/s = {speed[a] / speed[b]:.2f}x, "
                f"peak RSS = {results[a]['peak_rss_gib'] / results[b]['peak_rss_gib']:.2f}x"
            )
    print()
    for line in ratios:
        print("RATIO", line)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}))


if __name__ == "__main__":
    main()

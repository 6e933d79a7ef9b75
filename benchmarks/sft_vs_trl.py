"""Side-by-side training throughput, memory and loss: automodel vs TRL's SFTTrainer, on the same work.

    python benchmarks/sft_vs_trl.py                        # issue 5: full SFT, packing off then on, + ours compiled
    python benchmarks/sft_vs_trl.py --runs ours-full,ours-lora,trl-lora --packing off      # issue 3: LoRA

Same model (SmolLM2-135M-Instruct, `automodel prepare smollm2`), same data (GSM8K question/answer pairs from
`--data`, default `../shared/data/gsm8k/train.jsonl` when present, else the shipped SQuAD-format QA data), same chat
formatting with the loss on the answer only, same rows in the same order (no shuffling in either), same batch,
max length, learning rate (constant), AdamW, bf16 autocast over fp32 weights and the same number of optimizer steps.
With packing on, both pack samples into rows of `--max-length` tokens (each with its own algorithm).

Each run is a separate process (so each peak RSS is its own), one after the other, in one invocation. The first
`--warmup` steps are not timed; tokens/s counts non-padding tokens; "final train loss" is the mean training loss of the
last 5 steps, and "held-out loss" is the trained model's loss on the answers of the `--eval-rows` pairs that follow
the training rows, computed by the same function for every run (one sample at a time, fp32, no packing). With packing,
the two packers put different samples in each step, so only the held-out loss compares what the runs learned; the
ratio lines use it. automodel runs use FusedLinearCrossEntropy and fused AdamW (its defaults for speed); TRL runs use
TRL's defaults for the same settings. Prints a table and the ratio lines; `--json` also writes the raw numbers.
Needs `pip install -e ".[bench]"` (TRL 1.16 and peft) for the trl-* runs.
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
# ours-full[-compile][-ac]: -compile = torch.compile of each layer, -ac = activation checkpointing (memory)
RUNS = ("ours-full", "ours-full-compile", "ours-full-compile-ac", "ours-full-ac", "ours-lora", "trl-full", "trl-lora")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
GSM8K = REPO.parent / "shared/data/gsm8k/train.jsonl"
SQUAD = REPO / "examples/llm/data/facts_squad/train.jsonl"
LAST = 5  # final loss = mean of the last LAST steps


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def load_pairs(path: Path, limit: int) -> list[tuple[str, str]]:
    """(prompt, answer) pairs: GSM8K's question/answer, or a SQuAD row's context + question / first answer."""
    pairs = []
    for line in path.read_text().splitlines()[:limit]:
        row = json.loads(line)
        if "answers" in row:
            pairs.append((f"Context: {row['context']}\nQuestion: {row['question']}", row["answers"]["text"][0]))
        else:
            pairs.append((row["question"], row["answer"]))
    return pairs


def write_pairs(pairs: list[tuple[str, str]]) -> Path:
    path = Path(tempfile.mkstemp(suffix=".jsonl")[1])
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in pairs))
    return path


# --- automodel -----------------------------------------------------------------------------------------------------
def run_ours(args: argparse.Namespace, lora: bool, compile_model: bool, checkpointing: bool) -> dict:
    from automodel.components.config import apply_overrides, load_config
    from automodel.recipes.llm import finetune

    log_dir = Path(tempfile.mkdtemp(prefix="bench_ours_"))
    cfg = load_config(REPO / "examples/llm/smollm2_135m_squad.yaml")
    for key in ("validation_dataset", "validation_dataloader", "peft"):
        cfg.pop(key, None)
    cfg["dataset"] = {
        "_target_": "automodel.components.datasets.llm.column_mapped_text_instruction_dataset."
        "ColumnMappedTextInstructionDataset",
        "path_or_dataset_id": str(write_pairs(load_pairs(args.data, args.rows))),
        "column_mapping": {"question": "prompt", "answer": "answer"},
        "seq_length": args.max_length,
        "on_overflow": "truncate",
    }
    overrides: dict = {
        "model.pretrained_model_name_or_path": str(args.model),
        "step_scheduler.global_batch_size": args.batch,
        "step_scheduler.local_batch_size": args.batch,
        "step_scheduler.max_steps": args.warmup + args.steps,
        "step_scheduler.val_every_steps": None,
        "step_scheduler.ckpt_every_steps": None,
        "dataloader.shuffle": False,
        "checkpoint.enabled": False,
        "logging.log_dir": str(log_dir),
        "logging.progress_bar": False,
        "optimizer.lr": args.lr,
        "optimizer.fused": True,
        "lr_scheduler.lr_decay_style": "constant",
        "lr_scheduler.lr_warmup_steps": 0,
        "lr_scheduler.min_lr": 0.0,
        "loss_fn._target_": "automodel.components.loss.linear_ce.FusedLinearCrossEntropy",
        "compile.enabled": compile_model,
        "distributed.activation_checkpointing": checkpointing,
    }
    if args.packing == "on":
        overrides["packed_sequence.packed_sequence_size"] = args.max_length
    if lora:
        overrides.update({"peft.target_modules": LORA_TARGETS, "peft.dim": 8, "peft.alpha": 32, "peft.dropout": 0.0})
    apply_overrides(cfg, list(overrides.items()))
    summary = finetune.main(cfg)
    import torch

    with torch.compiler.set_stance("force_eager"):  # the compiled layers would recompile for every eval length
        heldout = heldout_loss(summary["model"], args)
    records = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["split"] == "train" and r["step"] > args.warmup]
    losses = [summary["train_losses"][step] for step in sorted(summary["train_losses"])]
    return {
        "tokens": sum(r["tokens_per_s"] * r["step_time_s"] for r in timed),
        "seconds": sum(r["step_time_s"] for r in timed),
        "losses": losses,
        "heldout_loss": heldout,
    }


def heldout_loss(model, args: argparse.Namespace) -> float:
    """Mean loss per answer token on the `--eval-rows` pairs after the training rows: chat template, loss on the
    assistant turn only (its end-of-turn token included), one sample at a time in fp32."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    pairs = load_pairs(args.data, args.rows + args.eval_rows)[args.rows :]
    assert pairs, f"no held-out rows after the first {args.rows} of {args.data}"
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, answer in pairs:
            user = [{"role": "user", "content": prompt}]
            head = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False)
            full = tokenizer.apply_chat_template(
                [*user, {"role": "assistant", "content": answer}], tokenize=True, return_dict=False
            )
            full = full[: args.max_length]
            assert full[: len(head)] == head, "the chat template must extend the prompt"
            ids = torch.tensor([full])
            labels = torch.tensor(full[1:] + [-100])
            labels[: len(head) - 1] = -100
            logits = model(input_ids=ids, use_cache=False).logits[0].float()
            total += float(F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    return total / count


# --- TRL -------------------------------------------------------------------------------------------------------------
def run_trl(args: argparse.Namespace, lora: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    # The conversational prompt-completion format: TRL applies the chat template and trains on the completion only,
    # as automodel's column-mapped instruction data does with a chat template.
    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": a}]}
            for p, a in load_pairs(args.data, args.rows)
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
        packing=args.packing == "on",
        completion_only_loss=True,
        train_sampling_strategy="sequential",
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
        mask = batch.get("attention_mask")
        counts.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    heldout = heldout_loss(trainer.model, args)
    steps = range(args.warmup, args.warmup + args.steps)
    return {
        "tokens": float(sum(counts[i] for i in steps)),
        "seconds": sum(timer.ends[i] - timer.starts[i] for i in steps),
        "losses": timer.losses,
        "heldout_loss": heldout,
    }


# --- driver ----------------------------------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    kind, method, *extra = args.child.split("-")
    if kind == "ours":
        result = run_ours(args, lora=method == "lora", compile_model="compile" in extra, checkpointing="ac" in extra)
    else:
        result = run_trl(args, lora=method == "lora")
    result["peak_rss_gib"] = peak_rss_gib()
    Path(args.out).write_text(json.dumps(result))


def run_all(args: argparse.Namespace, runs: list[str], packing: str) -> dict:
    results = {}
    for name in runs:
        out = Path(tempfile.mkstemp(suffix=".json")[1])
        command = [sys.executable, __file__, "--child", name, "--out", str(out), "--packing", packing]
        for key in ("model", "data", "rows", "eval_rows", "batch", "max_length", "steps", "warmup", "lr", "threads"):
            command.append(f"--{key.replace('_', '-')}={getattr(args, key)}")
        print(f"running {name} (packing {packing}) ...", flush=True)
        started = time.time()
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
        result = json.loads(out.read_text())
        result["wall_s"] = time.time() - started
        result["tokens_per_s"] = result["tokens"] / result["seconds"]
        result["final_loss"] = sum(result["losses"][-LAST:]) / len(result["losses"][-LAST:])
        results[name] = result
    return results


def report(results: dict, packing: str) -> list[str]:
    print(f"\npacking {packing}")
    print("| run | tokens/s | peak RSS (GiB) | final train loss (mean of last 5 steps) | held-out loss |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['tokens_per_s']:.0f} | {r['peak_rss_gib']:.2f} | {r['final_loss']:.4f} "
            f"| {r['heldout_loss']:.4f} |"
        )
    lines = []
    pairs = [(f"ours-full{v}", "trl-full") for v in ("", "-compile", "-compile-ac", "-ac")]
    for ours, theirs in pairs + [("ours-lora", "trl-lora"), ("ours-lora", "ours-full")]:
        if ours in results and theirs in results:
            a, b = results[ours], results[theirs]
            lines.append(
                f"RATIO packing {packing}: {ours}/{theirs} tokens/s {a['tokens_per_s'] / b['tokens_per_s']:.2f}x, "
                f"peak RSS {a['peak_rss_gib'] / b['peak_rss_gib']:.2f}x, "
                f"held-out loss {a['heldout_loss'] / b['heldout_loss']:.3f}x"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs", default="ours-full,ours-full-compile,ours-full-compile-ac,trl-full", help=f"comma-separated: {RUNS}"
    )
    parser.add_argument("--packing", default="off,on", help="off, on, or off,on (each run with and without)")
    parser.add_argument("--model", type=Path, default=REPO / "models/SmolLM2-135M-Instruct")
    parser.add_argument("--data", type=Path, default=GSM8K if GSM8K.is_file() else SQUAD)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--eval-rows", type=int, default=100, help="held-out pairs after the training rows")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--lr", type=float, default=1e-5)
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

    print(
        f"SmolLM2-135M-Instruct on {args.data.name} ({args.rows} rows, in order), batch {args.batch}, max length "
        f"{args.max_length}, bf16 autocast, AdamW lr {args.lr}, {args.steps} timed steps after {args.warmup}, "
        f"{args.threads} threads"
    )
    everything, ratios = {}, []
    for packing in [p.strip() for p in args.packing.split(",")]:
        everything[packing] = run_all(args, runs, packing)
    for packing, results in everything.items():
        ratios += report(results, packing)
    print()
    for line in ratios:
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": everything}))


if __name__ == "__main__":
    main()

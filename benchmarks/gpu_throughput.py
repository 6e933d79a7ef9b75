"""GPU throughput of the LLM recipe on Llama-shaped models (random init, random tokens): tokens/s/GPU, MFU, memory.

    python benchmarks/gpu_throughput.py                        # both cases below on the visible GPU(s)
    python benchmarks/gpu_throughput.py --cases llama-3.2-1b-sft --steps 30
    torchrun --nproc-per-node 8 benchmarks/gpu_throughput.py --cases llama-3.2-1b-sft     # FSDP2 over 8 GPUs
    python benchmarks/gpu_throughput.py --cases tiny-sft --steps 3 --seq-length 256        # CPU smoke check

Cases: `llama-3.2-1b-sft` (full fine-tune, fp32 master weights, bf16 autocast, fused linear cross-entropy, fused AdamW)
and `llama-3-8b-lora` (LoRA r=8 on every linear layer of a bf16 base, fp32 adapters), both at `--seq-length` 4096 with
every position supervised. Nothing is downloaded: the models are built from their published shapes with random
weights, and the data is random token ids. It runs the real recipe (`automodel.recipes.llm.finetune.main`), so the
numbers include everything a user's run does except data loading from disk. The reference system publishes 12,473
tokens/s/GPU for Llama-3-8B LoRA at sequence length 4096 on one H100, and MFU around 0.47-0.50 for Llama-3.2-1B SFT on
8 H100s. MFU = model FLOPs (6 x matmul parameters + 12 x layers x hidden x sequence length per token) / peak (989
TFLOP/s bf16 for H100/H200; `--peak-flops` to override).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

SHAPES = {
    # https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    # https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json
    "llama-3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        tie_word_embeddings=True,
    ),
}
CASES = {
    "llama-3.2-1b-sft": ("llama-3.2-1b", False),
    "llama-3-8b-lora": ("llama-3-8b", True),
    "tiny-sft": ("tiny", False),  # CPU smoke checks of the two paths
    "tiny-lora": ("tiny", True),
}


def tiny_tokenizer(directory: Path) -> Path:
    """The recipe wants a tokenizer (for padding); random-token data needs nothing more than this."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>").save_pretrained(directory)
    return directory


def config_for(case: str, args: argparse.Namespace, work: Path) -> str:
    import yaml

    shape_name, lora = CASES[case]
    shape = dict(SHAPES[shape_name], model_type="llama", max_position_embeddings=max(8192, args.seq_length))
    steps = args.warmup + args.steps
    cfg = {
        "step_scheduler": {
            "global_batch_size": args.local_batch * args.world_size,
            "local_batch_size": args.local_batch,
            "max_steps": steps,
            "val_every_steps": None,
            "ckpt_every_steps": None,
        },
        "model": {
            "_target_": "automodel.NeMoAutoModelForCausalLM.from_config",
            "config": shape,
            "torch_dtype": "bfloat16" if lora else "float32",
            "attn_implementation": args.attn,
        },
        "tokenizer": {"pretrained_model_name_or_path": str(tiny_tokenizer(work / "tokenizer"))},
        "dataset": {
            "_target_": "automodel.components.datasets.llm.synthetic.make_synthetic_dataset",
            "vocab_size": shape["vocab_size"],
            "seq_length": args.seq_length,
            "num_samples": steps * args.local_batch * args.world_size,
        },
        "mixed_precision": {"dtype": "bf16"},
        "loss_fn": {"_target_": "automodel.components.loss.linear_ce.FusedLinearCrossEntropy"},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-5, "fused": True},
        "distributed": {"strategy": "fsdp2", "activation_checkpointing": args.activation_checkpointing},
        "compile": {"enabled": args.compile},
        "checkpoint": {"enabled": False},
        "logging": {"log_dir": str(work / "logs"), "progress_bar": False, "peak_flops": args.peak_flops},
    }
    if lora:
        cfg["peft"] = {"match_all_linear": True, "dim": 8, "alpha": 32, "lora_dtype": "float32"}
    return yaml.safe_dump(cfg)


def run_case(case: str, args: argparse.Namespace) -> dict | None:
    import torch

    from automodel.components.config import load_yaml_text
    from automodel.recipes.llm import finetune

    work = Path(tempfile.mkdtemp(prefix=f"gpu_bench_{case}_"))
    finetune.main(load_yaml_text(config_for(case, args, work)))
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    records = [json.loads(line) for line in (work / "logs" / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["split"] == "train" and r["step"] > args.warmup]
    world = args.world_size
    return {
        "case": case,
        "tokens_per_s_per_device": statistics.median(r["tokens_per_s"] for r in timed) / world,
        "mfu": statistics.median(r.get("mfu", float("nan")) for r in timed),
        "peak_memory_gib": max(r["peak_memory_gib"] for r in timed),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "devices": world,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="llama-3.2-1b-sft,llama-3-8b-lora", help=f"comma-separated: {list(CASES)}")
    parser.add_argument("--seq-length", type=int, default=4096)
    parser.add_argument("--local-batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--attn", default="sdpa", help="sdpa, or flash_attention_2 when flash-attn is installed")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--peak-flops", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.world_size = int(os.environ.get("WORLD_SIZE", "1"))
    results = [r for case in args.cases.split(",") if (r := run_case(case.strip(), args)) is not None]
    if not results:
        return
    print(
        f"\n{results[0]['devices']} x {results[0]['device']}, sequence length {args.seq_length}, "
        f"{args.steps} timed steps after {args.warmup}, attention {args.attn}, compile {args.compile}"
    )
    print("| case | tokens/s per device | MFU | peak memory (GiB) |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['case']} | {r['tokens_per_s_per_device']:.0f} | {r['mfu']:.1%} | {r['peak_memory_gib']:.1f} |")
    for r in results:
        if r["case"] == "llama-3-8b-lora":
            print(
                f"RATIO llama-3-8b-lora vs the reference system's 12,473 tokens/s/GPU (H100): "
                f"{r['tokens_per_s_per_device'] / 12473:.2f}x"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

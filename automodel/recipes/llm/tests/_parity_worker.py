"""Per-token losses of the recipe's data path vs a plain PyTorch reference, for random data configurations.

Run in one process (`python _parity_worker.py MODEL_DIR OUT SEED CASES`) or under `torchrun --nproc-per-node 2`.
For each case (packing on/off, collate_fn absent / named / a section / the reference system's name, local batch
1..8) it builds the training loader exactly as the recipe does (`build_dataloader`), runs one `train_step` and
compares its loss with the reference: every document of the global batch run *alone* through the unmodified
Hugging Face model (no padding, no packing, no attention mask), cross-entropy summed over its supervised tokens,
divided by the supervised tokens of the whole global batch. It also evaluates a 7-sample validation set, which does
not divide by 2 ranks, and compares with the same reference. Rank 0 writes one JSON line per check to OUT.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from automodel.components.config import ConfigNode, instantiate
from automodel.components.datasets import PackedSequenceConfig
from automodel.components.distributed import (
    DistributedConfig,
    build_parallel_state,
    destroy_distributed,
    initialize_distributed,
)
from automodel.components.loss.masked_ce import MaskedCrossEntropy
from automodel.recipes._steps import build_dataloader, evaluate, train_step

REPO = Path(__file__).resolve().parents[4]
DATA = REPO / "examples" / "llm" / "data" / "facts_squad"
COLLATES = (
    None,
    "automodel.components.datasets.utils.default_collater",
    "nemo_automodel.components.datasets.utils.default_collater",
    {"_target_": "automodel.components.datasets.utils.default_collater", "pad_seq_len_divisible": 8},
)


def reference_loss(model: torch.nn.Module, docs: list[dict]) -> tuple[float, int]:
    """(sum of token cross-entropies, supervised tokens) over documents, each run alone through the model."""
    total, count = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            ids = torch.tensor(doc["input_ids"])[None]
            labels = torch.tensor(doc["labels"])
            logits = model(input_ids=ids, use_cache=False).logits[0].float()
            total += F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    return total, count


def docs_of(dataset, indices: list[int]) -> list[dict]:
    """The original documents behind loader indices (a packed row holds several)."""
    base = getattr(dataset, "dataset", None)
    if hasattr(dataset, "row_samples"):
        return [base[i] for index in indices for i in dataset.row_samples(index)]
    return [dataset[i] for i in indices]


def gather_indices(indices: list[int]) -> list[int]:
    if not dist.is_initialized():
        return indices
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, indices)
    return [i for part in everyone for i in part]


def main(model_dir: str, out: str, seed: int, num_cases: int) -> None:
    info = initialize_distributed("gloo")
    state = build_parallel_state(DistributedConfig(strategy="ddp"), info)
    tokenizer = instantiate(
        ConfigNode({"_target_": "automodel.NeMoAutoTokenizer.from_pretrained"}), pretrained_model_name_or_path=model_dir
    )
    model = instantiate(
        ConfigNode(
            {
                "_target_": "automodel.NeMoAutoModelForCausalLM.from_pretrained",
                "pretrained_model_name_or_path": model_dir,
            }
        )
    )
    model.train()  # no dropout in this model: train and eval forwards are the same function
    dataset = instantiate(
        ConfigNode(
            {
                "_target_": "automodel.components.datasets.llm.squad.make_squad_dataset",
                "dataset_name": str(DATA / "train.jsonl"),
                "limit_dataset_samples": 96,
                "seq_length": 160,
            }
        ),
        tokenizer=tokenizer,
    )
    loss_fn = MaskedCrossEntropy()
    rng = random.Random(seed)
    results = []
    for case in range(num_cases):
        packing_size = rng.choice([0, 0, 256, 384])
        collate = rng.choice(COLLATES)
        local_batch = rng.randint(1, 8)
        packing = PackedSequenceConfig(packed_sequence_size=packing_size) if packing_size else None
        node = ConfigNode({} if collate is None else {"collate_fn": collate})
        loader = build_dataloader(
            node,
            dataset,
            batch_size=local_batch,
            pad_token_id=tokenizer.pad_token_id,
            state=state,
            seed=seed + case,
            train=True,
            packing=packing,
            global_batch_size=local_batch * state.dp_size,
        )
        batch = next(iter(loader))
        model.zero_grad(set_to_none=True)
        ours = train_step(model, [batch], loss_fn, contextlib.nullcontext(), state)["loss"]
        indices = gather_indices(list(loader.sampler)[:local_batch])
        total, count = reference_loss(model, docs_of(loader.dataset, indices))
        results.append(
            {
                "check": "train",
                "case": {"packing": packing_size, "collate": collate, "local_batch": local_batch},
                "ours": ours,
                "reference": total / count,
                "world_size": info.world_size,
            }
        )

    # Validation: 7 samples (do not divide by 2 ranks), batches of 2, with and without packing.
    validation = instantiate(
        ConfigNode(
            {
                "_target_": "automodel.components.datasets.llm.squad.make_squad_dataset",
                "dataset_name": str(DATA / "validation.jsonl"),
                "limit_dataset_samples": 7,
                "seq_length": 160,
            }
        ),
        tokenizer=tokenizer,
    )
    for packing_size in (0, 256):
        packing = PackedSequenceConfig(packed_sequence_size=packing_size) if packing_size else None
        loader = build_dataloader(
            None,
            validation,
            batch_size=2,
            pad_token_id=tokenizer.pad_token_id,
            state=state,
            seed=seed,
            train=False,
            packing=packing,
        )
        ours = evaluate(model, loader, loss_fn, contextlib.nullcontext(), state)
        rows = len(loader.dataset)
        total, count = reference_loss(model, docs_of(loader.dataset, list(range(rows))))
        results.append(
            {
                "check": "validation",
                "case": {"packing": packing_size},
                "ours": ours["loss"],
                "tokens": ours["tokens"],
                "reference": total / count,
                "reference_tokens": count,
                "world_size": info.world_size,
            }
        )
    if info.rank == 0:
        Path(out).write_text("".join(json.dumps(r) + "\n" for r in results))
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

"""Tiny random models, tokenizer and training steps shared by the checkpoint tests (and their subprocesses)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from automodel.components.checkpoint import Checkpointer

VOCAB = 128


def make_model(seed: int = 0, vocab_size: int = VOCAB, cls: type = LlamaForCausalLM) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return cls(config)


def make_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    vocab = {token: index for index, token in enumerate(specials + [f"w{i}" for i in range(VOCAB - len(specials))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def make_optim(model: torch.nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return optimizer, scheduler


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, seed: int) -> float:
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(seed))
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return loss.item()


def identity(model: torch.nn.Module) -> dict[str, Any]:
    return {
        "architecture": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.config.vocab_size,
        "name_or_path": "tiny-llama",
    }


def save(checkpointer: Checkpointer, epoch: int, step: int, model: torch.nn.Module, **kwargs: Any):
    """Checkpointer.save with the recipe's arguments filled in."""
    kwargs.setdefault("train_state", {"step_scheduler": {"step": step, "epoch": epoch, "batches_in_epoch": step}})
    kwargs.setdefault("rng_state", {"torch": torch.get_rng_state()})
    kwargs.setdefault("config_yaml", "model:\n  hidden_size: 64\n")
    if "model_identity" not in kwargs:
        kwargs["model_identity"] = identity(model)
    return checkpointer.save(epoch, step, model=model, **kwargs)

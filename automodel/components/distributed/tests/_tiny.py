"""Tiny random causal LMs (hidden 64, 2 layers, 4 heads / 2 KV heads, vocab 128) and a fixed training batch."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

VOCAB_SIZE = 128
COMMON = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
FAMILIES = {
    "llama": {"tie_word_embeddings": True},
    "qwen2": {"tie_word_embeddings": False},
    "qwen3": {"head_dim": 16, "tie_word_embeddings": True},
    "mistral": {"tie_word_embeddings": False},
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16},
    "gemma3_text": {"head_dim": 16},
    # Families without a plan of ours: transformers' base_model_tp_plan is used.
    "olmo2": {"tie_word_embeddings": False},
    "starcoder2": {"tie_word_embeddings": True},
}


def tiny_config(model_type: str = "llama", **overrides: object):
    fields = {**COMMON, **FAMILIES[model_type], **overrides}
    return AutoConfig.for_model(model_type, **fields)


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides: object) -> PreTrainedModel:
    torch.manual_seed(seed)
    attn = "eager" if model_type == "gemma2" else "sdpa"  # transformers has no SDPA path for Gemma 2's soft-capping
    return AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), attn_implementation=attn)


def training_batch(num_samples: int = 8, seq_len: int = 16, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random tokens with shifted labels; the odd samples end in padding (mask 0, label -100)."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB_SIZE, (num_samples, seq_len + 1), generator=gen)
    labels = input_ids[:, 1:].clone()
    input_ids = input_ids[:, :-1].contiguous()
    attention_mask = torch.ones_like(input_ids)
    for i in range(1, num_samples, 2):
        pad = 3 + i % 4
        attention_mask[i, -pad:] = 0
        input_ids[i, -pad:] = 0
        labels[i, -pad:] = -100
    labels[:, :2] = -100  # an unsupervised prompt
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def sum_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed token cross-entropy over labels != -100 (the caller divides by the global token count)."""
    return torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
    )

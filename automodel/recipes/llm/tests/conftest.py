"""A tiny, fully offline model for recipe tests: a BPE tokenizer trained on the shipped QA data (ChatML template)
and a 2-layer random Llama. Recipe runs on it take seconds, yet go through every real code path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[4]
DATA = REPO / "examples" / "llm" / "data" / "facts_squad"
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(path: Path, *, vocab_size: int = 1024, hidden_size: int = 64, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from tokenizers import decoders as tk_decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = []
    for line in (DATA / "train.jsonl").read_text().splitlines()[:400]:
        row = json.loads(line)
        texts += [row["context"], row["question"]]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts + ["system user assistant Context Question Answer"], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        bos_token="<|im_start|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"))


def write_config(path: Path, model_dir: Path, ckpt_dir: Path, **overrides: object) -> Path:
    """A small but complete finetune config on the shipped QA data."""
    text = f"""
step_scheduler:
  global_batch_size: 4
  local_batch_size: 2
  max_steps: 6
  val_every_steps: 3
  ckpt_every_steps: 2
seed: 1234
model:
  _target_: automodel.NeMoAutoModelForCausalLM.from_pretrained
  pretrained_model_name_or_path: {model_dir}
mixed_precision:
  dtype: none
dataset:
  _target_: automodel.components.datasets.llm.squad.make_squad_dataset
  dataset_name: {DATA / "train.jsonl"}
  limit_dataset_samples: 64
  seq_length: 512
validation_dataset:
  _target_: automodel.components.datasets.llm.squad.make_squad_dataset
  dataset_name: {DATA / "validation.jsonl"}
  limit_dataset_samples: 16
  seq_length: 512
dataloader:
  _target_: torchdata.stateful_dataloader.StatefulDataLoader
  collate_fn: automodel.components.datasets.utils.default_collater
optimizer:
  _target_: torch.optim.AdamW
  lr: 3e-3
  weight_decay: 0.01
lr_scheduler:
  lr_decay_style: cosine
  lr_warmup_steps: 1
checkpoint:
  enabled: true
  checkpoint_dir: {ckpt_dir}
logging:
  progress_bar: false
"""
    path.write_text(text)
    return path

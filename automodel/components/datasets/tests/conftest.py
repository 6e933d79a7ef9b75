"""Tiny tokenizers built in memory (no downloads) and small data-file helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Context: The Tavel river rises in the Orm hills and flows north. Question: Where does the Tavel rise? Answer:",
    "Ada Morvane was a clockmaker born in Kelmsford in 1874. She built the tower clock of the town hall.",
    "Hello there, how are you today? I am fine, thank you. What is the capital of France? Paris.",
    "system user assistant You are a helpful assistant. Answer with a short span copied from the context.",
    "instruction input output The quick brown fox jumps over the lazy dog 0123456789",
]


def _byte_level_bpe(special_tokens: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 3, trainer)
    return tokenizer


@pytest.fixture(scope="session")
def chat_tokenizer() -> PreTrainedTokenizerFast:
    """ChatML special tokens and template, EOS = <|im_end|>, no BOS (like SmolLM2-Instruct)."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="session")
def plain_tokenizer() -> PreTrainedTokenizerFast:
    """No chat template; adds <s> by default (like Llama base models); EOS = </s>."""
    backend = _byte_level_bpe(["<pad>", "<s>", "</s>"])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def squad_row(i: int, context: str = "The Tavel river rises in the Orm hills.", answer: str = "the Orm hills") -> dict:
    start = context.find(answer)
    return {
        "id": str(i),
        "title": "Tavel",
        "context": context,
        "question": f"Where does river {i} rise?",
        "answers": {"text": [answer], "answer_start": [start]},
    }


def supervised_targets(sample: dict) -> list[int]:
    """The token ids that carry loss, in order (labels are shifted, so they are the labels themselves)."""
    return [label for label in sample["labels"] if label != -100]

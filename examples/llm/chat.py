"""Chat with a fine-tuned model, or measure its exact-match accuracy on SQuAD-format data.

    python examples/llm/chat.py checkpoints/smollm2_135m_squad                  # interactive
    python examples/llm/chat.py checkpoints/smollm2_135m_squad --prompt "Context: ... Question: ..."
    python examples/llm/chat.py checkpoints/smollm2_135m_squad --eval examples/llm/data/facts_squad/validation.jsonl

MODEL is a Hugging Face model folder, or a checkpoint_dir (its LATEST checkpoint's model/ is used). Only
transformers is needed: the checkpoint is a plain HF folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def model_folder(path: str) -> Path:
    folder = Path(path)
    if (folder / "LATEST").is_file():  # a checkpoint_dir: follow its pointer to the newest complete checkpoint
        folder = folder / (folder / "LATEST").read_text().strip() / "model"
    if not (folder / "config.json").is_file():
        sys.exit(f"error: {folder} is not a model folder (no config.json) nor a checkpoint_dir (no LATEST)")
    return folder


@torch.no_grad()
def answer(model, tokenizer, prompt: str, max_new_tokens: int = 64) -> str:
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="HF model folder or checkpoint_dir")
    parser.add_argument("--prompt", help="answer this one prompt and exit")
    parser.add_argument("--eval", metavar="JSONL", help="exact-match accuracy on SQuAD-format rows")
    parser.add_argument("--limit", type=int, default=50, help="rows to evaluate with --eval")
    args = parser.parse_args()

    folder = model_folder(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    if args.eval:
        rows = [json.loads(line) for line in Path(args.eval).read_text().splitlines()[: args.limit]]
        correct = 0
        for row in rows:
            # The same prompt the training data used (automodel's SQuAD formatting with a chat template).
            reply = answer(model, tokenizer, f"Context: {row['context']}\nQuestion: {row['question']}")
            correct += reply == row["answers"]["text"][0]
        print(f"exact match: {correct}/{len(rows)} = {correct / len(rows):.1%}  ({folder})")
    elif args.prompt:
        print(answer(model, tokenizer, args.prompt))
    else:
        print(f"Chatting with {folder} (empty line to quit)")
        while prompt := input("> ").strip():
            print(answer(model, tokenizer, prompt))


if __name__ == "__main__":
    main()

"""An offline VLM demo: a SmolVLM-style model (Idefics3 architecture) made of the real SmolLM2-135M-Instruct language
model and a small vision encoder initialised at random, trained to answer questions about generated pictures.

    automodel prepare smollm2                                        # once: models/SmolLM2-135M-Instruct
    python examples/vlm/smolvlm_shapes_demo.py prepare               # the model and the data (about 30 s)
    python examples/vlm/smolvlm_shapes_demo.py evaluate models/SmolVLM-shapes-demo         # accuracy before
    automodel vlm finetune -c examples/vlm/smolvlm_shapes_demo.yaml  # a few minutes on 2 CPU cores
    python examples/vlm/smolvlm_shapes_demo.py evaluate checkpoints/smolvlm_shapes_demo     # accuracy after

What is pretrained and what is not:
- the language model (30 layers, 134.5M parameters) is SmolLM2-135M-Instruct, unchanged;
- the vision encoder (a 4-layer SigLIP-style ViT, 3.2M parameters) and the projector into the language model
  (pixel shuffle + one linear layer) are randomly initialised: the model starts blind;
- four new special tokens (<image>, <fake_token_around_image>, <global-img>, <end_of_utterance>) get the mean of the
  existing embeddings.

The data: 64x64 pictures of 1 to 3 shapes of one kind (circle, square, triangle) and one colour (red, green, blue,
yellow), each with one question: its colour, its shape or how many there are. Answers are one word.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
COUNTS = ("1", "2", "3")
QUESTIONS = {
    "colour": ("What colour are the shapes? Answer with one word.", COLOURS),
    "shape": ("What kind of shape is shown? Answer with one word.", SHAPES),
    "count": ("How many shapes are there? Answer with a number.", COUNTS),
}
IMAGE_SIZE = 64
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# --- data -----------------------------------------------------------------------------------------------------------
def draw(colour: str, shape: str, count: int, rng: random.Random):
    """A picture of `count` shapes on a light background: one large shape in the middle, or one per quadrant."""
    from PIL import Image, ImageDraw

    background = tuple(rng.randint(225, 255) for _ in range(3))
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    pen = ImageDraw.Draw(image)
    half = IMAGE_SIZE // 2
    if count == 1 and rng.random() < 0.5:
        size = rng.randint(36, 52)
        corners = [(rng.randint(2, IMAGE_SIZE - size - 2), rng.randint(2, IMAGE_SIZE - size - 2))]
    else:
        size = rng.randint(18, 26)
        corners = [
            ((q % 2) * half + rng.randint(2, half - size - 2), (q // 2) * half + rng.randint(2, half - size - 2))
            for q in rng.sample(range(4), count)
        ]
    for x0, y0 in corners:
        box = (x0, y0, x0 + size, y0 + size)
        fill = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in COLOURS[colour])
        if shape == "circle":
            pen.ellipse(box, fill=fill)
        elif shape == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([(x0 + size / 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=fill)
    return image


def make_data(folder: Path, num_train: int, num_validation: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for split, num_rows in (("train", num_train), ("validation", num_validation)):
        rows = []
        for i in range(num_rows):
            kind = rng.choice(list(QUESTIONS))
            # Shape questions show one shape (drawn large half of the time), so its outline is what differs.
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            count = 1 if kind == "shape" else rng.randint(1, 3)
            answer = {"colour": colour, "shape": shape, "count": str(count)}[kind]
            name = f"images/{split}_{i:05d}.png"
            draw(colour, shape, count, rng).save(folder / name)
            question = QUESTIONS[kind][0]
            content = [{"type": "image", "image": name}, {"type": "text", "text": question}]
            messages = [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
            rows.append({"messages": messages, "kind": kind, "answer": answer})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"data: {num_train} train / {num_validation} validation questions in {folder}")


# --- model ----------------------------------------------------------------------------------------------------------
def make_model(
    language_model: Path, output: Path, vision_layers: int = 1, scale_factor: int = 2, seed: int = 0
) -> None:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    if not (language_model / "config.json").is_file():
        sys.exit(f"error: {language_model} does not exist; run `automodel prepare smollm2` first")
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]}
    )
    lm = AutoModelForCausalLM.from_pretrained(language_model, dtype=torch.float32)
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)  # new rows: the mean of the old ones
    text_config = lm.config.to_dict()
    config = Idefics3Config(
        vision_config={
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": 4,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,  # pixel shuffle: 8x8 patches -> (8 / scale_factor) ** 2 image tokens
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    state = {key.removeprefix("model."): value for key, value in lm.state_dict().items() if key.startswith("model.")}
    model.model.text_model.load_state_dict(state)
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.text_model.embed_tokens.weight.data_ptr()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    images = Idefics3ImageProcessorPil(
        size={"longest_edge": IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE}, do_image_splitting=False
    )
    image_seq_len = (IMAGE_SIZE // 8 // scale_factor) ** 2
    processor = Idefics3Processor(
        image_processor=images, tokenizer=tokenizer, image_seq_len=image_seq_len, chat_template=CHAT_TEMPLATE
    )
    model.save_pretrained(output)
    processor.save_pretrained(output)
    vision = sum(p.numel() for p in model.model.vision_model.parameters())
    projector = sum(p.numel() for p in model.model.connector.parameters())
    language = sum(p.numel() for p in model.model.text_model.parameters())
    print(
        f"model: {output} (vision encoder {vision / 1e6:.1f}M random, projector {projector / 1e6:.2f}M random, "
        f"language model {language / 1e6:.1f}M pretrained SmolLM2)"
    )


# --- evaluation ------------------------------------------------------------------------------------------------------
def resolve(path: Path) -> Path:
    """A model folder, or a checkpoint_dir (follows LATEST to its model/)."""
    if (path / "LATEST").is_file():
        return path / (path / "LATEST").read_text().strip() / "model"
    return path


def correct(reply: str, kind: str, answer: str) -> bool:
    """The reply names the right answer and no other candidate of that kind (lenient to wording)."""
    words = set(re.findall(r"[a-z0-9]+", reply.lower().replace("colour", "").replace("color", "")))
    numbers = {"one": "1", "two": "2", "three": "3"}
    words |= {numbers[w] for w in words if w in numbers}
    candidates = {str(c) for c in QUESTIONS[kind][1]}
    return answer in words and not (words & candidates) - {answer}


def evaluate(model_path: Path, data: Path, limit: int) -> None:
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = resolve(model_path)
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    rows = [json.loads(line) for line in (data / "validation.jsonl").read_text().splitlines()][:limit]
    scores: dict[str, list[bool]] = {kind: [] for kind in QUESTIONS}
    shown = 0
    for row in rows:
        prompt = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": row["messages"][0]["content"][1]["text"]}],
            }
        ]
        text = processor.apply_chat_template(prompt, add_generation_prompt=True)
        image = Image.open(data / row["messages"][0]["content"][0]["image"]).convert("RGB")
        inputs = processor(text=[text], images=[[image]], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        reply = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        scores[row["kind"]].append(correct(reply, row["kind"], row["answer"]))
        if shown < 3:
            print(f"  Q: {prompt[0]['content'][1]['text']}  expected: {row['answer']}  model: {reply!r}")
            shown += 1
    total = [s for kind in scores.values() for s in kind]
    parts = ", ".join(f"{kind} {100 * sum(s) / max(len(s), 1):.0f}%" for kind, s in scores.items())
    print(f"accuracy on {len(total)} validation questions: {100 * sum(total) / len(total):.0f}% ({parts})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="build the demo model and generate the data")
    prepare.add_argument("--language-model", type=Path, default=Path("models/SmolLM2-135M-Instruct"))
    prepare.add_argument("--output", type=Path, default=Path("models/SmolVLM-shapes-demo"))
    prepare.add_argument("--data", type=Path, default=Path("models/shapes-vqa"))
    prepare.add_argument("--num-train", type=int, default=1600)
    prepare.add_argument("--num-validation", type=int, default=120)
    prepare.add_argument("--vision-layers", type=int, default=1)
    prepare.add_argument(
        "--scale-factor", type=int, default=2, help="pixel shuffle: 2 gives 16 image tokens, 1 gives 64"
    )
    score = commands.add_parser("evaluate", help="accuracy on the validation questions (greedy answers)")
    score.add_argument("model", type=Path, help="a model folder or a checkpoint_dir")
    score.add_argument("--data", type=Path, default=Path("models/shapes-vqa"))
    score.add_argument("--limit", type=int, default=120)
    args = parser.parse_args()
    if args.command == "prepare":
        make_data(args.data, args.num_train, args.num_validation)
        make_model(args.language_model, args.output, args.vision_layers, args.scale_factor)
    else:
        evaluate(args.model, args.data, args.limit)


if __name__ == "__main__":
    main()

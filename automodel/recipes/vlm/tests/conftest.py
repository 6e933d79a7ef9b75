"""Tiny offline VLMs of four families (processor from the datasets tests, model config from the model-loading tests)
saved as HF folders, a small JSONL dataset of rendered shapes, and a config writer for recipe runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText

from automodel.components._transformers.tests._tiny_vlm import tiny_vlm_config
from automodel.components.datasets.tests._vlm_tiny import FAMILIES, build_processor

REPO = Path(__file__).resolve().parents[4]
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220)}


def build_tiny_vlm(family: str, folder: Path, seed: int = 0) -> Path:
    processor = build_processor(family)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(tiny_vlm_config(family, processor.tokenizer))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vlm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {family: build_tiny_vlm(family, root / family) for family in FAMILIES}


def write_shapes_data(folder: Path, num_rows: int = 24) -> Path:
    """`num_rows` conversations about one coloured shape each, images as PNG files next to the JSONL."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num_rows):
        colour = list(COLOURS)[i % 3]
        shape = "circle" if (i // 3) % 2 == 0 else "square"
        image = Image.new("RGB", (32, 32), "white")
        box = (6, 6, 26, 26)
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        image.save(folder / f"{i}.png")
        rows.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "image": f"{i}.png"}, {"type": "text", "text": "What is it?"}],
                    },
                    {"role": "assistant", "content": f"A {colour} {shape}."},
                ]
            }
        )
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_data(tmp_path_factory.mktemp("shapes"))


def write_config(path: Path, model_dir: Path, data: Path, ckpt_dir: Path, extra: str = "") -> Path:
    """A small but complete VLM finetune config."""
    text = f"""
step_scheduler:
  global_batch_size: 4
  local_batch_size: 2
  max_steps: 6
  val_every_steps: 3
  ckpt_every_steps: 2
seed: 1234
model:
  _target_: automodel.NeMoAutoModelForImageTextToText.from_pretrained
  pretrained_model_name_or_path: {model_dir}
mixed_precision:
  dtype: none
dataset:
  _target_: automodel.components.datasets.vlm.datasets.make_conversation_dataset
  path_or_dataset: {data}
  split: train[:16]
validation_dataset:
  _target_: automodel.components.datasets.vlm.datasets.make_conversation_dataset
  path_or_dataset: {data}
  split: train[16:]
dataloader:
  _target_: torchdata.stateful_dataloader.StatefulDataLoader
  collate_fn:
    _target_: automodel.components.datasets.vlm.collate_fns.default_collate_fn
    max_length: 128
optimizer:
  _target_: torch.optim.AdamW
  lr: 3e-3
lr_scheduler:
  lr_decay_style: constant
checkpoint:
  enabled: true
  checkpoint_dir: {ckpt_dir}
logging:
  progress_bar: false
{extra}"""
    path.write_text(text)
    return path

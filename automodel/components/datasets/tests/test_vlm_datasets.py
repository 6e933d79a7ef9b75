"""VLM dataset formats (JSONL conversations, HF datasets with image columns, CORD-v2, image + QA), lazy image
loading, and how missing / corrupt images are reported, skipped or stopped on, in DataLoader workers too."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import datasets
import pytest
from torch.utils.data import DataLoader

from automodel.components.datasets.tests._vlm_tiny import build_processor, png_bytes, write_png
from automodel.components.datasets.vlm import (
    ImageLoadError,
    VLMDataError,
    default_collate_fn,
    json_to_tokens,
    make_conversation_dataset,
    make_cord_v2_dataset,
    make_image_qa_dataset,
    make_medpix_dataset,
    make_rdr_dataset,
)


def _row(image: object, answer: str = "A red circle.") -> dict:
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]},
            {"role": "assistant", "content": answer},
        ]
    }


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _size(sample: dict) -> tuple[int, int]:
    return sample["conversation"][0]["content"][0]["image"].size


def test_jsonl_conversations_with_every_kind_of_image_reference(tmp_path: Path):
    write_png(tmp_path / "data" / "imgs" / "a.png")
    absolute = write_png(tmp_path / "elsewhere" / "b.png", "blue")
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes("green")).decode()
    openai_style = {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": f"file://{absolute}"}},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Blue, then green."}]},
        ]
    }
    path = _write(tmp_path / "data" / "train.jsonl", [_row("imgs/a.png"), openai_style])
    dataset = make_conversation_dataset(path)  # relative paths: relative to the JSONL's folder
    assert len(dataset) == 2
    first = dataset[0]
    assert first["row"] == 0 and _size(first) == (40, 30)
    second = dataset[1]["conversation"]
    assert [m["role"] for m in second] == ["system", "user", "assistant"]
    kinds = [part["type"] for part in second[1]["content"]]
    assert kinds == ["text", "image", "image"]
    assert second[1]["content"][2]["image"].getpixel((20, 15)) == (0, 128, 0)  # the green data: URL image
    # The folder form finds train.jsonl by split name, and HF split slices apply.
    assert len(make_conversation_dataset(tmp_path / "data", split="train[1:]")) == 1


def test_images_are_decoded_when_a_sample_is_read_not_before(tmp_path: Path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    write_png(tmp_path / "ok.png")
    dataset = make_conversation_dataset(_write(tmp_path / "d.jsonl", [_row("ok.png"), _row("broken.png")]))
    assert _size(dataset[0]) == (40, 30)  # building the dataset did not open broken.png
    with pytest.raises(ImageLoadError, match=r"row 1: image .*broken.png could not be read.*on_bad_image: skip"):
        dataset[1]


def test_missing_images_stop_the_run_or_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    write_png(tmp_path / "ok.png")
    rows = [_row("ok.png"), _row("gone.png"), _row("also_gone.png")]
    path = _write(tmp_path / "d.jsonl", rows)
    with pytest.raises(ImageLoadError, match=r"2 image file\(s\) do not exist .*row 1: .*gone.png.*on_bad_image: skip"):
        make_conversation_dataset(path)
    with caplog.at_level(logging.WARNING):
        dataset = make_conversation_dataset(path, on_bad_image="skip")
    assert len(dataset) == 1 and dataset[0]["row"] == 0
    assert "skipping 2 row(s) whose image files do not exist" in caplog.text
    with pytest.raises(VLMDataError, match="on_bad_image must be one of"):
        make_conversation_dataset(path, on_bad_image="ignore")


def test_a_corrupt_image_is_replaced_by_the_next_sample_with_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG truncated")
    write_png(tmp_path / "ok.png")
    dataset = make_conversation_dataset(
        _write(tmp_path / "d.jsonl", [_row("broken.png"), _row("ok.png", "A blue one.")]), on_bad_image="skip"
    )
    with caplog.at_level(logging.WARNING):
        sample = dataset[0]
    assert sample["row"] == 1
    assert "row 0 skipped: image" in caplog.text and "broken.png" in caplog.text


def test_an_image_error_in_a_dataloader_worker_reads_as_one_line(tmp_path: Path):
    (tmp_path / "broken.png").write_bytes(b"garbage")
    dataset = make_conversation_dataset(_write(tmp_path / "d.jsonl", [_row("broken.png")]))
    loader = DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=list)
    with pytest.raises(ImageLoadError) as info:
        next(iter(loader))
    message = str(info.value)
    assert message.startswith("dataset") and "broken.png could not be read" in message
    assert "Traceback" not in message and "\n" not in message


def test_bad_conversations_are_reported_with_their_row(tmp_path: Path):
    write_png(tmp_path / "a.png")
    user_last = {"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"}]}]}
    with pytest.raises(VLMDataError, match="row 1: the last message is from 'user'"):
        make_conversation_dataset(_write(tmp_path / "1.jsonl", [_row("a.png"), user_last]))
    answer_image = _row("a.png")
    answer_image["messages"][1]["content"] = [{"type": "image", "image": "a.png"}]
    with pytest.raises(VLMDataError, match="row 0: message 1 is an assistant turn with an image"):
        make_conversation_dataset(_write(tmp_path / "2.jsonl", [answer_image]))
    video = _row("a.png")
    video["messages"][0]["content"].append({"type": "video", "video": "v.mp4"})
    with pytest.raises(VLMDataError, match="row 0: message 0 has an unsupported content part"):
        make_conversation_dataset(_write(tmp_path / "3.jsonl", [video]))
    (tmp_path / "4.jsonl").write_text(json.dumps(_row("a.png")) + "\n{oops\n")
    with pytest.raises(VLMDataError, match="line 2 of .*4.jsonl is not valid JSON"):
        make_conversation_dataset(tmp_path / "4.jsonl")
    with pytest.raises(VLMDataError, match="column 'conversation' \\(for messages_column\\) not found"):
        make_conversation_dataset(_write(tmp_path / "5.jsonl", [_row("a.png")]), messages_column="conversation")


def _hf_images(num_rows: int, **columns: list) -> datasets.Dataset:
    features = {"image": datasets.Image(), **{k: datasets.Value("string") for k in columns}}
    images = [{"bytes": png_bytes(c), "path": None} for c in ["red", "blue", "green"][:num_rows]]
    return datasets.Dataset.from_dict({"image": images, **columns}, features=datasets.Features(features))


def test_hf_dataset_with_an_image_column_as_image_qa():
    rows = _hf_images(3, question=["Colour?"] * 3, answer=["Red.", "Blue.", "Green."])
    dataset = make_image_qa_dataset(rows, system_prompt="Answer in one word.")
    sample = dataset[1]["conversation"]
    assert sample[0] == {"role": "system", "content": [{"type": "text", "text": "Answer in one word."}]}
    assert sample[1]["content"][0]["image"].getpixel((20, 15)) == (0, 0, 255)
    assert sample[2]["content"] == [{"type": "text", "text": "Blue."}]
    batch = default_collate_fn([dataset[i] for i in range(3)], build_processor("llava"))
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    with pytest.raises(VLMDataError, match="column 'caption' \\(for answer_column\\) not found"):
        make_image_qa_dataset(rows, answer_column="caption")


def test_hf_conversations_with_an_images_column():
    rows = datasets.Dataset.from_dict(
        {
            "messages": [
                [
                    {"role": "user", "content": [{"type": "image"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
                ]
            ],
            "images": [[{"bytes": png_bytes("red"), "path": None}]],
        },
        features=datasets.Features(
            {
                "messages": [
                    {
                        "role": datasets.Value("string"),
                        "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}],
                    }
                ],
                "images": datasets.List(datasets.Image()),
            }
        ),
    )
    sample = make_conversation_dataset(rows)[0]["conversation"]
    assert sample[0]["content"][0]["image"].size == (40, 30)  # the bare image part took the column's image


def test_a_corrupt_image_in_an_hf_dataset_is_reported():
    rows = _hf_images(1, question=["Colour?"], answer=["Red."]).cast_column("image", datasets.Image(decode=False))
    rows = rows.map(lambda row: {"image": {"bytes": b"garbage", "path": "receipt_7.png"}})
    dataset = make_image_qa_dataset(rows)
    with pytest.raises(ImageLoadError, match="row 0: image receipt_7.png could not be read"):
        dataset[0]


def test_cord_v2_receipts_become_tagged_text_or_json():
    parse = {
        "menu": [{"nm": "Tea", "price": "3.00"}, {"nm": "Cake", "price": "4.50"}],
        "total": {"total_price": "7.50"},
    }
    rows = _hf_images(1, ground_truth=[json.dumps({"gt_parse": parse, "meta": {}})])
    tokens = make_cord_v2_dataset(rows)[0]["conversation"]
    expected = (
        "<s_menu><s_nm>Tea</s_nm><s_price>3.00</s_price><sep/><s_nm>Cake</s_nm><s_price>4.50</s_price></s_menu>"
        "<s_total><s_total_price>7.50</s_total_price></s_total>"
    )
    assert tokens[1]["content"] == [{"type": "text", "text": expected}] and json_to_tokens(parse) == expected
    assert tokens[0]["content"][1] == {"type": "text", "text": "Describe this image."}
    as_json = make_cord_v2_dataset(rows, target_format="json")[0]["conversation"][1]["content"][0]["text"]
    assert json.loads(as_json) == parse
    bad = _hf_images(1, ground_truth=["{}"])
    with pytest.raises(VLMDataError, match="row 0: ground_truth must be JSON with a 'gt_parse' object"):
        make_cord_v2_dataset(bad)[0]
    with pytest.raises(VLMDataError, match="target_format must be one of"):
        make_cord_v2_dataset(rows, target_format="xml")


def test_the_reference_demo_formats(tmp_path: Path):
    medpix = _hf_images(1, question=["What organ?"], answer=["The liver."]).rename_column("image", "image_id")
    sample = make_medpix_dataset(medpix)[0]["conversation"]
    assert sample[1]["content"][0]["text"] == "The liver."
    rdr = _hf_images(1, text=["A wooden chair."])
    sample = make_rdr_dataset(rdr)[0]["conversation"]
    assert (
        sample[0]["content"][1]["text"] == "Describe this image."
        and sample[1]["content"][0]["text"] == "A wooden chair."
    )
    # JSONL with image paths works for the QA format too.
    write_png(tmp_path / "x.png")
    path = _write(tmp_path / "qa.jsonl", [{"image": "x.png", "question": "Shape?", "answer": "A circle."}])
    assert _size(make_image_qa_dataset(path)[0]) == (40, 30)

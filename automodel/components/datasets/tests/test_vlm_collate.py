"""The VLM collate function: the loss mask token by token for each family, shifting, padding, multi-turn, and the
bad-input errors (image-token count, lengths that would cut an image, empty answers, no chat template)."""

from __future__ import annotations

import logging

import pytest
import torch

from automodel.components.datasets.tests._vlm_tiny import (
    END_OF_TURN,
    FAMILIES,
    build_processor,
    conversation,
    shape_image,
)
from automodel.components.datasets.vlm import COLLATE_FNS, VLMDataError, collate_fn_for, default_collate_fn

ANSWER = "A red circle."


@pytest.fixture(scope="module")
def processors() -> dict:
    return {family: build_processor(family) for family in FAMILIES}


def _image_token_ids(processor) -> set[int]:
    """Every token id the processor writes for an image (placeholders, markers around them)."""
    tokenizer = processor.tokenizer
    names = [
        "<image>",
        "<|image_pad|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<fake_token_around_image>",
        "<global-img>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    ]
    return {tokenizer.convert_tokens_to_ids(n) for n in names if n in tokenizer.get_vocab()}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_loss_is_on_the_answer_and_its_end_of_turn_token_only(family: str, processors: dict):
    processor = processors[family]
    tokenizer = processor.tokenizer
    batch = default_collate_fn([{"conversation": conversation(shape_image()), "row": 7}], processor)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert len(ids) == len(labels) and labels[-1] == -100

    # Shifted: the label at t is the token at t + 1, wherever there is one.
    targets = [t + 1 for t, label in enumerate(labels) if label != -100]
    assert all(labels[t - 1] == ids[t] for t in targets)
    # The targets are exactly the answer's tokens followed by the end-of-turn token, one contiguous run at the end
    # of the assistant turn.
    assert targets == list(range(targets[0], targets[-1] + 1))
    # (LLaVA's generation prompt is "ASSISTANT:", so the space before the answer is part of the answer's first token.)
    assert tokenizer.decode([ids[t] for t in targets]).lstrip() == ANSWER + END_OF_TURN[family]
    # Token by token, nothing before the answer carries loss: not the prompt, not a single image token.
    prompt = tokenizer.decode(ids[: targets[0]])
    assert prompt.rstrip().endswith(("ASSISTANT:", "assistant", "Assistant:", "model"))
    image_ids = _image_token_ids(processor)
    assert sum(ids.count(i) for i in image_ids) >= 4  # the expanded image is in the sequence...
    assert not {ids[t] for t in targets} & image_ids  # ...and carries no loss
    assert all(label == -100 for label in labels[: targets[0] - 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_every_assistant_turn_carries_loss_and_padding_none(family: str, processors: dict):
    processor = processors[family]
    tokenizer = processor.tokenizer
    two_turns = conversation(shape_image("blue"), answer="A blue square.") + [
        {"role": "user", "content": "How many shapes are there?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Two."}]},
    ]
    batch = default_collate_fn(
        [{"conversation": conversation(shape_image()), "row": 0}, {"conversation": two_turns, "row": 1}], processor
    )
    short, long = (batch["attention_mask"][i].sum().item() for i in range(2))
    assert short < long == batch["input_ids"].shape[1]
    assert batch["attention_mask"][0, :short].all() and not batch["attention_mask"][0, short:].any()  # right-padded
    assert (batch["labels"][0, short - 1 :] == -100).all()
    supervised = [batch["input_ids"][1, t + 1].item() for t in range(long - 1) if batch["labels"][1, t] != -100]
    text = tokenizer.decode(supervised).replace(" ", "")
    eot = END_OF_TURN[family]
    assert text == f"Abluesquare.{eot}Two.{eot}"
    assert batch["pixel_values"].shape[0] in (2, 2 * 48)  # both images (Qwen2.5-VL: flattened patches)


def test_outputs_are_the_processors_model_inputs(processors: dict):
    keys = {
        family: set(default_collate_fn([{"conversation": conversation(shape_image())}], processors[family]))
        for family in FAMILIES
    }
    assert keys["llava"] == {"input_ids", "attention_mask", "pixel_values", "labels"}
    assert keys["qwen2_5_vl"] == {
        "input_ids",
        "attention_mask",
        "mm_token_type_ids",
        "pixel_values",
        "image_grid_thw",
    } | {"labels"}
    assert keys["idefics3"] == {"input_ids", "attention_mask", "pixel_values", "pixel_attention_mask", "labels"}
    assert keys["gemma3"] == {"input_ids", "attention_mask", "pixel_values", "token_type_ids", "labels"}


def test_image_placeholders_must_match_the_images(processors: dict):
    literal = conversation(shape_image(), question="Compare <image> with this one.")
    with pytest.raises(
        VLMDataError,
        match=r"row 3: the rendered text has 2 image placeholder\(s\) '<image>' but the conversation has 1 image",
    ):
        default_collate_fn([{"conversation": literal, "row": 3}], processors["llava"])


def test_a_text_only_sample_in_an_image_batch(processors: dict):
    text_only = [{"role": "user", "content": "Say two."}, {"role": "assistant", "content": "Two."}]
    batch = default_collate_fn(
        [{"conversation": conversation(shape_image())}, {"conversation": text_only}], processors["idefics3"]
    )
    targets = [
        batch["input_ids"][1, t + 1].item()
        for t in range(batch["labels"].shape[1] - 1)
        if batch["labels"][1, t] != -100
    ]
    assert processors["idefics3"].tokenizer.decode(targets) == "Two.<end_of_utterance>"


@pytest.mark.parametrize("family", FAMILIES)
def test_max_length_never_cuts_an_image(family: str, processors: dict):
    processor = processors[family]
    example = {"conversation": conversation(shape_image(), answer="A red circle. " * 10), "row": 5}
    ids = default_collate_fn([example], processor)["input_ids"][0].tolist()
    inside_image = ids.index(processor.image_token_ids[0]) + 2  # a cut through the image's placeholder tokens
    # Cutting in the answer is a truncation that keeps the whole image and some answer tokens.
    cut = len(ids) - 10
    batch = default_collate_fn([example], processor, max_length=cut)
    assert batch["input_ids"].shape[1] == cut and (batch["labels"] != -100).any()
    # Cutting inside the image is refused, or the sample dropped.
    with pytest.raises(VLMDataError, match=r"row 5: .*longer than max_length=.*would cut through its image tokens"):
        default_collate_fn([example], processor, max_length=inside_image)
    with pytest.raises(VLMDataError, match="every sample of a batch .* is longer than max_length"):
        default_collate_fn([example], processor, max_length=inside_image, on_overflow="drop")


def test_drop_leaves_long_samples_out(processors: dict, caplog: pytest.LogCaptureFixture):
    short = {"conversation": conversation(shape_image()), "row": 0}
    long = {"conversation": conversation(shape_image(), answer="A red circle. " * 20), "row": 1}
    with caplog.at_level(logging.WARNING):
        batch = default_collate_fn([short, long], processors["llava"], max_length=60, on_overflow="drop")
    assert batch["input_ids"].shape[0] == 1 and batch["pixel_values"].shape[0] == 1
    assert "dropped row(s) [1]: longer than max_length=60" in caplog.text


def test_an_answer_past_max_length_is_an_error(processors: dict):
    example = {"conversation": conversation(shape_image(), question="What colour? " * 20), "row": 2}
    with pytest.raises(VLMDataError, match="row 2: .*its answer starts after position max_length"):
        default_collate_fn([example], processors["llava"], max_length=60)


def test_other_bad_input(processors: dict):
    silent = build_processor("llava")  # a template that renders no assistant turn: nothing to learn
    silent.chat_template = "{% for m in messages %}{% if m['role'] == 'user' %}USER: <image>{% endif %}{% endfor %}"
    with pytest.raises(VLMDataError, match=r"row\(s\) \[0\] have no token that carries loss"):
        default_collate_fn([{"conversation": conversation(shape_image()), "row": 0}], silent)
    with pytest.raises(VLMDataError, match="on_overflow must be one of"):
        default_collate_fn([{"conversation": conversation(shape_image())}], processors["llava"], on_overflow="cut")
    with pytest.raises(VLMDataError, match="has no 'conversation' list"):
        default_collate_fn([{"input_ids": [1, 2]}], processors["llava"])
    no_template = build_processor("llava")
    no_template.chat_template = None
    with pytest.raises(VLMDataError, match="has no chat template"):
        default_collate_fn([{"conversation": conversation(shape_image())}], no_template)


def test_collate_functions_are_chosen_by_processor_class(processors: dict):
    assert collate_fn_for(processors["gemma3"]) is default_collate_fn
    try:
        COLLATE_FNS["Gemma3Processor"] = len
        assert collate_fn_for(processors["gemma3"]) is len
        assert collate_fn_for(processors["llava"]) is default_collate_fn
    finally:
        del COLLATE_FNS["Gemma3Processor"]


def test_paths_in_samples_are_loaded(processors: dict, tmp_path):
    path = tmp_path / "red.png"
    shape_image().save(path)
    batch = default_collate_fn([{"conversation": conversation(str(path))}], processors["gemma3"])
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert torch.is_tensor(batch["token_type_ids"])

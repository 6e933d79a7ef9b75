"""Vision-language models: loading (from_pretrained / from_config, options, errors), processors (including the
images-only fallback without torchvision), processor/model consistency checks, the parts of each family, freezing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

import automodel
from automodel.components._transformers import (
    FreezeConfig,
    ModelLoadError,
    NeMoAutoModelForImageTextToText,
    NeMoAutoProcessor,
    apply_freeze_config,
    check_processor_matches_model,
    non_language_modules,
    vlm_parts,
)
from automodel.components._transformers.tests._tiny_vlm import (
    FAMILIES,
    llava_processor,
    tiny_tokenizer,
    tiny_vlm,
    tiny_vlm_config,
    write_qwen_processor,
)

# What each family calls its parts (vision, projector, language model + head).
PARTS = {
    "llava": (["model.vision_tower"], ["model.multi_modal_projector"], ["model.language_model", "lm_head"]),
    "qwen2_5_vl": (["model.visual"], [], ["model.language_model", "lm_head"]),
    "idefics3": (["model.vision_model"], ["model.connector"], ["model.text_model", "lm_head"]),
    "gemma3": (["model.vision_tower"], ["model.multi_modal_projector"], ["model.language_model", "lm_head"]),
}
CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration",
}


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llava")
    processor = llava_processor()
    tiny_vlm("llava", processor.tokenizer).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_the_lazy_alias_is_the_auto_class():
    assert automodel.NeMoAutoModelForImageTextToText is NeMoAutoModelForImageTextToText
    assert automodel.NeMoAutoProcessor is NeMoAutoProcessor


@pytest.mark.parametrize("family", FAMILIES)
def test_from_config_builds_each_family_and_from_pretrained_reloads_it(family: str, tmp_path: Path):
    config = tiny_vlm_config(family, tiny_tokenizer(family))
    # A plain dict (as a YAML section gives it), nested sub-configs included.
    fields = {**config.to_dict(), "model_type": config.model_type}
    model = NeMoAutoModelForImageTextToText.from_config(fields)
    assert type(model).__name__ == CLASSES[family]
    assert model.dtype == torch.float32
    model.save_pretrained(tmp_path)

    reloaded = NeMoAutoModelForImageTextToText.from_pretrained(tmp_path, torch_dtype="bf16")
    assert type(reloaded).__name__ == CLASSES[family]
    assert reloaded.dtype == torch.bfloat16
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a.to(torch.bfloat16), b), name


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_has_a_vision_tower_projector_and_language_model(family: str):
    model = tiny_vlm(family, tiny_tokenizer(family))
    parts = vlm_parts(model)
    assert (parts.vision, parts.projector, parts.language) == PARTS[family]
    assert non_language_modules(model) == PARTS[family][0] + PARTS[family][1]


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_config_freezes_the_named_parts(family: str):
    model = tiny_vlm(family, tiny_tokenizer(family))
    counts = apply_freeze_config(model, FreezeConfig())  # the defaults: vision tower and embeddings frozen
    vision, projector, language = PARTS[family]
    for name, param in model.named_parameters():
        in_vision = any(name.startswith(prefix + ".") for prefix in vision)
        in_projector = any(name.startswith(prefix + ".") for prefix in projector)
        if in_vision:
            assert not param.requires_grad, name
        elif in_projector:
            assert param.requires_grad, name
    assert not model.get_input_embeddings().weight.requires_grad
    layer_weight = next(p for n, p in model.named_parameters() if n.startswith(language[0]) and "layers.0" in n)
    assert layer_weight.requires_grad
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0


def test_freezing_everything_is_an_error():
    model = tiny_vlm("idefics3", tiny_tokenizer("idefics3"))
    everything = FreezeConfig(freeze_language_model=True, freeze_projector=True)
    with pytest.raises(ModelLoadError, match="freeze_config freezes every parameter.*freeze_language_model: true"):
        apply_freeze_config(model, everything)


def test_freeze_config_rejects_non_booleans():
    with pytest.raises(ModelLoadError, match="freeze_config.freeze_vision_tower must be true or false"):
        FreezeConfig(freeze_vision_tower="yes")  # type: ignore[arg-type]


def test_a_model_without_known_parts_is_reported():
    with pytest.raises(ModelLoadError, match="cannot find the vision tower and language model of Sequential"):
        vlm_parts(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_processor_loads_and_pads(llava_dir: Path):
    processor = NeMoAutoProcessor.from_pretrained(llava_dir)
    assert type(processor).__name__ == "LlavaProcessor"
    assert processor.tokenizer.pad_token is not None
    out = processor(text=["USER: <image>\nhi"], images=[Image.new("RGB", (50, 40))], return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 32, 32)
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 16  # (32 / 8) ** 2 patches


def test_qwen_processor_loads_without_torchvision_images_only(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    folder = write_qwen_processor(tmp_path / "qwen")
    with caplog.at_level(logging.WARNING):
        processor = NeMoAutoProcessor.from_pretrained(folder)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert "without its video processor (torchvision is not installed)" in caplog.text
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n"
    out = processor(text=[text], images=[Image.new("RGB", (32, 32))], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 16  # 64 patches merged 2x2
    # It saves (for checkpoints) and the saved folder loads again.
    processor.save_pretrained(tmp_path / "saved")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert type(NeMoAutoProcessor.from_pretrained(tmp_path / "saved")).__name__ == "Qwen2_5_VLProcessor"
    assert "the folder has no video processor config" in caplog.text


def test_missing_or_incomplete_processor_folders_are_reported(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        NeMoAutoProcessor.from_pretrained(tmp_path / "nope")
    tiny_tokenizer("llava").save_pretrained(tmp_path / "text_only")
    with pytest.raises(ModelLoadError, match="has no image processor"):
        NeMoAutoProcessor.from_pretrained(tmp_path / "text_only")


def test_loading_errors(tmp_path: Path, llava_dir: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(
        LlamaConfig(**{**tiny_vlm_config("llava", tiny_tokenizer("llava")).text_config.to_dict()})
    ).save_pretrained(tmp_path / "llama")
    with pytest.raises(ModelLoadError, match="is not an image-text-to-text model .*LlamaConfig.*llm finetune"):
        NeMoAutoModelForImageTextToText.from_pretrained(tmp_path / "llama")
    with pytest.raises(ModelLoadError, match="does not exist"):
        NeMoAutoModelForImageTextToText.from_pretrained(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="init_device='meta' is not supported for image-text-to-text"):
        NeMoAutoModelForImageTextToText.from_pretrained(llava_dir, init_device="meta")
    with pytest.raises(ModelLoadError, match="torch_dtype='f8' is not a dtype"):
        NeMoAutoModelForImageTextToText.from_pretrained(llava_dir, torch_dtype="f8")
    with pytest.raises(ModelLoadError, match="not supported; use 'sdpa'"):
        NeMoAutoModelForImageTextToText.from_pretrained(llava_dir, attn_implementation="bogus")
    # A hub id while offline (the conftest forces offline mode).
    for load in (NeMoAutoModelForImageTextToText.from_pretrained, NeMoAutoProcessor.from_pretrained):
        with pytest.raises(ModelLoadError, match="could not load 'someorg/missing-vlm' from the Hugging Face Hub"):
            load("someorg/missing-vlm")


def test_processor_and_model_must_match(llava_dir: Path):
    processor = NeMoAutoProcessor.from_pretrained(llava_dir)
    model = NeMoAutoModelForImageTextToText.from_pretrained(llava_dir)
    check_processor_matches_model(processor, model)  # the pair saved together

    qwen = tiny_vlm("qwen2_5_vl", tiny_tokenizer("qwen2_5_vl"))
    with pytest.raises(ModelLoadError, match="processor is a LlavaProcessor but the model is 'qwen2_5_vl'.*Qwen2_5_VL"):
        check_processor_matches_model(processor, qwen)

    other_token = tiny_vlm_config("llava", processor.tokenizer)
    other_token.image_token_id = 5
    from transformers import AutoModelForImageTextToText

    with pytest.raises(ModelLoadError, match="marks images with token id 3 .*expects image token id 5"):
        check_processor_matches_model(processor, AutoModelForImageTextToText.from_config(other_token))

    processor.tokenizer.add_tokens([f"<new{i}>" for i in range(50)])
    with pytest.raises(ModelLoadError, match="tokenizer has 350 tokens but the model's embedding table has 300 rows"):
        check_processor_matches_model(processor, model)

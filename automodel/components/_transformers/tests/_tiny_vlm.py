"""Tiny random VLM configs of four families (hidden 64, 2 text layers, 2 vision layers, 32x32 images) and two
small processors (LLaVA; Qwen2.5-VL written as a folder, since building its processor object needs torchvision)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForImageTextToText, PretrainedConfig, PreTrainedTokenizerFast

FAMILIES = ("llava", "qwen2_5_vl", "idefics3", "gemma3")
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: {% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# The special tokens each family's config refers to; they get the first ids of the tiny vocabulary.
SPECIAL_TOKENS = {
    "llava": ["<pad>", "<s>", "</s>", "<image>"],
    "qwen2_5_vl": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    + ["<|image_pad|>", "<|video_pad|>"],
    "idefics3": ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>"],
    "gemma3": ["<pad>", "<eos>", "<bos>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
}
_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIAL_TOKENS[family],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(["what colour is the shape? a red circle USER ASSISTANT"] * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=SPECIAL_TOKENS[family][2], pad_token=SPECIAL_TOKENS[family][0]
    )


def tiny_vlm_config(family: str, tokenizer: Any) -> PretrainedConfig:
    """A config whose special-token ids are `tokenizer`'s and whose vocabulary is its length."""
    import transformers

    ids = tokenizer.convert_tokens_to_ids
    text = {**_TEXT, "vocab_size": len(tokenizer), "num_key_value_heads": 2, "max_position_embeddings": 512}
    if family == "llava":
        return transformers.LlavaConfig(
            vision_config={**_VISION, "model_type": "clip_vision_model", "image_size": 32, "patch_size": 8},
            text_config={**text, "model_type": "llama"},
            image_token_id=ids("<image>"),
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
        )
    if family == "qwen2_5_vl":
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "patch_size": 4}
        vision |= {"spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 16, "out_hidden_size": 64}
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        return transformers.Qwen2_5_VLConfig(
            vision_config={**vision, "fullatt_block_indexes": [1]},
            text_config={**text, "rope_parameters": rope, "bos_token_id": None, "eos_token_id": ids("<|im_end|>")},
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )
    if family == "idefics3":
        return transformers.Idefics3Config(
            vision_config={**_VISION, "image_size": 32, "patch_size": 8},
            text_config={**text, "model_type": "llama"},
            image_token_id=ids("<image>"),
            scale_factor=2,
        )
    if family == "gemma3":
        return transformers.Gemma3Config(
            vision_config={**_VISION, "image_size": 32, "patch_size": 8},
            text_config={**text, "head_dim": 16, "sliding_window": 64},
            mm_tokens_per_image=4,
            image_token_id=ids("<image_soft_token>"),
            boi_token_id=ids("<start_of_image>"),
            eoi_token_id=ids("<end_of_image>"),
        )
    raise AssertionError(f"unknown family {family}")


def tiny_vlm(family: str, tokenizer: Any, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(tiny_vlm_config(family, tokenizer)).eval()


def llava_processor(tokenizer: Any | None = None) -> Any:
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer or tiny_tokenizer("llava"),
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def write_qwen_processor(folder: Path, tokenizer: Any | None = None) -> Path:
    """A Qwen2.5-VL processor folder as `save_pretrained` writes it (image processor inside processor_config.json)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    (tokenizer or tiny_tokenizer("qwen2_5_vl")).save_pretrained(folder)
    images = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 1024, "longest_edge": 1024}, patch_size=4, temporal_patch_size=2, merge_size=2
    )
    config = {"processor_class": "Qwen2_5_VLProcessor", "image_processor": images.to_dict()}
    (folder / "processor_config.json").write_text(json.dumps(config, indent=2))
    # As on the Hub: a video processor config, whose class needs torchvision.
    video = {**images.to_dict(), "video_processor_type": "Qwen2VLVideoProcessor"}
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    (folder / "chat_template.jinja").write_text(
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}"
        "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    )
    return folder

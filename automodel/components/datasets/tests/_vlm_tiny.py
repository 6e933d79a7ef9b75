"""Tiny offline processors for four VLM families (LLaVA, Qwen2.5-VL, Idefics3, Gemma 3): a byte-level BPE tokenizer
with the family's special tokens, a chat template written in the family's style, and its image processor at 32x32.

Qwen2.5-VL's processor declares a video processor that needs torchvision; `_images_only` builds it without one (as
`NeMoAutoProcessor` does when torchvision is missing).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

FAMILIES = ("llava", "qwen2_5_vl", "idefics3", "gemma3")
IMAGE_SIZE = 32
CORPUS = [
    "What colour is the shape? A red circle. A blue square. A green triangle. How many shapes are there? Two.",
    "Describe this image. The receipt lists tea and cake. USER: ASSISTANT: User: Assistant: user assistant model",
    "system You are a helpful assistant. Answer in one word. yes no left right top bottom 0123456789",
]


def _parts(image: str) -> str:
    """Jinja for one message's content: a string, or text and image parts (an image renders as `image`)."""
    return (
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + image + "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    )


TEMPLATES = {
    # USER: <image>\nquestion ASSISTANT: answer</s>
    "llava": "{% for message in messages %}{{ message['role'] | upper }}: "
    + _parts("<image>\n")
    + "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}",
    # ChatML with vision markers
    "qwen2_5_vl": "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    + _parts("<|vision_start|><|image_pad|><|vision_end|>")
    + "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    # SmolVLM style
    "idefics3": "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    + _parts("<image>")
    + "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}",
    # Gemma: the assistant is "model"
    "gemma3": "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    + _parts("<start_of_image>")
    + "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
}
SPECIAL_TOKENS = {
    "llava": ["<pad>", "<s>", "</s>", "<image>"],
    "qwen2_5_vl": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    + ["<|image_pad|>", "<|video_pad|>"],
    "idefics3": ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>"]
    + ["<global-img>"],
    "gemma3": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"]
    + ["<image_soft_token>"],
}
# The tokens that end an assistant turn (and must carry loss).
END_OF_TURN = {"llava": "</s>", "qwen2_5_vl": "<|im_end|>", "idefics3": "<end_of_utterance>", "gemma3": "<end_of_turn>"}


def tokenizer(family: str, vocab_size: int = 320) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS[family],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 3, trainer)
    special = {
        "llava": {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
        "qwen2_5_vl": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "idefics3": {"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|endoftext|>"},
        "gemma3": {
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "pad_token": "<pad>",
            "extra_special_tokens": {
                "boi_token": "<start_of_image>",
                "eoi_token": "<end_of_image>",
                "image_token": "<image_soft_token>",
            },
        },
    }[family]
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


def _images_only(processor_cls: type, **kwargs: Any) -> Any:
    processor = processor_cls.__new__(processor_cls)
    processor.get_attributes = lambda: ["image_processor", "tokenizer"]
    processor_cls.__init__(processor, **kwargs)
    return processor


def build_processor(family: str) -> Any:
    """The tiny processor of `family` (images of any size are resized to about 32x32)."""
    import transformers

    tok = tokenizer(family)
    template = TEMPLATES[family]
    if family == "llava":
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        images = CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )
        return transformers.LlavaProcessor(
            image_processor=images,
            tokenizer=tok,
            patch_size=8,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=template,
        )
    if family == "qwen2_5_vl":
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        pixels = IMAGE_SIZE * IMAGE_SIZE
        images = Qwen2VLImageProcessorPil(
            size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=4, temporal_patch_size=2, merge_size=2
        )
        return _images_only(
            transformers.Qwen2_5_VLProcessor, image_processor=images, tokenizer=tok, chat_template=template
        )
    if family == "idefics3":
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        images = Idefics3ImageProcessorPil(
            size={"longest_edge": IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE}, do_image_splitting=False
        )
        return transformers.Idefics3Processor(
            image_processor=images, tokenizer=tok, image_seq_len=4, chat_template=template
        )
    if family == "gemma3":
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

        images = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        return transformers.Gemma3Processor(
            image_processor=images, tokenizer=tok, image_seq_length=4, chat_template=template
        )
    raise AssertionError(f"unknown family {family}")


def shape_image(colour: str = "red", size: tuple[int, int] = (40, 30)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse((5, 5, size[0] - 5, size[1] - 5), fill=colour)
    return image


def write_png(path: Path, colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape_image(colour).save(path)
    return path


def png_bytes(colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    shape_image(colour).save(buffer, format="PNG")
    return buffer.getvalue()


def conversation(image: Any, question: str = "What colour is the shape?", answer: str = "A red circle.") -> list:
    return [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]

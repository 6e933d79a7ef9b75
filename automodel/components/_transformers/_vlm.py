"""Image-text-to-text models: `NeMoAutoModelForImageTextToText`, `NeMoAutoProcessor`, `FreezeConfig` and the
checks that a processor fits its model. They return plain transformers objects, not wrappers.

A VLM is a vision tower (an image encoder), a projector that maps image features into the language model's
embedding space, and a language model. Families name those parts differently; `vlm_parts` finds them.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from automodel.components._transformers._auto import (
    _drop_ignored_options,
    _load_errors,
    _log_loaded,
    _with_attn_fallback,
    build_config,
)
from automodel.components._transformers._dtype import parse_dtype
from automodel.components._transformers._errors import ModelLoadError
from automodel.components._transformers._paths import looks_local, missing_path_error, resolve_model_path

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin

logger = logging.getLogger(__name__)


def _not_a_vlm(name: str, error: ValueError) -> ModelLoadError | None:
    """The error for a config that AutoModelForImageTextToText has no class for (e.g. a text-only Llama)."""
    message = str(error)
    if "Unrecognized configuration class" not in message:
        return None
    config_class = message.split("<class '", 1)[-1].split("'", 1)[0].rsplit(".", 1)[-1]
    return ModelLoadError(
        f"{name!r} is not an image-text-to-text model (its config is {config_class}); use a vision-language model "
        "(LLaVA, Qwen2.5-VL, Idefics3/SmolVLM, Gemma 3...), or `automodel llm finetune` with "
        "NeMoAutoModelForCausalLM for a text-only model"
    )


class NeMoAutoModelForImageTextToText:
    """Loads vision-language models from a local folder or a Hub id (`from_pretrained`), or builds a randomly
    initialised one from a config (`from_config`). Same options and errors as `NeMoAutoModelForCausalLM`."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        torch_dtype: torch.dtype | str | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
        init_device: str | None = None,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """The model at `pretrained_model_name_or_path`, in float32 unless `torch_dtype`/`dtype` says otherwise.

        `kwargs` go to `transformers.AutoModelForImageTextToText.from_pretrained` (revision, token...).
        """
        from transformers import AutoModelForImageTextToText

        _drop_ignored_options(kwargs)
        if init_device is not None:
            raise ModelLoadError(
                f"init_device={init_device!r} is not supported for image-text-to-text models yet; remove it (the "
                "model is loaded whole on every rank, then sharded)"
            )
        resolved_dtype = parse_dtype(torch_dtype, dtype)
        name = os.path.expanduser(os.fspath(pretrained_model_name_or_path))
        path = resolve_model_path(name)
        from_hub = path == name and not looks_local(name)

        def load(attn: str | None) -> PreTrainedModel:
            return AutoModelForImageTextToText.from_pretrained(
                path,
                *model_args,
                dtype=resolved_dtype,
                attn_implementation=attn,
                trust_remote_code=trust_remote_code,
                **kwargs,
            )

        model = _load_vlm(load, attn_implementation, name, from_hub)
        _log_loaded(model, path)
        return model

    @classmethod
    def from_config(
        cls,
        config: PretrainedConfig | Mapping[str, Any] | str | os.PathLike,
        *,
        torch_dtype: torch.dtype | str | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """A randomly initialised model from `config`: a `PretrainedConfig`, a dict with `model_type` (nested
        `vision_config` / `text_config` dicts are fine), a folder or config.json path, or a Hub id."""
        from transformers import AutoModelForImageTextToText

        _drop_ignored_options(kwargs)
        resolved_dtype = parse_dtype(torch_dtype, dtype)
        built = build_config(config, trust_remote_code=trust_remote_code, **kwargs)
        if resolved_dtype == "auto":  # nothing to load: "auto" can only mean the dtype the config names
            config_dtype = getattr(built, "dtype", None)
            resolved_dtype = parse_dtype(None, config_dtype) if config_dtype is not None else torch.float32
        name = getattr(built, "model_type", type(built).__name__)

        def load(attn: str | None) -> PreTrainedModel:
            # A fresh copy per attempt: transformers writes the chosen dtype and attention into the config.
            return AutoModelForImageTextToText.from_config(
                copy.deepcopy(built),
                dtype=resolved_dtype,
                attn_implementation=attn,
                trust_remote_code=trust_remote_code,
            )

        model = _load_vlm(load, attn_implementation, name, from_hub=False)
        _log_loaded(model, f"a {name} config (random init)")
        return model


def _load_vlm(
    load: Callable[[str | None], PreTrainedModel], attn_implementation: str | None, name: str, from_hub: bool
) -> PreTrainedModel:
    """`load` with the attention fallback, turning load errors (and "not an image-text-to-text model") into
    user errors."""
    with _load_errors(name, from_hub):
        try:
            return _with_attn_fallback(load, attn_implementation)
        except ValueError as error:
            not_a_vlm = _not_a_vlm(name, error)
            if not_a_vlm is None:
                raise
            raise not_a_vlm from error


# --- processors -------------------------------------------------------------------------------------------------
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


class NeMoAutoProcessor:
    """`transformers.AutoProcessor` with our path handling and errors, a pad token always set, and an images-only
    fallback when torchvision (needed by some families' video processors, e.g. Qwen2.5-VL's) is not installed."""

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *, trust_remote_code: bool = False, **kwargs: Any
    ) -> ProcessorMixin:
        """The processor (tokenizer + image processor + chat template) at `pretrained_model_name_or_path`."""
        from transformers import AutoProcessor

        name = os.path.expanduser(os.fspath(pretrained_model_name_or_path))
        local = looks_local(name)
        if local and not Path(name).exists():
            raise missing_path_error(name)
        if local and not Path(name).is_dir():
            raise ModelLoadError(
                f"processor path {name!r} is a file; expected the model's folder (processor_config.json or "
                "preprocessor_config.json, tokenizer files)"
            )
        with _load_errors(name, from_hub=not local):
            try:
                processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs)
            except (ImportError, OSError) as error:
                # Without torchvision a video processor cannot be built (ImportError); an images-only processor
                # saved by us has no video processor config at all (OSError).
                if "torchvision" not in str(error).lower() and "video processor" not in str(error).lower():
                    raise
                processor = _images_only_processor(name, error)
        if not hasattr(processor, "image_processor"):
            where = f"directory {name!r}" if local else f"{name!r}"
            raise ModelLoadError(
                f"{where} has no image processor ({' or '.join(_PROCESSOR_FILES)}), so it cannot prepare images; "
                "point the processor section at the vision-language model's own folder"
            )
        tokenizer = processor.tokenizer
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            logger.info("Tokenizer has no pad token; using eos %r as pad", tokenizer.eos_token)
            tokenizer.pad_token = tokenizer.eos_token
        return processor


def _images_only_processor(path: str, error: Exception) -> ProcessorMixin:
    """The processor at `path` without its video processor, for families whose video processor needs torchvision.

    ProcessorMixin insists on every sub-processor it declares; the instance-level `get_attributes` below narrows
    the declaration to the image processor and tokenizer for this object only (construction, saving and repr).
    """
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer, ProcessorMixin

    processor_dict, _ = ProcessorMixin.get_processor_dict(path)
    class_name = processor_dict.get("processor_class")
    processor_cls = getattr(transformers, class_name, None) if isinstance(class_name, str) else None
    expected = {"image_processor", "tokenizer", "video_processor"}
    if processor_cls is None or set(processor_cls.get_attributes()) != expected:
        raise error
    params = inspect.signature(processor_cls.__init__).parameters
    extra = {k: v for k, v in processor_dict.items() if k in params and k not in processor_cls.get_attributes()}
    processor = processor_cls.__new__(processor_cls)
    processor.get_attributes = lambda: ["image_processor", "tokenizer"]
    processor_cls.__init__(
        processor,
        image_processor=AutoImageProcessor.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(path),
        **extra,
    )
    logger.warning(
        "%s loaded without its video processor (%s): images work, videos do not",
        class_name,
        "torchvision is not installed"
        if isinstance(error, ImportError)
        else "the folder has no video processor config",
    )
    return processor


def check_processor_matches_model(processor: Any, model: nn.Module) -> None:
    """Raise if `processor` cannot feed `model`: another family's processor, another image token, a larger vocab."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    config = model.config
    model_type = getattr(config, "model_type", None)
    expected = PROCESSOR_MAPPING_NAMES.get(model_type) if model_type else None
    expected_names = {expected} if isinstance(expected, str) else set(expected or ())
    mro = {klass.__name__ for klass in type(processor).__mro__}
    if expected_names and not expected_names & mro:
        raise ModelLoadError(
            f"the processor is a {type(processor).__name__} but the model is {model_type!r}, which needs a "
            f"{' or '.join(sorted(expected_names))}; load the processor from the model's own folder (remove the "
            "processor section, or point processor.pretrained_model_name_or_path at the model)"
        )
    image_token_id = getattr(config, "image_token_id", None)
    if image_token_id is None:
        image_token_id = getattr(config, "image_token_index", None)
    processor_ids = [i for i in (getattr(processor, "image_token_ids", None) or []) if i is not None]
    if image_token_id is not None and processor_ids and image_token_id not in processor_ids:
        tokenizer = processor.tokenizer
        raise ModelLoadError(
            f"the processor marks images with token id {processor_ids[0]} "
            f"({tokenizer.convert_ids_to_tokens(processor_ids[0])!r}) but the model expects image token id "
            f"{image_token_id} (config image_token_id); the processor and the model come from different checkpoints"
        )
    embeddings = model.get_input_embeddings()
    vocab = len(processor.tokenizer)
    if embeddings is not None and vocab > embeddings.num_embeddings:
        raise ModelLoadError(
            f"the processor's tokenizer has {vocab} tokens but the model's embedding table has "
            f"{embeddings.num_embeddings} rows; the processor belongs to another model (or tokens were added "
            "without resizing the embeddings: model.resize_token_embeddings)"
        )


# --- the parts of a VLM, freezing -----------------------------------------------------------------------------
# Attribute names of each part across families (LLaVA and Gemma 3: vision_tower / multi_modal_projector /
# language_model; Qwen2.5-VL: visual (its projector, visual.merger, is inside) / language_model; Idefics3 and
# SmolVLM: vision_model / connector / text_model).
_VISION_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder", "image_encoder")
_PROJECTOR_NAMES = ("multi_modal_projector", "connector", "mm_projector", "projector")
_LANGUAGE_NAMES = ("language_model", "text_model")
_OUTPUT_NAMES = ("lm_head",)


@dataclass(frozen=True)
class VLMParts:
    """Module names (as in `named_modules`) of a VLM's parts."""

    vision: list[str]
    projector: list[str]
    language: list[str]


def _find(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    """Modules called one of `names` at most two levels down (`vision_tower`, `model.vision_tower`)."""
    found = []
    for name, _ in model.named_modules():
        parts = name.split(".")
        if name and len(parts) <= 2 and parts[-1] in names and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    return found


def vlm_parts(model: nn.Module) -> VLMParts:
    """The vision tower, projector and language model (with its output head) of `model`."""
    parts = VLMParts(
        vision=_find(model, _VISION_NAMES),
        projector=_find(model, _PROJECTOR_NAMES),
        language=_find(model, _LANGUAGE_NAMES) + _find(model, _OUTPUT_NAMES),
    )
    if not parts.vision or not parts.language:
        top = [name for name, _ in model.named_children()]
        inner = [f"{name}.{child}" for name, module in model.named_children() for child, _ in module.named_children()]
        raise ModelLoadError(
            f"cannot find the vision tower and language model of {type(model).__name__} (looked for modules named "
            f"{', '.join(_VISION_NAMES + _LANGUAGE_NAMES)}; it has {', '.join(top + inner)}); freeze_config and the "
            "LoRA defaults support LLaVA, Qwen2.5-VL, Idefics3/SmolVLM and Gemma 3 style models"
        )
    return parts


def non_language_modules(model: nn.Module) -> list[str]:
    """Module names of the vision tower and projector: what LoRA leaves alone by default."""
    parts = vlm_parts(model)
    return parts.vision + parts.projector


@dataclass
class FreezeConfig:
    """The `freeze_config:` section: which parts of a VLM stay frozen (the reference system's keys and defaults).

    `freeze_vision_tower` freezes the image encoder but not the projector, which maps image features into the
    language model and is usually what adapts fastest (Qwen2.5-VL's projector lives inside its vision tower and is
    frozen with it). `freeze_embeddings` freezes the language model's token embeddings (and an output head tied to
    them).
    """

    freeze_embeddings: bool = True
    freeze_vision_tower: bool = True
    freeze_language_model: bool = False
    freeze_projector: bool = False

    def __post_init__(self) -> None:
        for key in ("freeze_embeddings", "freeze_vision_tower", "freeze_language_model", "freeze_projector"):
            if not isinstance(getattr(self, key), bool):
                raise ModelLoadError(f"freeze_config.{key} must be true or false, got {getattr(self, key)!r}")


def apply_freeze_config(model: nn.Module, config: FreezeConfig) -> dict[str, int]:
    """Set `requires_grad=False` on the parts `config` names; return parameter counts (trainable, frozen).

    Raises when nothing is left to train.
    """
    parts = vlm_parts(model)
    modules = dict(model.named_modules())
    frozen: list[str] = []
    if config.freeze_vision_tower:
        frozen += parts.vision
    if config.freeze_projector:
        frozen += parts.projector
    if config.freeze_language_model:
        frozen += parts.language
    for name in frozen:
        modules[name].requires_grad_(False)
    if config.freeze_embeddings:
        embeddings = model.get_input_embeddings()
        if embeddings is not None:
            embeddings.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        settings = ", ".join(f"{key}: {str(value).lower()}" for key, value in vars(config).items())
        raise ModelLoadError(
            f"freeze_config freezes every parameter ({settings}), so nothing would train; set one of them to false "
            "(e.g. freeze_language_model: false) or add a peft section"
        )
    logger.info(
        "freeze_config: %.1fM of %.1fM parameters trainable (frozen: %s)",
        trainable / 1e6,
        total / 1e6,
        ", ".join(frozen + (["embeddings"] if config.freeze_embeddings else [])) or "nothing",
    )
    return {"trainable": trainable, "frozen": total - trainable}

"""Fold adapters into the base weights: in place on a live model, or base folder + adapter folder -> HF folder."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automodel.components._peft._apply import lora_modules
from automodel.components._peft._errors import PeftError
from automodel.components._peft._hf_format import ADAPTER_CONFIG_NAME, _read_json, apply_lora_from_pretrained
from automodel.components._peft._layer import LinearLoRA, delta_weight, dora_weight_norm, unpatch_linear

logger = logging.getLogger(__name__)

# Files that make up a Hugging Face tokenizer folder (any of them may be absent).
_TOKENIZER_GLOBS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "chat_template.*",
    "*.tiktoken",
    "spiece.model",
)


def _merged_weight(module: LinearLoRA) -> torch.Tensor:
    # In float32 whatever the storage dtype: bf16 additions of a small delta would round it away.
    weight = module.weight.detach().float()
    delta = delta_weight(module).detach().float()
    merged = weight + delta
    if module.use_dora:
        magnitude = module.lora_magnitude_vector.detach().float()
        merged = (magnitude / dora_weight_norm(module).float()).unsqueeze(1) * merged
    return merged.to(module.weight.dtype)


def merge_lora_(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and restore plain ``nn.Linear`` modules, in place; returns ``model``.

    A merged weight that was tied to another module (e.g. an adapted ``lm_head`` tied to the embeddings) is untied,
    and ``config.tie_word_embeddings`` is cleared so that saving keeps both.
    """
    counts: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        counts[id(param)] = counts.get(id(param), 0) + 1
    untied = []
    with torch.no_grad():
        for name, module in lora_modules(model).items():
            merged = _merged_weight(module)
            if counts.get(id(module.weight), 0) > 1:
                module.weight = nn.Parameter(merged, requires_grad=False)
                untied.append(name)
            else:
                module.weight.copy_(merged)
            unpatch_linear(module)
    if untied:
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
        logger.info("merged weights of %s were tied to other modules; they are untied now", untied)
    return model


def _refuse_output_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PeftError(f"merge output {out} already exists and is not an empty folder; choose a new folder")


def _load_base(base: str | os.PathLike) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        # dtype="auto": keep the checkpoint's dtype so the merged folder is the same size as the base.
        return AutoModelForCausalLM.from_pretrained(str(base), dtype="auto")
    except OSError as err:
        raise PeftError(f"cannot load the base model {str(base)!r}: {err}") from None


def _base_path(base_model: Any, adapter_config: dict[str, Any]) -> str | None:
    if isinstance(base_model, str | os.PathLike):
        return str(base_model)
    if base_model is None:
        return adapter_config.get("base_model_name_or_path")
    return getattr(base_model, "name_or_path", None) or getattr(
        getattr(base_model, "config", None), "_name_or_path", None
    )


def _copy_tokenizer(sources: list[tuple[str, str | None]], dest: Path) -> None:
    for label, source in sources:
        if source is None:
            continue
        folder = Path(source)
        if folder.is_dir():
            files = sorted({f for pattern in _TOKENIZER_GLOBS for f in folder.glob(pattern) if f.is_file()})
            if files:
                for file in files:
                    shutil.copy2(file, dest / file.name)
                logger.info("tokenizer copied from %s (%s)", folder, label)
                return
            if label == "tokenizer_source":
                raise PeftError(f"tokenizer_source {folder} holds no tokenizer files (tokenizer.json, ...)")
        elif label in ("tokenizer_source", "base model"):
            # A hub id: let transformers fetch and rewrite it.
            from transformers import AutoTokenizer

            try:
                AutoTokenizer.from_pretrained(source).save_pretrained(dest)
            except OSError as err:
                if label == "tokenizer_source":
                    raise PeftError(f"cannot load tokenizer_source {source!r}: {err}") from None
                continue
            return
    logger.warning("no tokenizer found for the merged model in %s; pass tokenizer_source", [s for _, s in sources])


def merge_adapter(
    base_model: str | os.PathLike | nn.Module | None,
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    tokenizer_source: str | os.PathLike | None = None,
) -> Path:
    """Write a full HF model folder to ``output_dir``: ``base_model`` with the adapter in ``adapter_dir`` folded in.

    ``base_model`` is an HF folder/hub id (None: the adapter's ``base_model_name_or_path``) or a loaded model, which
    is merged in place. The tokenizer comes from ``tokenizer_source``, else the adapter folder, else the base folder.
    Nothing is written when anything fails (the folder is published by one rename); an existing non-empty
    ``output_dir`` is refused.
    """
    out = Path(output_dir)
    _refuse_output_dir(out)
    adapter_config = _read_json(Path(adapter_dir) / ADAPTER_CONFIG_NAME)
    base_path = _base_path(base_model, adapter_config)
    if isinstance(base_model, nn.Module):
        model = base_model
    elif base_path is None:
        raise PeftError(
            f"merge: no base model given and {Path(adapter_dir) / ADAPTER_CONFIG_NAME} records no "
            "base_model_name_or_path; pass the base model folder"
        )
    else:
        model = _load_base(base_path)
    apply_lora_from_pretrained(model, adapter_dir)
    merge_lora_(model)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        sources = [
            ("tokenizer_source", None if tokenizer_source is None else str(tokenizer_source)),
            ("adapter folder", str(adapter_dir)),
            ("base model", base_path),
        ]
        _copy_tokenizer(sources, tmp)
        _refuse_output_dir(out)  # checked again: the merge may have taken a while
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("merged %s into %s -> %s", adapter_dir, base_path or "the given model", out)
    return out

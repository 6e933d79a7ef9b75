"""`PeftConfig`: the `peft:` section of a recipe config (NeMo Automodel field names)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch

from automodel.components._peft._errors import PeftError

logger = logging.getLogger(__name__)

# The reference system's default when a config names no target: every linear whose name ends in `_proj`.
DEFAULT_TARGET_MODULES = ("*_proj",)

DROPOUT_POSITIONS = ("pre", "post")
LORA_A_INITS = ("xavier", "kaiming", "gaussian")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def _as_pattern_list(key: str, value: object) -> list[str]:
    # A lone string is one pattern; YAML users often write `target_modules: q_proj`.
    if isinstance(value, str):
        return [value]
    if value is None:
        return []
    try:
        patterns = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise PeftError(f"peft.{key} must be a list of module names or wildcards, got {value!r}") from None
    bad = [p for p in patterns if not isinstance(p, str) or not p]
    if bad:
        raise PeftError(f"peft.{key} must hold non-empty strings (module names or wildcards), got {bad!r}")
    return patterns


def parse_lora_dtype(value: str | None) -> torch.dtype | None:
    """Map a dtype name ("bfloat16", "bf16", "torch.float32"...) to a torch dtype; None stays None."""
    if value is None:
        return None
    name = str(value).removeprefix("torch.").lower()
    if name not in _DTYPES:
        raise PeftError(f"peft.lora_dtype={value!r} is not a known dtype; choose one of {sorted(_DTYPES)} or null")
    return _DTYPES[name]


@dataclass
class PeftConfig:
    """Which linear layers get LoRA adapters and how they are built.

    Patterns in ``target_modules``/``exclude_modules`` are module names or fnmatch wildcards matched against the full
    dotted name and the last name component ("q_proj", "*_proj", "*.self_attn.*", "model.layers.0.mlp.up_proj");
    ``exclude_modules`` wins. ``match_all_linear`` adapts every ``nn.Linear`` except the output head.

    ``adapter_path`` starts from an existing HF PEFT adapter folder (made by PEFT or by us): its own
    ``adapter_config.json`` then decides the targets, rank and alpha, and its weights are loaded before training.
    A single string is one pattern (``target_modules: '*_proj'``); with no target at all, ``'*_proj'``, and with
    only ``exclude_modules``, every linear layer but those (both as in the reference system).
    ``use_triton`` is accepted for the reference system's configs: its Triton kernel computes the same LoRA
    update as our PyTorch one, so it changes nothing here.
    """

    target_modules: list[str] | str = field(default_factory=list)
    exclude_modules: list[str] | str = field(default_factory=list)
    match_all_linear: bool = False
    dim: int = 8
    alpha: int | float = 32
    dropout: float = 0.0
    dropout_position: Literal["pre", "post"] = "post"
    lora_A_init: Literal["xavier", "kaiming", "gaussian"] = "xavier"
    use_dora: bool = False
    use_rslora: bool = False
    lora_dtype: str | None = None
    adapter_path: str | None = None
    use_triton: bool = False

    def __post_init__(self) -> None:
        self.target_modules = _as_pattern_list("target_modules", self.target_modules)
        self.exclude_modules = _as_pattern_list("exclude_modules", self.exclude_modules)
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            raise PeftError(f"peft.dim (the LoRA rank) must be a positive integer, got {self.dim!r}; e.g. dim: 8")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or self.alpha <= 0:
            raise PeftError(f"peft.alpha must be a positive number, got {self.alpha!r}; e.g. alpha: 32")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise PeftError(f"peft.dropout must be in [0, 1), got {self.dropout!r}; use 0.0 to disable it")
        if self.dropout_position not in DROPOUT_POSITIONS:
            raise PeftError(
                f"peft.dropout_position={self.dropout_position!r} is not supported; choose one of "
                f"{list(DROPOUT_POSITIONS)} ('pre' drops the LoRA input like HF PEFT, 'post' its output)"
            )
        if self.lora_A_init not in LORA_A_INITS:
            raise PeftError(
                f"peft.lora_A_init={self.lora_A_init!r} is not supported; choose one of {list(LORA_A_INITS)}"
            )
        parse_lora_dtype(self.lora_dtype)
        if not isinstance(self.use_triton, bool):
            raise PeftError(f"peft.use_triton must be true or false, got {self.use_triton!r}")
        if self.use_triton:
            logger.warning(
                "peft.use_triton is ignored: there is no Triton LoRA kernel here; the PyTorch LoRA computes the "
                "same result"
            )
        if not self.target_modules and not self.match_all_linear and self.adapter_path is None:
            if self.exclude_modules:  # the reference system's rule: every linear layer except the excluded ones
                self.match_all_linear = True
                logger.info(
                    "peft: exclude_modules without target_modules: adapting every linear layer except %s (the "
                    "output head only when named in target_modules)",
                    self.exclude_modules,
                )
            else:
                self.target_modules = list(DEFAULT_TARGET_MODULES)
                logger.info(
                    "peft: no target_modules given; adapting every linear layer named '*_proj' (set target_modules "
                    "or match_all_linear: true to choose)"
                )

    @property
    def scale(self) -> float:
        """The factor applied to ``B @ A``: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.alpha / (self.dim**0.5 if self.use_rslora else self.dim)

    @property
    def torch_lora_dtype(self) -> torch.dtype | None:
        """``lora_dtype`` as a torch dtype (None: follow each base weight)."""
        return parse_lora_dtype(self.lora_dtype)

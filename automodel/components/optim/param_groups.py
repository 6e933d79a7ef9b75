"""Parameter groups from named parameters: which ones skip weight decay, and per-pattern learning-rate multipliers.

Name patterns are matched case-insensitively. A pattern with a wildcard (``*``, ``?`` or ``[``) is an fnmatch glob
over the whole name (``*embed_tokens*``, ``*.bias``); a pattern without one matches anywhere in the name
(``norm`` matches ``model.layers.0.input_layernorm.weight``).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from automodel.components.optim.scheduler import OptimError

logger = logging.getLogger(__name__)

DEFAULT_NO_DECAY_PATTERNS = ("bias", "norm")

NamedParams = list[tuple[str, torch.Tensor]]


def name_matches(name: str, pattern: str) -> bool:
    """Whether parameter ``name`` matches ``pattern`` (glob when it has ``*?[``, else substring; case-insensitive)."""
    name, pattern = name.lower(), pattern.lower()
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def skips_weight_decay(name: str | None, param: torch.Tensor, no_decay_patterns: Iterable[str]) -> bool:
    """Biases and norm scales (fewer than 2 dims, or a name matching a pattern) get no weight decay.

    Decaying them only shrinks a layer's output scale, which the next layer has to undo.
    """
    if param.ndim < 2:
        return True
    return name is not None and any(name_matches(name, p) for p in no_decay_patterns)


def named_param_groups(params: Any, owner: str) -> list[dict[str, Any]]:
    """Normalise an optimizer's ``params`` to groups whose ``"params"`` are ``(name, parameter)`` pairs.

    Accepts what ``torch.optim`` accepts when it carries names: an iterable of ``(name, parameter)`` pairs (e.g.
    ``model.named_parameters()``), or of dicts whose ``"params"`` are such pairs (plus per-group options).
    """
    items = list(params)
    if not items:
        raise OptimError(f"{owner} got an empty parameter list: no trainable parameter to optimize")
    if all(isinstance(item, dict) for item in items):
        groups = [{**item, "params": list(item.get("params", []))} for item in items]
    else:
        groups = [{"params": items}]
    for group in groups:
        for entry in group["params"]:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
                raise OptimError(
                    f"{owner} needs parameter names to decide how to treat each parameter, but got "
                    f"{type(entry).__name__} entries; pass (name, parameter) pairs such as "
                    "list(model.named_parameters()) (the finetune recipe does)"
                )
    return groups


def split_names(params: Any) -> tuple[list[str | None], list[torch.Tensor]]:
    """``(names, tensors)`` from plain parameters or ``(name, parameter)`` pairs; names are None when absent."""
    names: list[str | None] = []
    tensors: list[torch.Tensor] = []
    for entry in params:
        if isinstance(entry, dict):
            raise OptimError(
                "optimizer: build_optimizer builds the param groups itself (weight decay split, lr_multipliers); "
                "pass (name, parameter) pairs, not param-group dicts"
            )
        if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
            names.append(entry[0])
            tensors.append(entry[1])
        else:
            names.append(None)
            tensors.append(entry)
    return names, tensors


def build_named_param_groups(
    params: Any,
    *,
    lr: float,
    weight_decay: float,
    no_decay_patterns: Iterable[str] = DEFAULT_NO_DECAY_PATTERNS,
    lr_multipliers: Mapping[str, float] | None = None,
    extra_lrs: Mapping[str, float] | None = None,
    extra_weight_decays: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Group trainable parameters by (weight decay on/off by the rule above, lr multiplier).

    Each group is ``{"params", "lr": lr * multiplier, "weight_decay", "lr_multiplier"}``; ``"params"`` holds
    ``(name, parameter)`` pairs when names were given. The first pattern of ``lr_multipliers`` that matches a name
    sets its multiplier (default 1.0). Groups at multiplier 1.0 come first, so ``param_groups[0]`` carries the base
    lr that the LR scheduler's ``max_lr`` / ``min_lr`` refer to (other groups keep their ratio to it).

    ``extra_lrs`` / ``extra_weight_decays`` are further per-group keys treated like ``lr`` (times the multiplier) and
    ``weight_decay`` (0 in no-decay groups), e.g. Muon's ``adamw_lr`` and ``adamw_weight_decay``.
    """
    if weight_decay < 0:
        raise OptimError(f"optimizer.weight_decay={weight_decay} must be >= 0")
    multipliers = dict(lr_multipliers or {})
    for pattern, factor in multipliers.items():
        if not isinstance(factor, (int, float)) or factor < 0:
            raise OptimError(f"optimizer.lr_multipliers['{pattern}']={factor!r} must be a number >= 0")
    patterns = list(no_decay_patterns)
    names, tensors = split_names(params)
    named = all(n is not None for n in names)
    if not named and multipliers:
        raise OptimError(
            "optimizer.lr_multipliers needs parameter names, but the parameters came without them; pass "
            "(name, parameter) pairs such as list(model.named_parameters())"
        )
    if not named and patterns:
        logger.warning(
            "optimizer: parameters have no names, so no_decay_patterns %s are not applied; only parameters with "
            "fewer than 2 dims skip weight decay",
            patterns,
        )

    used: set[str] = set()
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, param in zip(names, tensors):
        if not param.requires_grad:
            continue
        factor = 1.0
        for pattern, value in multipliers.items():
            if name is not None and name_matches(name, pattern):
                factor = float(value)
                used.add(pattern)
                break
        decays = not skips_weight_decay(name, param, patterns)
        group = groups.get((factor, decays))
        if group is None:
            group = groups[(factor, decays)] = {"params": [], "lr": lr * factor, "lr_multiplier": factor}
            for key, value in {"weight_decay": weight_decay, **(extra_weight_decays or {})}.items():
                group[key] = float(value) if decays else 0.0
            for key, value in (extra_lrs or {}).items():
                group[key] = value * factor
        group["params"].append((name, param) if named else param)

    if not groups:
        raise OptimError("the model has no trainable parameter (every requires_grad is False): nothing to optimize")
    unused = [p for p in multipliers if p not in used]
    if unused:
        examples = ", ".join(repr(n) for n in names[:3])
        raise OptimError(
            f"optimizer.lr_multipliers pattern(s) {unused} match no trainable parameter; names look like {examples} "
            "(a pattern with * ? [ is a glob over the whole name, otherwise a substring)"
        )
    # Base-lr groups first (decaying before non-decaying), then the multiplied ones in pattern order.
    order: dict[float, int] = {}
    for factor in multipliers.values():
        order.setdefault(float(factor), len(order))
    keys = sorted(groups, key=lambda k: (k[0] != 1.0, order.get(k[0], 0), not k[1]))
    return [groups[k] for k in keys]

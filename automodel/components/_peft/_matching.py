"""Which `nn.Linear` modules a `PeftConfig` selects."""

from __future__ import annotations

import fnmatch
import logging
import re

from torch import nn

from automodel.components._peft._config import PeftConfig
from automodel.components._peft._errors import PeftError

logger = logging.getLogger(__name__)

_WILDCARD_CHARS = frozenset("*?[")
_NUM_EXAMPLES = 6


def pattern_matches(pattern: str, name: str) -> bool:
    """True when ``pattern`` fnmatches the full dotted ``name`` or its last component, or is a dotted suffix of it.

    The suffix rule is HF PEFT's ("self_attn.q_proj" selects "model.layers.0.self_attn.q_proj").
    """
    leaf = name.rsplit(".", 1)[-1]
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(leaf, pattern) or name.endswith("." + pattern)


def _is_explicit(pattern: str) -> bool:
    return not (_WILDCARD_CHARS & set(pattern))


def output_head_name(model: nn.Module) -> str | None:
    """The module name of the output head (``get_output_embeddings()``, else a module called ``lm_head``)."""
    head = None
    get_head = getattr(model, "get_output_embeddings", None)
    if callable(get_head):
        try:
            head = get_head()
        except (NotImplementedError, AttributeError):
            head = None
    for name, module in model.named_modules():
        if (head is not None and module is head) or (head is None and name.rsplit(".", 1)[-1] == "lm_head"):
            return name
    return None


def describe_linears(names: list[str]) -> str:
    """A short list of available Linear names for error messages: a few full names and every distinct leaf name."""
    if not names:
        return "the model has no nn.Linear module"
    leaves = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))
    more = ", ..." if len(names) > _NUM_EXAMPLES else ""
    return f"available: {', '.join(names[:_NUM_EXAMPLES])}{more} (leaf names: {', '.join(leaves)})"


def select_linear_modules(model: nn.Module, config: PeftConfig) -> list[str]:
    """Names of the plain ``nn.Linear`` modules selected by ``config``, in model order.

    Raises PeftError when a target pattern selects nothing, when the selection is empty, or when a selected module
    already carries an adapter.
    """
    head = output_head_name(model)
    linears: list[str] = []
    patched: list[str] = []
    for name, module in model.named_modules():
        if type(module) is nn.Linear:
            linears.append(name)
        elif isinstance(module, nn.Linear) and hasattr(module, "lora_A"):
            patched.append(name)

    def targeted(name: str) -> bool:
        if name == head:
            # The head is large and usually tied to the embeddings: only adapt it when asked for by name.
            return any(_is_explicit(p) and pattern_matches(p, name) for p in config.target_modules)
        return config.match_all_linear or any(pattern_matches(p, name) for p in config.target_modules)

    unmatched = [p for p in config.target_modules if not any(pattern_matches(p, n) for n in linears + patched)]
    if unmatched:
        hint = f"; the output head {head} is only adapted when named explicitly" if head else ""
        raise PeftError(
            f"peft.target_modules {unmatched} matched no nn.Linear; {describe_linears(linears)}{hint}. "
            "Use names or wildcards such as '*_proj'"
        )
    already = [n for n in patched if targeted(n)]
    if already:
        raise PeftError(f"modules {already[:_NUM_EXAMPLES]} already have LoRA adapters; apply_lora runs once per model")
    for pattern in config.exclude_modules:
        if not any(pattern_matches(pattern, n) for n in linears):
            logger.warning("peft.exclude_modules pattern %r matches no nn.Linear; it has no effect", pattern)

    selected = [n for n in linears if targeted(n) and not any(pattern_matches(p, n) for p in config.exclude_modules)]
    if not selected:
        raise PeftError(
            f"peft selects no nn.Linear (target_modules={config.target_modules}, match_all_linear="
            f"{config.match_all_linear}, exclude_modules={config.exclude_modules}); {describe_linears(linears)}"
        )
    if head is not None and head not in selected and config.match_all_linear:
        logger.info("match_all_linear leaves the output head %s frozen; name it in target_modules to adapt it", head)
    return selected


def select_by_regex(model: nn.Module, pattern: str) -> list[str]:
    """Names of the ``nn.Linear`` modules whose full name matches the regex ``pattern`` (HF PEFT's string form)."""
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise PeftError(f"adapter_config.json target_modules regex {pattern!r} is invalid: {err}") from None
    return [name for name, module in model.named_modules() if type(module) is nn.Linear and regex.fullmatch(name)]

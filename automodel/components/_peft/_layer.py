"""`LinearLoRA`: an `nn.Linear` patched in place with a low-rank update (LoRA) and optionally DoRA.

Patching swaps the module's class and adds submodules, so the base ``weight``/``bias`` stay the very same Parameter
objects (state-dict keys, tying, hooks and any sharding of the base layer are untouched). Forward semantics match HF
PEFT 0.21 in eval mode, so adapters move between the two with identical outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from automodel.components._peft._config import PeftConfig

# Names the patch adds to a module; `unpatch_linear` removes exactly these.
_ADDED_MODULES = ("lora_A", "lora_B", "lora_dropout")
_ADDED_ATTRS = ("scale", "dropout_position", "use_dora")


class LinearLoRA(nn.Linear):
    """``y = W x + b + scale * B(A(x))`` (dropout before A or after B), or its DoRA form.

    Never constructed directly: :func:`patch_linear` turns an existing ``nn.Linear`` into one.
    """

    lora_A: nn.Linear
    lora_B: nn.Linear
    lora_dropout: nn.Module
    lora_magnitude_vector: nn.Parameter | None
    scale: float
    dropout_position: str
    use_dora: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # Cast once for the base and the LoRA matmuls; autocast would cast x again for each of them.
            x = x.to(torch.get_autocast_dtype(device_type))
            result = F.linear(x, self.weight, self.bias)
        else:
            result = F.linear(x, self.weight, self.bias)
            x = x.to(self.lora_A.weight.dtype)  # no-op unless lora_dtype differs from the input's (as in HF PEFT)
        if self.use_dora:
            return self._dora_forward(x, result)
        pre = self.dropout_position == "pre"
        lora = self.lora_B(self.lora_A(self.lora_dropout(x) if pre else x))
        if not pre:
            lora = self.lora_dropout(lora)
        # In place: linear's backward needs its input and weight, never its output, so this saves two allocations.
        return result.add_(lora, alpha=self.scale)

    def _dora_forward(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        # DoRA (arXiv 2402.09353): y = m / ||W + s*BA||_row * (W + s*BA) x + b, with the row norm treated as a
        # constant (section 4.3). Written as a correction on top of the base output, like HF PEFT, so that with
        # pre-dropout in training the base term uses the dropped input exactly as PEFT does.
        pre = self.dropout_position == "pre"
        if pre and self.training and isinstance(self.lora_dropout, nn.Dropout):
            x = self.lora_dropout(x)
            base_no_bias = F.linear(x, self.weight)
        else:
            base_no_bias = result if self.bias is None else result - self.bias
        lora = self.lora_B(self.lora_A(x))
        if not pre:
            lora = self.lora_dropout(lora)
        mag_norm_scale = self.lora_magnitude_vector / dora_weight_norm(self)
        correction = (mag_norm_scale - 1) * base_no_bias + mag_norm_scale * lora * self.scale
        return result + correction.to(result.dtype)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rank={self.lora_A.out_features}, scale={self.scale:g}, "
            f"dropout_position={self.dropout_position}, use_dora={self.use_dora}"
        )


def delta_weight(module: LinearLoRA) -> torch.Tensor:
    """``scale * B @ A`` in the adapter dtype (shape of the base weight)."""
    return (module.lora_B.weight @ module.lora_A.weight) * module.scale


def dora_weight_norm(module: LinearLoRA) -> torch.Tensor:
    """Row-wise L2 norm of ``W + scale * B @ A`` (one value per output feature), detached, in the adapter dtype."""
    dtype = module.lora_A.weight.dtype
    # Full precision of the adapter dtype even under autocast: the norm of a [out, in] matrix in bf16 drifts.
    with torch.no_grad(), torch.autocast(module.weight.device.type, enabled=False):
        return torch.linalg.vector_norm(module.weight.to(dtype) + delta_weight(module), dim=1)


def _init_lora_A(weight: torch.Tensor, how: str, rank: int) -> None:
    if how == "xavier":
        nn.init.xavier_normal_(weight)
    elif how == "kaiming":
        # The default init of nn.Linear (and of HF PEFT's lora_A).
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    else:
        nn.init.normal_(weight, std=1 / rank)


def patch_linear(module: nn.Linear, config: PeftConfig) -> LinearLoRA:
    """Turn ``module`` (exactly an ``nn.Linear``) into a :class:`LinearLoRA` in place; B = 0 so outputs are unchanged."""
    assert type(module) is nn.Linear, f"only plain nn.Linear can be patched, got {type(module).__name__}"
    weight = module.weight
    dtype = config.torch_lora_dtype or weight.dtype
    factory = {"device": weight.device, "dtype": dtype}
    module.__class__ = LinearLoRA
    lora = module  # now a LinearLoRA; same object
    lora.lora_A = nn.Linear(module.in_features, config.dim, bias=False, **factory)
    lora.lora_B = nn.Linear(config.dim, module.out_features, bias=False, **factory)
    lora.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
    with torch.no_grad():
        _init_lora_A(lora.lora_A.weight, config.lora_A_init, config.dim)
        nn.init.zeros_(lora.lora_B.weight)
    lora.scale = config.scale
    lora.dropout_position = config.dropout_position
    lora.use_dora = config.use_dora
    lora.lora_magnitude_vector = None
    if config.use_dora:
        # m starts at ||W||_row so that the DoRA layer equals the base layer at init (B = 0).
        lora.lora_magnitude_vector = nn.Parameter(dora_weight_norm(lora).clone())
    return lora


def unpatch_linear(module: LinearLoRA) -> nn.Linear:
    """Remove the adapter submodules and restore the plain ``nn.Linear`` class (weights are left as they are)."""
    for name in _ADDED_MODULES:
        delattr(module, name)
    for name in _ADDED_ATTRS:
        delattr(module, name)
    # lora_magnitude_vector is a registered Parameter (or a plain None attribute).
    delattr(module, "lora_magnitude_vector")
    module.__class__ = nn.Linear
    return module


def adapter_parameters(module: LinearLoRA) -> dict[str, nn.Parameter]:
    """The trainable adapter tensors of one layer, by their name relative to the layer (HF PEFT naming)."""
    params = {"lora_A.weight": module.lora_A.weight, "lora_B.weight": module.lora_B.weight}
    if module.lora_magnitude_vector is not None:
        params["lora_magnitude_vector"] = module.lora_magnitude_vector
    return params

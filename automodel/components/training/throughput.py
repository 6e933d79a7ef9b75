"""Per-step throughput metrics: tokens/s over real (non-padding) tokens, peak memory, FLOPs per token and MFU.

FLOPs per trained token (forward + backward), the PaLM paper's appendix B convention:

    flops_per_token = 6 * N_matmul + 12 * L * (n_heads * head_dim) * seq_len

- ``N_matmul``: parameters that take part in a matmul per token: per layer q and o (``hidden x n_heads*head_dim``
  each), k and v (``hidden x n_kv_heads*head_dim`` each, so grouped-query attention counts less), the MLP
  (``3 x hidden x intermediate`` for gated MLPs such as SwiGLU, ``2 x`` otherwise), plus the LM head
  (``vocab x hidden``, counted even when tied to the embeddings: the matmul still runs). Embedding lookups, norms
  and biases are left out. 6 = 2 FLOPs per multiply-add x (1 forward + 2 backward).
- ``12 * L * n_heads*head_dim * seq_len``: attention scores ``QK^T`` and the weighted sum over values,
  forward + backward (``n_heads*head_dim`` equals ``hidden`` in most models). Causal masking is not discounted.

Dense decoder-only models only: mixture-of-experts configs are counted as if every token used one dense MLP of
``intermediate_size``. MFU = achieved FLOP/s / peak FLOP/s of the device.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from typing import Any

import torch

from automodel.components.training.errors import TrainingError

logger = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks (no sparsity), from the vendors' datasheets. Checked in order: a longer name first
# where a shorter one is its substring.
_GPU_PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("H20", 148e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
)
# Measured matmul peaks of this project's CPU machine class (AMD EPYC, 2 cores, AVX-512-BF16); other CPUs differ:
# pass peak_flops explicitly for a meaningful MFU.
_CPU_PEAK_FLOPS = {torch.bfloat16: 880e9, torch.float32: 213e9}

# model_type of HF configs whose MLP is up-projection -> activation -> down-projection (no gate).
_NON_GATED_MLP = {"gpt2", "gpt_neox", "gptj", "gpt_bigcode", "opt", "bloom", "falcon", "phi", "starcoder2", "mpt"}


def _text_config(model_config: Any) -> Any:
    # Image-text models keep the language model's sizes in a sub-config; text models return themselves.
    get_text_config = getattr(model_config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else model_config


def matmul_params(model_config: Any) -> int:
    """Parameters used in a matmul per token (see the module docstring), from a Hugging Face model config."""
    cfg = _text_config(model_config)
    try:
        hidden = int(cfg.hidden_size)
        num_layers = int(cfg.num_hidden_layers)
        num_heads = int(cfg.num_attention_heads)
        vocab = int(cfg.vocab_size)
    except (AttributeError, TypeError) as exc:
        raise TrainingError(
            f"cannot count FLOPs for {type(cfg).__name__}: it lacks {exc}; expected a decoder config with "
            "hidden_size, num_hidden_layers, num_attention_heads and vocab_size (set peak_flops / disable MFU)"
        ) from exc
    num_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or num_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // num_heads)
    intermediate = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden)
    gated = getattr(cfg, "model_type", None) not in _NON_GATED_MLP
    attn = 2 * hidden * num_heads * head_dim + 2 * hidden * num_kv_heads * head_dim
    mlp = (3 if gated else 2) * hidden * intermediate
    return num_layers * (attn + mlp) + vocab * hidden


def flops_per_token(model_config: Any, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token at sequence length ``seq_len``; formula in the module docstring."""
    cfg = _text_config(model_config)
    num_heads = int(cfg.num_attention_heads)
    attn_width = int(getattr(cfg, "head_dim", None) or int(cfg.hidden_size) // num_heads) * num_heads
    return 6.0 * matmul_params(cfg) + 12.0 * int(cfg.num_hidden_layers) * attn_width * seq_len


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation as a fraction: ``tokens_per_s * flops_per_token / peak_flops`` (per device)."""
    if peak_flops <= 0:
        raise TrainingError(f"peak_flops={peak_flops} must be > 0 (the device's peak FLOP/s, e.g. 989e12 for an H100)")
    return tokens_per_s * flops_per_token / peak_flops


def default_peak_flops(device: torch.device | str | None = None, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Peak dense FLOP/s of ``device`` for ``dtype``, or None when unknown (then set ``peak_flops`` to get MFU).

    CUDA: a table of datacenter GPUs by ``torch.cuda.get_device_name`` (bf16/fp16 only). CPU: 880e9 (bf16) or
    213e9 (fp32), measured on this project's 2-core CI machines; other CPUs should pass ``peak_flops``.
    """
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        return _CPU_PEAK_FLOPS.get(dtype)
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        name = torch.cuda.get_device_name(device)
        for key, peak in _GPU_PEAK_BF16_FLOPS:
            if key in name:
                return peak
        logger.warning("unknown GPU %r: no default peak FLOP/s, MFU is not reported; set peak_flops to enable it", name)
    return None


def peak_memory_gib(device: torch.device | str | None = None, *, reset: bool = False) -> float:
    """Peak memory in GiB: CUDA allocated tensors (optionally reset, for per-step peaks), else the process's peak RSS.

    The CPU value is the process's high-water mark since start (it cannot be reset) and includes everything the
    process holds, not only tensors.
    """
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return peak / 2**30
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return max_rss / 2**30 if sys.platform == "darwin" else max_rss / 2**20


class ThroughputMeter:
    """Time one optimizer step and count its real tokens across all micro-batches.

    Usage, per optimizer step::

        meter.start()
        for batch in micro_batches:
            meter.add(batch["attention_mask"])    # no host-device sync here
            ...forward / backward...
        metrics = meter.stop()                    # or stop(num_tokens=all_reduced_count, num_devices=world_size)

    ``stop`` returns ``tokens_per_s``, ``num_tokens``, ``peak_memory_gib`` and, when ``flops_per_token`` and a peak
    (given or :func:`default_peak_flops`) are known, ``mfu`` (a fraction, per device).
    """

    def __init__(
        self,
        device: torch.device | str | None = None,
        *,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        dtype: torch.dtype = torch.bfloat16,
        reset_peak_memory: bool = True,
    ) -> None:
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if peak_flops is not None and peak_flops <= 0:
            raise TrainingError(f"peak_flops={peak_flops} must be > 0 (the device's peak FLOP/s), or unset")
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops if peak_flops is not None else default_peak_flops(self.device, dtype)
        self.reset_peak_memory = reset_peak_memory
        self._t0: float | None = None
        self._tokens: torch.Tensor | int = 0

    def start(self) -> None:
        """Start timing a step and reset the token count."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # do not bill the previous step's queued kernels to this one
        self._tokens = 0
        self._t0 = time.perf_counter()

    def add(self, attention_mask_or_count: torch.Tensor | int) -> None:
        """Add a micro-batch: its attention mask (real tokens are 1) or a token count."""
        value = attention_mask_or_count
        self._tokens = self._tokens + (value.sum() if isinstance(value, torch.Tensor) else int(value))

    def local_tokens(self) -> int:
        """Real tokens added on this process since ``start`` (syncs with the device)."""
        return int(self._tokens)

    def stop(self, num_tokens: int | torch.Tensor | None = None, num_devices: int = 1) -> dict[str, float | int]:
        """End the step. ``num_tokens`` overrides the local count (e.g. all-reduced over ``num_devices`` ranks)."""
        assert self._t0 is not None, "ThroughputMeter.stop() called before start()"
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        self._t0 = None
        tokens = int(num_tokens if num_tokens is not None else self._tokens)
        tokens_per_s = tokens / elapsed
        metrics: dict[str, float | int] = {
            "tokens_per_s": tokens_per_s,
            "num_tokens": tokens,
            "peak_memory_gib": peak_memory_gib(self.device, reset=self.reset_peak_memory),
        }
        if self.flops_per_token is not None and self.peak_flops is not None:
            metrics["mfu"] = mfu(tokens_per_s / num_devices, self.flops_per_token, self.peak_flops)
        return metrics

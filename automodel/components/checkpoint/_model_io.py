"""What a checkpoint holds of the model and optimizer, and how it is written and read.

Two representations, for two readers:
- ``state/``: the *trainable* parameters and the optimizer state, keyed by parameter name. The tensors go through
  torch.distributed.checkpoint (DCP) with its Hugging Face storage: every rank writes its own safetensors shard
  (``shard-<rank+1>-model-00001-of-00001.safetensors``; FSDP2 DTensors stay sharded, replicated tensors are written
  once) with each tensor's offset in the safetensors JSON header, and loading rebuilds DCP's metadata from those
  headers and reshards to the current world size, so a run saved on 2 processes resumes on 1 or 4. Everything that
  is not a tensor (``param_groups``, step counts) and the nesting itself go to ``state/extra.json`` (see ``_tree``).
  No pickle is written or read. Frozen parameters (a PEFT base model, a frozen vision tower) are not written: they
  come from the base model.
- ``model/``: a consolidated Hugging Face folder that ``from_pretrained`` loads (gathered to rank 0), or whatever
  the caller's ``model_writer`` writes there instead (a PEFT adapter).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.storage import WriteResult
from torch.distributed.tensor import DTensor
from torch.futures import Future

from automodel.components.checkpoint import _integrity, _layout, _tree
from automodel.components.checkpoint.config import CheckpointError

logger = logging.getLogger(__name__)

_TORCH_WEIGHTS = "pytorch_model.bin"
STATE_TREE = "extra.json"
ModelWriter = Callable[[Path], None]


def unwrap(model: nn.Module) -> nn.Module:
    # DDP / DataParallel keep the real model in .module; its state-dict keys carry a "module." prefix
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model


def _trainable_state(model: nn.Module) -> dict[str, Any]:
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {key: value for key, value in get_model_state_dict(model).items() if key in trainable}


def _live_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    state: dict[str, Any] = {"model": _trainable_state(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    return state


def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


@dataclass
class PreparedState:
    """The state to save, encoded before any file is written (an unsupported value fails here)."""

    tensors: dict[str, torch.Tensor]
    tree_json: str


def prepare_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> PreparedState:
    """Every rank: this rank's view of the trainable parameters and optimizer state, split into tensors and JSON."""
    tree, tensors = _tree.encode(_live_state(unwrap(model), optimizer), "the model/optimizer state")
    return PreparedState(_writable(tensors), _tree.dumps(tree))


def _writable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses non-contiguous tensors (SOAP's eigenbases are column-major) and two names for one
    storage: copy just those."""
    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        if not local.is_contiguous():
            tensor = tensor.contiguous()
        elif local.numel() and local.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        if local.numel():
            seen.add(local.untyped_storage().data_ptr())
        out[name] = tensor
    return out


class _ShardWriter(HuggingFaceStorageWriter):
    """DCP's safetensors writer, one file per rank, remembering which files this rank wrote (for the manifest)."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), save_distributed=True)
        self.written: list[str] = []

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        future = super().write_data(plan, planner)
        self.written += [result.storage_data.relative_path for result in future.wait()]  # already done: writes sync
        return future


def save_state(state_dir: Path, prepared: PreparedState, *, rank: int) -> list[Path]:
    """Collective: every rank writes its shard of the tensors, rank 0 ``extra.json``; returns this rank's files."""
    state_dir.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(state_dir)
    if prepared.tensors:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.save(prepared.tensors, storage_writer=writer, no_dist=_no_dist())
    written = [state_dir / name for name in sorted(set(writer.written))]
    if rank == 0:
        _layout.write_text(state_dir / STATE_TREE, prepared.tree_json)
        written.append(state_dir / STATE_TREE)
    return written


def _readable(name: str) -> str:
    parts = [unquote(part) for part in name.split("/")]
    if parts[0] == "model":
        return ".".join(parts[1:])
    return "optimizer " + ".".join(parts[1:]).replace(".[", "[")


def _mismatch(state_dir: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"the state in '{state_dir}' does not fit this model/optimizer ({detail}); the trainable parameters changed "
        "since the checkpoint (another model, PEFT or optimizer settings?): use another checkpoint.checkpoint_dir or "
        "checkpoint.restore_from"
    )


def _saved_sections(state_dir: Path) -> dict[str, Any]:
    source = f"'{state_dir / STATE_TREE}'"
    tree = _tree.loads(state_dir / STATE_TREE)
    body = tree.get("dict") if isinstance(tree, dict) and len(tree) == 1 else None
    if not isinstance(body, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in body
    ):
        body = []
    sections = dict(body)
    if "model" not in sections:
        raise CheckpointError(f"{source} does not hold a model/optimizer state; the checkpoint is damaged")
    return sections


def _check_fits(state_dir: Path, saved: dict[str, Any], targets: dict[str, torch.Tensor], optimizer: Any) -> None:
    """Raise a CheckpointError naming the first difference between the saved tensors and the live ones."""
    if optimizer is not None and "optim" not in saved:
        raise _mismatch(state_dir, "it holds no optimizer state: it was saved without an optimizer")
    sections = ("model", "optim") if optimizer is not None else ("model",)
    saved_names = {name for section in sections if section in saved for name in _tree.tensor_refs(saved[section])}
    missing, extra = sorted(set(targets) - saved_names), sorted(saved_names - set(targets))
    for names, what in ((missing, "the checkpoint has no {}"), (extra, "the checkpoint has {}, which this has not")):
        if names:
            more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
            raise _mismatch(state_dir, what.format(", ".join(_readable(n) for n in names[:3])) + more)

    # A damaged shard is not a changed model: say which file is cut off before DCP fails on it.
    shards = sorted(state_dir.glob("*.safetensors"))
    problems = [p for p in (_integrity.safetensors_problem(f, f"state/{f.name}") for f in shards) if p]
    if problems:
        raise CheckpointError(
            f"the state in '{state_dir}' is damaged: {'; '.join(problems)}; use another checkpoint (an older one, or "
            "checkpoint.restore_from)"
        )
    try:
        saved_meta = HuggingFaceStorageReader(str(state_dir)).read_metadata().state_dict_metadata  # headers only
    except Exception as error:  # a header that safetensors accepts but DCP cannot use
        raise CheckpointError(
            f"the state in '{state_dir}' is damaged: its shards' headers cannot be read ({error!r:.300}); use another "
            "checkpoint"
        ) from None
    for name, target in targets.items():
        if name not in saved_meta:
            raise CheckpointError(
                f"the state in '{state_dir}' is damaged: no shard holds {_readable(name)}, which {STATE_TREE} lists; "
                "use another checkpoint"
            )
        saved_shape, shape = tuple(saved_meta[name].size), tuple(target.shape)
        if saved_shape != shape:
            raise _mismatch(state_dir, f"size mismatch for {_readable(name)}: {saved_shape} saved, {shape} here")


def load_state(state_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Collective: load (and reshard) trainable parameters and optimizer state in place."""
    model = unwrap(model)
    live = _live_state(model, optimizer)
    _, targets = _tree.encode(live, "the model/optimizer state")  # the live tensors, under their saved names
    saved = _saved_sections(state_dir)
    _check_fits(state_dir, saved, targets, optimizer)
    if targets:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
                dcp.load(targets, storage_reader=HuggingFaceStorageReader(str(state_dir)), no_dist=_no_dist())
        except (Exception, CheckpointException) as error:  # CheckpointException derives from BaseException
            lines = str(error).strip().splitlines() or [type(error).__name__]
            raise CheckpointError(
                f"reading the state in '{state_dir}' failed ({lines[-1][:300]}); the checkpoint may be damaged: use "
                "another one"
            ) from None
    # the saved structure and plain values, with the tensors just loaded in place
    source = f"'{state_dir / STATE_TREE}'"
    set_model_state_dict(model, _tree.decode(saved["model"], targets, source), options=StateDictOptions(strict=False))
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, _tree.decode(saved["optim"], targets, source))


def write_hf_model(
    model: nn.Module, model_dir: Path, *, rank: int, tokenizer: Any = None, save_format: str = "safetensors"
) -> None:
    """Collective: gather the full weights (sharded or not) to rank 0, which writes an HF folder there."""
    model = unwrap(model)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return
    # A gathered state dict holds separate copies of tied parameters (lm_head = embed_tokens); write each once, as
    # save_pretrained does for a plain model.
    aliases = {name for name, _ in model.named_parameters(remove_duplicate=False)} - {
        name for name, _ in model.named_parameters()
    }
    full = {key: value for key, value in full.items() if key not in aliases}
    model_dir.mkdir(parents=True, exist_ok=True)
    has_hf_api = callable(getattr(model, "save_pretrained", None))
    if save_format == "safetensors" and has_hf_api:
        model.save_pretrained(model_dir, state_dict=full)  # transformers 5 always writes safetensors
    elif save_format == "safetensors":
        from safetensors.torch import save_file

        save_file(_dedup_shared(full), str(model_dir / "model.safetensors"))
    else:  # torch_save: the legacy HF layout, config.json + pytorch_model.bin
        torch.save(full, model_dir / _TORCH_WEIGHTS)
        if has_hf_api:
            model.config.save_pretrained(model_dir)
            generation_config = getattr(model, "generation_config", None)
            if generation_config is not None:
                generation_config.save_pretrained(model_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(model_dir)


def _dedup_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing memory (tied weights): keep the first name of each storage
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            out[key] = tensor.contiguous()
    return out

"""Crash-safe training checkpoints: save, find the one to resume from, check it fits, load it.

Layout (docs/architecture.md): ``<checkpoint_dir>/epoch_<E>_step_<S>/`` with ``state/`` (DCP: trainable weights and
optimizer state, sharded per rank), ``model/`` (a consolidated HF folder, or a PEFT adapter), ``scheduler.pt``,
``train_state.json``, ``rng_rank<R>.pt``, ``config.yaml`` and ``meta.json``, plus a ``LATEST`` file naming the newest.

Crash safety: everything is written into ``<checkpoint_dir>/.tmp-epoch_E_step_S-<random>/``, fsynced, then published
with one ``os.rename``; ``LATEST`` is replaced atomically afterwards. A process killed at any moment (SIGKILL included)
leaves either the previous state or a complete new checkpoint, plus maybe a ``.tmp-*`` leftover that resume ignores and
the next successful save removes. A complete checkpoint is never modified; one that already exists is never
overwritten (``save`` raises, unless this run saved it or resumed from it: then it skips).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from automodel.components.checkpoint import _layout
from automodel.components.checkpoint._model_io import ModelWriter, load_state, save_state, write_hf_model
from automodel.components.checkpoint.config import CheckpointConfig, CheckpointError

logger = logging.getLogger(__name__)

# Identity keys that make two models incompatible; other keys the recipe passes (name_or_path, dtype...) are
# informative only, since resuming the same architecture from a copied or converted folder is legitimate.
STRUCTURAL_IDENTITY_KEYS = ("architecture", "num_parameters", "vocab_size")


def _count(n: Any) -> str:
    if not isinstance(n, int | float):
        return str(n)
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + suffix
    return str(n)


def _describe(identity: dict[str, Any], keys: list[str]) -> str:
    parts = [str(identity.get("architecture", "model"))]
    if "num_parameters" in identity:
        parts.append(_count(identity["num_parameters"]))
    parts += [f"{key} {identity[key]}" for key in keys]
    return " ".join(parts)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _collective_device() -> torch.device:
    # NCCL only reduces CUDA tensors; gloo (CPU runs) only CPU ones
    if "nccl" in str(dist.get_backend()) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Checkpointer:
    """Saves and restores full training state under ``config.checkpoint_dir``; see the module docstring.

    With ``world_size > 1`` (torch.distributed initialised), :meth:`save` and :meth:`load` are collective: every
    rank calls them. Every rank writes its shard of ``state/`` and its own ``rng_rank<R>.pt``; the consolidated
    ``model/`` is gathered to rank 0; rank 0 writes the rest and publishes. The model may be plain, DDP-wrapped or
    FSDP2-sharded.
    """

    def __init__(self, config: CheckpointConfig, *, rank: int = 0, world_size: int = 1) -> None:
        assert 0 <= rank < world_size, f"rank {rank} outside world_size {world_size}"
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.checkpoint_dir = Path(config.checkpoint_dir).expanduser()
        # checkpoints this run wrote or resumed from: saving one of them again is a no-op, not a conflict
        self._saved: set[Path] = set()
        self._resumed: set[Path] = set()

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    # --- save -------------------------------------------------------------------------------------------------

    def save(
        self,
        epoch: int,
        step: int,
        *,
        model: nn.Module,
        tokenizer: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        train_state: dict[str, Any],
        rng_state: Any,
        config_yaml: str,
        model_identity: dict[str, Any],
        model_writer: ModelWriter | None = None,
    ) -> Path | None:
        """Write and publish ``epoch_<epoch>_step_<step>``; returns its path, or None when checkpointing is disabled.

        ``train_state`` and ``model_identity`` must be JSON-serialisable; ``rng_state`` must load with
        ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, tuples, dicts). ``model_writer(dir)``,
        called on every rank, replaces the consolidated HF model in ``model/`` (a PEFT run writes its adapter).
        """
        if not self.enabled:
            return None
        distributed = self.world_size > 1
        assert not distributed or dist.is_initialized(), "world_size > 1 needs torch.distributed initialised"
        # serialise first: a value that is not JSON fails here, before any file exists
        train_json = json.dumps(train_state, indent=2, sort_keys=True)
        meta_json = json.dumps(
            {
                "model_identity": model_identity,
                "epoch": epoch,
                "step": step,
                "world_size": self.world_size,
                "consolidated": self.config.save_consolidated,
                "torch_version": torch.__version__,
                "transformers_version": _version("transformers"),
                "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            indent=2,
        )
        name = _layout.checkpoint_name(epoch, step)
        final = self.checkpoint_dir / name

        # Rank 0 decides (write / skip / conflict) and names the temp dir; a broadcast keeps all ranks in step, so an
        # error raises everywhere instead of leaving the other ranks waiting in a collective.
        plan = self._plan(final, epoch, step) if self.rank == 0 else None
        if distributed:
            box = [plan]
            dist.broadcast_object_list(box, src=0)
            plan = box[0]
        action, detail = plan
        if action == "error":
            raise CheckpointError(detail)
        if action == "skip":
            return final
        temp = self.checkpoint_dir / detail

        failure: BaseException | None = None
        try:
            save_state(temp / "state", model, optimizer)  # collective: every rank writes its shard
            if self.config.save_consolidated:
                if model_writer is not None:
                    model_writer(temp / "model")
                else:
                    write_hf_model(
                        model,
                        temp / "model",
                        rank=self.rank,
                        tokenizer=tokenizer,
                        save_format=self.config.model_save_format,
                    )
            if self.rank == 0:
                if lr_scheduler is not None:
                    torch.save(lr_scheduler.state_dict(), temp / "scheduler.pt")
                _layout.write_text(temp / "train_state.json", train_json)
                _layout.write_text(temp / "config.yaml", config_yaml)
                _layout.write_text(temp / "meta.json", meta_json)
            if rng_state is not None:
                rng_path = temp / f"rng_rank{self.rank}.pt"
                torch.save(rng_state, rng_path)
                with open(rng_path, "rb") as f:
                    os.fsync(f.fileno())
        except Exception as error:
            failure = error
        self._raise_if_any_rank_failed(failure, final, "writing")

        if self.rank == 0:
            try:
                self._publish(temp, final)
            except Exception as error:
                failure = error
        self._raise_if_any_rank_failed(failure, final, "publishing")
        return final

    def _plan(self, final: Path, epoch: int, step: int) -> tuple[str, str]:
        """Rank 0: ("write", temp dir name), ("skip", "") or ("error", message); never raises, so no rank waits."""
        try:
            return self._plan_or_raise(final, epoch, step)
        except OSError as error:
            return (
                "error",
                f"cannot create a checkpoint in checkpoint.checkpoint_dir '{self.checkpoint_dir}': {error}",
            )

    def _plan_or_raise(self, final: Path, epoch: int, step: int) -> tuple[str, str]:
        if final.exists():
            if final.resolve() in self._saved:
                logger.info("checkpoint '%s' was already saved by this run; not saved again", final)
                return ("skip", "")
            if final.resolve() in self._resumed:
                logger.warning("checkpoint '%s' is the one this run resumed from; not saved again", final)
                return ("skip", "")
            return (
                "error",
                f"checkpoint '{final}' already exists and was not written by this run; checkpoints are never "
                f"overwritten: set another checkpoint.checkpoint_dir, or remove '{final}'",
            )
        temp_name = _layout.temp_dir_name(epoch, step)
        (self.checkpoint_dir / temp_name).mkdir(parents=True)
        return ("write", temp_name)

    def _raise_if_any_rank_failed(self, failure: BaseException | None, final: Path, phase: str) -> None:
        failed = failure is not None
        if self.world_size > 1:
            flag = torch.tensor([int(failed)], dtype=torch.int32, device=_collective_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            failed = bool(flag.item())
        if failure is not None:
            raise failure
        if failed:
            raise CheckpointError(
                f"another rank failed while {phase} checkpoint '{final}' (see its log); the previous checkpoints are "
                "untouched"
            )

    def _publish(self, temp: Path, final: Path) -> None:
        _layout.fsync_tree(temp)  # the model files were written by libraries that do not fsync
        os.rename(temp, final)  # the commit point: before it the checkpoint does not exist, after it it is complete
        _layout.fsync_dir(self.checkpoint_dir)
        _layout.write_text_atomic(self.checkpoint_dir / _layout.LATEST, final.name + "\n")
        self._saved.add(final.resolve())
        logger.info("saved checkpoint %s", final)
        # Housekeeping after the commit: a failure here must not fail the save.
        try:
            for leftover in _layout.stale_temp_entries(self.checkpoint_dir):
                logger.info("removing '%s', left over by an interrupted save", leftover)
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
            self._prune(keep=final)
        except OSError as error:
            logger.warning("checkpoint %s saved, but cleaning up older files failed: %s", final, error)

    def _prune(self, keep: Path) -> None:
        if self.config.keep_last_n is None:
            return
        complete = _layout.complete_checkpoints(self.checkpoint_dir)
        protected = {keep.resolve()}
        latest = _layout.read_latest(self.checkpoint_dir)
        if latest is not None:
            protected.add(latest.resolve())
        for old in complete[: max(0, len(complete) - self.config.keep_last_n)]:
            if old.resolve() not in protected:
                logger.info("removing checkpoint %s (checkpoint.keep_last_n=%d)", old, self.config.keep_last_n)
                _layout.remove_dir(old)

    # --- find -------------------------------------------------------------------------------------------------

    def find_resume_checkpoint(self) -> Path | None:
        """The checkpoint to resume from: ``restore_from`` if set, else the newest complete one, else None.

        Without ``restore_from`` nothing is resumed while checkpointing is disabled. ``LATEST`` is trusted when it
        names a complete checkpoint and no complete one has a higher step (a run killed between publishing and
        updating ``LATEST`` leaves exactly that); otherwise the newest complete checkpoint is used, with a warning.
        """
        if self.config.restore_from is not None:
            return self._resolve_restore_from(self.config.restore_from)
        if not self.enabled:
            return None
        return self._newest_complete(self.checkpoint_dir)

    def _newest_complete(self, root: Path) -> Path | None:
        complete = _layout.complete_checkpoints(root)
        newest = complete[-1] if complete else None
        latest = _layout.read_latest(root)
        if latest is None:
            if newest is not None:
                logger.warning("'%s' has no LATEST file; resuming from the newest complete checkpoint %s", root, newest)
            return newest
        if not _layout.is_complete(latest) or _layout.parse_name(latest.name) is None:
            lacks = ", ".join(_layout.missing_parts(latest))
            logger.warning(
                "%s names '%s', which is not a complete checkpoint (lacks %s); %s",
                root / _layout.LATEST,
                latest,
                lacks or "a valid epoch_E_step_S name",
                f"resuming from the newest complete one, {newest}"
                if newest
                else "no complete checkpoint: starting fresh",
            )
            return newest
        if newest is not None and _order(newest) > _order(latest):
            logger.warning("%s is newer than the LATEST pointer (%s); resuming from it", newest, latest.name)
            return newest
        return latest

    def _resolve_restore_from(self, value: str) -> Path:
        if value.strip().upper() == _layout.LATEST:
            found = self._newest_complete(self.checkpoint_dir)
            if found is None:
                raise CheckpointError(
                    f"checkpoint.restore_from is LATEST, but checkpoint.checkpoint_dir '{self.checkpoint_dir}' holds "
                    "no complete checkpoint; remove restore_from to start fresh, or point checkpoint_dir at the run"
                )
            return found
        path = Path(value).expanduser()
        if not path.exists() and (self.checkpoint_dir / value).exists():
            path = self.checkpoint_dir / value  # a bare name such as epoch_0_step_100
        if not path.exists():
            raise CheckpointError(
                f"checkpoint.restore_from '{value}' does not exist (nor '{self.checkpoint_dir / value}'); give a "
                f"checkpoint directory such as '{self.checkpoint_dir / 'epoch_0_step_100'}', or LATEST"
            )
        if (path / _layout.LATEST).is_file() and _layout.parse_name(path.name) is None:
            found = self._newest_complete(path)  # a whole checkpoint_dir of another run
            if found is not None:
                return found
        lacks = _layout.missing_parts(path)
        if lacks:
            raise CheckpointError(
                f"checkpoint.restore_from '{path}' is not a complete checkpoint: it lacks {', '.join(lacks)}; give an "
                "epoch_<E>_step_<S> directory written by a finished save"
            )
        return path

    # --- check and load ---------------------------------------------------------------------------------------

    def check_identity(self, path: Path, model_identity: dict[str, Any]) -> None:
        """Raise CheckpointError when the checkpoint at ``path`` holds a structurally different model."""
        path = Path(path)
        try:
            saved = json.loads((path / "meta.json").read_text()).get("model_identity") or {}
        except (OSError, json.JSONDecodeError) as error:
            raise CheckpointError(f"cannot read '{path / 'meta.json'}' ({error}); the checkpoint is damaged") from None
        differing = [
            key
            for key in STRUCTURAL_IDENTITY_KEYS
            if key in saved and key in model_identity and saved[key] != model_identity[key]
        ]
        if not differing:
            return
        # "LlamaForCausalLM 134.5M vs Qwen2ForCausalLM 494M"; other differing keys only when that reads the same
        extra = [key for key in differing if key not in ("architecture", "num_parameters")]
        if _describe(saved, []) != _describe(model_identity, []):
            extra = []
        models = f"{_describe(saved, extra)} vs {_describe(model_identity, extra)}"
        if path.resolve().parent == self.checkpoint_dir.resolve():
            raise CheckpointError(
                f"checkpoint dir '{self.checkpoint_dir}' holds a checkpoint of a different model ({models}); use "
                "another checkpoint.checkpoint_dir or remove it"
            )
        raise CheckpointError(
            f"checkpoint '{path}' (checkpoint.restore_from) holds a different model ({models}); point "
            "checkpoint.restore_from at a checkpoint of this model"
        )

    def load(
        self,
        path: Path,
        *,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        rank: int | None = None,
    ) -> dict[str, Any]:
        """Load trainable weights and optimizer / scheduler state in place (resharding to this world size); return
        ``{"train_state", "rng_state"}``. Collective when several ranks run.

        ``rng_state`` is this rank's (``rank`` defaults to the checkpointer's), or None with a warning when the
        checkpoint was saved by fewer ranks.
        """
        path = Path(path)
        lacks = _layout.missing_parts(path)
        if lacks:
            raise CheckpointError(f"'{path}' is not a complete checkpoint: it lacks {', '.join(lacks)}")
        if optimizer is not None and model is None:
            raise ValueError("loading optimizer state needs the model too (its state is keyed by parameter name)")
        if model is not None:
            load_state(path / "state", model, optimizer)
        if lr_scheduler is not None:
            scheduler_path = path / "scheduler.pt"
            if not scheduler_path.is_file():
                raise CheckpointError(f"'{path}' has no scheduler.pt (it was saved without an LR scheduler)")
            lr_scheduler.load_state_dict(torch.load(scheduler_path, map_location="cpu", weights_only=True))
        train_state = json.loads((path / "train_state.json").read_text())

        rank = self.rank if rank is None else rank
        rng_path = path / f"rng_rank{rank}.pt"
        rng_state = None
        if rng_path.is_file():
            rng_state = torch.load(rng_path, map_location="cpu", weights_only=True)
        else:
            saved_world = json.loads((path / "meta.json").read_text()).get("world_size")
            logger.warning(
                "%s has no RNG state for rank %d (saved with world_size %s, now %d): this rank's random streams "
                "restart from the seed, so the run does not continue bit-exactly",
                path,
                rank,
                saved_world,
                self.world_size,
            )
        self._resumed.add(path.resolve())
        logger.info("loaded checkpoint %s", path)
        return {"train_state": train_state, "rng_state": rng_state}


def _order(path: Path) -> tuple[int, int]:
    epoch, step = _layout.parse_name(path.name)
    return (step, epoch)

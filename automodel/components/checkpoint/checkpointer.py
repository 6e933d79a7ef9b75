"""Crash-safe training checkpoints: save, find the one to resume from, check it fits, load it.

Layout (docs/architecture.md): ``<checkpoint_dir>/epoch_<E>_step_<S>/`` with ``state/`` (trainable weights and
optimizer state: one safetensors shard per rank plus ``extra.json`` for the structure and non-tensor values),
``model/`` (a consolidated HF folder, or a PEFT adapter), ``scheduler.json``, ``train_state.json``,
``rng_rank<R>.json`` + ``rng_rank<R>.safetensors``, ``config.yaml``, ``meta.json`` and, written last,
``manifest.json`` (every other file with its size and sha256), plus a ``LATEST`` file naming the newest.

Nothing a load reads is a pickle: JSON and safetensors only, so a checkpoint from someone else cannot run code.
The load checks the sha256 of every file it reads against the manifest first, so a damaged file is reported as
such (and not as a changed model). Old pickle-based checkpoints are refused unless
``AUTOMODEL_TRUST_PICKLED_CHECKPOINTS=1`` (see ``_legacy``).

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

from automodel.components.checkpoint import _identity, _integrity, _layout, _legacy, _tree
from automodel.components.checkpoint._model_io import (
    ModelWriter,
    load_state,
    prepare_state,
    save_state,
    write_hf_model,
)
from automodel.components.checkpoint.config import CheckpointConfig, CheckpointError

logger = logging.getLogger(__name__)

STRUCTURAL_IDENTITY_KEYS = _identity.STRUCTURAL_IDENTITY_KEYS


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
    rank calls them. Every rank writes its shard of ``state/`` and its own ``rng_rank<R>.*`` and hashes what it
    wrote; the consolidated ``model/`` is gathered to rank 0; rank 0 writes the rest, the manifest, and publishes.
    The model may be plain, DDP-wrapped or FSDP2-sharded.
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

        ``train_state`` and ``model_identity`` must be JSON-serialisable; ``rng_state`` and the scheduler's
        ``state_dict()`` may hold tensors, numbers, strings, None, lists, tuples and dicts (nothing is pickled).
        ``model_writer(dir)``, called on every rank, replaces the consolidated HF model in ``model/`` (a PEFT run
        writes its adapter).
        """
        if not self.enabled:
            return None
        distributed = self.world_size > 1
        assert not distributed or dist.is_initialized(), "world_size > 1 needs torch.distributed initialised"
        name = _layout.checkpoint_name(epoch, step)
        final = self.checkpoint_dir / name

        # Encode everything first: a value that cannot be written (not JSON, an unsupported type) fails here, on
        # the rank that has it, before any file exists; the others learn of it and raise too.
        failure: BaseException | None = None
        try:
            state = prepare_state(model, optimizer)  # first: it may run a collective (optimizer state init)
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
            scheduler = (
                None
                if lr_scheduler is None
                else _tree.encode_small(lr_scheduler.state_dict(), "the LR scheduler state")
            )
            rng = None if rng_state is None else _tree.encode_small(rng_state, "rng_state")
        except Exception as error:
            failure = error
        self._raise_if_any_rank_failed(failure, final, "preparing")

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

        hashes: dict[str, dict[str, Any]] = {}
        try:
            written = save_state(temp / "state", state, rank=self.rank)  # collective: every rank writes its shard
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
                if scheduler is not None:
                    _tree.write_small(temp, "scheduler", scheduler, _layout.write_text)
                _layout.write_text(temp / "train_state.json", train_json)
                _layout.write_text(temp / "config.yaml", config_yaml)
                _layout.write_text(temp / "meta.json", meta_json)
            if rng is not None:
                written += _tree.write_small(temp, f"rng_rank{self.rank}", rng, _layout.write_text)
            hashes = _integrity.hash_files(temp, written)  # in parallel on every rank; rank 0 hashes the rest
        except Exception as error:
            failure = error
        self._raise_if_any_rank_failed(failure, final, "writing")

        hashes = self._gather_hashes(hashes)
        if self.rank == 0:
            try:
                self._publish(temp, final, hashes)
            except Exception as error:
                failure = error
        self._raise_if_any_rank_failed(failure, final, "publishing")
        return final

    def _gather_hashes(self, hashes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if self.world_size == 1:
            return hashes
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, hashes)  # among this run's own ranks: small dicts of sizes and digests
        return {name: entry for part in gathered for name, entry in part.items()}

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

    def _publish(self, temp: Path, final: Path, hashes: dict[str, dict[str, Any]]) -> None:
        rest = [file for file in _integrity.all_files(temp) if file.relative_to(temp).as_posix() not in hashes]
        hashes = {**hashes, **_integrity.hash_files(temp, rest)}
        _layout.write_text(temp / _layout.MANIFEST, _integrity.manifest_text(hashes))  # last: marks it complete
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
        latest, _ = _layout.read_latest(self.checkpoint_dir)
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
        entries = _layout.checkpoint_entries(root)
        complete = [entry for entry in entries if _layout.is_complete(entry)]
        newest = complete[-1] if complete else None
        legacy = [] if _layout.trusts_pickles() else [entry for entry in entries if _layout.is_legacy(entry)]
        if legacy and (newest is None or _order(legacy[-1]) > _order(newest)):
            raise _legacy.refusal(legacy[-1])  # resuming from an older checkpoint instead would silently lose steps
        fallback = (
            f"resuming from the newest complete one, {newest}" if newest else "no complete checkpoint: starting fresh"
        )
        latest, problem = _layout.read_latest(root)
        if problem is not None:
            logger.warning("%s %s; it is ignored: %s", root / _layout.LATEST, problem, fallback)
            return newest
        if latest is None:
            if newest is not None:
                logger.warning("'%s' has no LATEST file; resuming from the newest complete checkpoint %s", root, newest)
            return newest
        problems = _layout.missing_parts(latest)
        if problems:
            logger.warning(
                "%s names '%s', which is not a complete checkpoint (%s); %s",
                root / _layout.LATEST,
                latest,
                "; ".join(problems),
                fallback,
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
        if _layout.is_legacy(path) and not _layout.trusts_pickles():
            raise _legacy.refusal(path)
        problems = _layout.missing_parts(path)
        if problems:
            raise CheckpointError(
                f"checkpoint.restore_from '{path}' is not a complete checkpoint: {'; '.join(problems)}; give an "
                "epoch_<E>_step_<S> directory written by a finished save"
            )
        return path

    # --- check and load ---------------------------------------------------------------------------------------

    def check_identity(self, path: Path, model_identity: dict[str, Any]) -> None:
        """Raise CheckpointError when the checkpoint at ``path`` holds a different model (or, for an adapter, was
        trained on a different base model)."""
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text())
            saved = (meta.get("model_identity") if isinstance(meta, dict) else None) or {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"cannot read '{path / 'meta.json'}' ({error}); the checkpoint is damaged") from None
        if not isinstance(saved, dict):
            raise CheckpointError(f"'{path / 'meta.json'}' has no model identity; the checkpoint is damaged")
        ours = path.resolve().parent == self.checkpoint_dir.resolve()
        differing = [
            key
            for key in STRUCTURAL_IDENTITY_KEYS
            if key in saved and key in model_identity and saved[key] != model_identity[key]
        ]
        if differing:
            # "LlamaForCausalLM 134.5M vs Qwen2ForCausalLM 494M"; other differing keys only when that reads the same
            extra = [key for key in differing if key not in ("architecture", "num_parameters")]
            if _identity.describe(saved, []) != _identity.describe(model_identity, []):
                extra = []
            models = f"{_identity.describe(saved, extra)} vs {_identity.describe(model_identity, extra)}"
            if ours:
                raise CheckpointError(
                    f"checkpoint dir '{self.checkpoint_dir}' holds a checkpoint of a different model ({models}); use "
                    "another checkpoint.checkpoint_dir or remove it"
                )
            raise CheckpointError(
                f"checkpoint '{path}' (checkpoint.restore_from) holds a different model ({models}); point "
                "checkpoint.restore_from at a checkpoint of this model"
            )
        if _identity.different_base(saved, model_identity):
            source = saved.get("name_or_path")
            raise CheckpointError(
                f"checkpoint '{path}' was trained on a different base model: its adapter (trainable weights) was "
                f"trained on frozen weights{f' from {source!r}' if source else ''} that differ from this model's "
                f"({_identity.describe(model_identity, [])}, same shapes, e.g. a base vs an instruct model); load the "
                "base model it was trained on (model.pretrained_model_name_or_path), or "
                + ("use another checkpoint.checkpoint_dir" if ours else "another checkpoint.restore_from")
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

        Every file it reads is first checked against ``manifest.json`` (size and sha256; the hashing is split over
        the ranks). ``rng_state`` is this rank's (``rank`` defaults to the checkpointer's), or None with a warning
        when the checkpoint was saved by fewer ranks.
        """
        path = Path(path)
        if optimizer is not None and model is None:
            raise ValueError("loading optimizer state needs the model too (its state is keyed by parameter name)")
        rank = self.rank if rank is None else rank
        if _layout.is_legacy(path):
            if not _layout.trusts_pickles():
                raise _legacy.refusal(path)
            return self._load_legacy(path, model, optimizer, lr_scheduler, rank)
        problems = _layout.missing_parts(path)
        if problems:
            raise CheckpointError(f"'{path}' is not a complete checkpoint: {'; '.join(problems)}")
        self._verify(path, model is not None, lr_scheduler is not None)

        if model is not None:
            load_state(path / "state", model, optimizer)
        if lr_scheduler is not None:
            if not (path / "scheduler.json").is_file():
                raise CheckpointError(f"'{path}' has no scheduler.json (it was saved without an LR scheduler)")
            lr_scheduler.load_state_dict(_tree.read_small(path, "scheduler"))
        train_state = self._read_json(path / "train_state.json")
        rng_state = None
        if (path / f"rng_rank{rank}.json").is_file():
            rng_state = _tree.read_small(path, f"rng_rank{rank}")
        else:
            self._warn_no_rng(path, rank)
        self._resumed.add(path.resolve())
        logger.info("loaded checkpoint %s", path)
        return {"train_state": train_state, "rng_state": rng_state}

    def _verify(self, path: Path, reads_state: bool, reads_scheduler: bool) -> None:
        """Collective: the sha256 of every file this load reads, each rank hashing its share; raise on any problem."""
        files = _layout.read_manifest(path)

        def read(name: str) -> bool:
            if name.startswith("state/"):
                return reads_state
            if name.startswith("scheduler."):
                return reads_scheduler
            return name in ("meta.json", "train_state.json") or name.startswith("rng_rank")

        wanted = sorted((name for name in files if read(name)), key=lambda name: (-files[name]["size"], name))
        share = {name: files[name] for name in wanted[self.rank :: self.world_size]}
        problems = _integrity.verify(path, share)
        if reads_state and self.rank == 0:  # the reader takes every shard in state/: each must be a verified one
            problems += [
                f"state/{file.name} is not listed in {_layout.MANIFEST} (added after the save?)"
                for file in sorted((path / "state").glob("*.safetensors"))
                if f"state/{file.name}" not in files
            ]
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, problems)
            problems = sorted(problem for part in gathered for problem in part)
        if problems:
            raise CheckpointError(
                f"checkpoint '{path}' is damaged: {'; '.join(problems)}; it cannot be resumed: use another "
                "checkpoint (remove this one to resume from the previous, or set checkpoint.restore_from)"
            )

    def _load_legacy(
        self, path: Path, model: nn.Module | None, optimizer: Any, lr_scheduler: Any, rank: int
    ) -> dict[str, Any]:
        _legacy.warn_trusted(path)
        problems = _layout.missing_parts(path)
        if problems:
            raise CheckpointError(f"'{path}' is not a complete checkpoint: {'; '.join(problems)}")
        if model is not None:
            _legacy.load_state(path / "state", model, optimizer)
        if lr_scheduler is not None:
            lr_scheduler.load_state_dict(_legacy.load_scheduler(path))
        train_state = self._read_json(path / "train_state.json")
        rng_state = _legacy.load_rng(path, rank)
        if rng_state is None:
            self._warn_no_rng(path, rank)
        self._resumed.add(path.resolve())
        logger.info("loaded checkpoint %s", path)
        return {"train_state": train_state, "rng_state": rng_state}

    @staticmethod
    def _read_json(file: Path) -> Any:
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"cannot read '{file}' ({error}); the checkpoint is damaged") from None

    def _warn_no_rng(self, path: Path, rank: int) -> None:
        meta = self._read_json(path / "meta.json")
        logger.warning(
            "%s has no RNG state for rank %d (saved with world_size %s, now %d): this rank's random streams "
            "restart from the seed, so the run does not continue bit-exactly",
            path,
            rank,
            meta.get("world_size") if isinstance(meta, dict) else None,
            self.world_size,
        )


def _order(path: Path) -> tuple[int, int]:
    epoch, step = _layout.parse_name(path.name)
    return (step, epoch)

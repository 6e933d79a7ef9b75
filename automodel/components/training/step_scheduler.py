"""Groups micro-batches into optimizer steps and decides when to validate, checkpoint and stop.

Step semantics (the one thing a recipe must know): ``scheduler.step`` counts optimizer steps. It is incremented
*before* a group is yielded, so inside the loop body of the k-th group (1-based), and after it, ``step == k``; the
body is expected to perform optimizer step k, and ``is_val_step`` / ``is_ckpt_step`` / ``is_last_step`` and
``state_dict()`` read in the body describe the state once that step is done.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from automodel.components.training.errors import TrainingError

logger = logging.getLogger(__name__)


def _positive_int_problem(name: str, value: Any, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    # bool is an int subclass; `max_steps: true` in YAML is a mistake, not 1
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        expected = "a positive integer or null" if optional else "a positive integer"
        return f"step_scheduler.{name} must be {expected}, got {value!r}"
    return None


def _find_sampler_with(dataloader: Any, method: str) -> Any | None:
    """The first of ``dataloader.sampler`` / ``dataloader.batch_sampler.sampler`` that has ``method`` (duck-typed)."""
    candidates = [getattr(dataloader, "sampler", None)]
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    candidates.append(getattr(batch_sampler, "sampler", None))
    for candidate in candidates:
        if candidate is not None and callable(getattr(candidate, method, None)):
            return candidate
    return None


class StepScheduler:
    """Yields one list of ``grad_acc_steps`` micro-batches per optimizer step, across epochs, and resumes exactly.

    ``grad_acc_steps = global_batch_size // (local_batch_size * dp_size)``. An incomplete group at the end of an epoch
    is dropped (counted in ``num_dropped_batches``). The run stops after ``max_steps`` optimizer steps or after
    ``num_epochs`` epochs, whichever comes first.

    Exact resume needs a sampler with ``set_epoch(epoch)`` and ``set_start(sample_index)`` (on
    ``dataloader.sampler`` or ``dataloader.batch_sampler.sampler``); ``set_start`` takes the index of the first sample
    of this rank's epoch order to yield. Without ``set_start`` a resumed run restarts its epoch from the beginning
    (with a warning).
    """

    def __init__(
        self,
        global_batch_size: int,
        local_batch_size: int,
        *,
        dp_size: int = 1,
        max_steps: int | None = None,
        num_epochs: int | None = 1,
        val_every_steps: int | None = None,
        ckpt_every_steps: int | None = None,
        dataloader: Any = None,
    ) -> None:
        problems = self.check_settings(
            global_batch_size,
            local_batch_size,
            max_steps=max_steps,
            num_epochs=num_epochs,
            val_every_steps=val_every_steps,
            ckpt_every_steps=ckpt_every_steps,
        )
        dp_problem = _positive_int_problem("dp_size", dp_size, optional=False)
        if dp_problem:
            problems.append(dp_problem)
        if problems:
            raise TrainingError(problems[0])
        per_micro_step = local_batch_size * dp_size
        divides = self.batch_size_problem(global_batch_size, local_batch_size, dp_size)
        if divides:
            raise TrainingError(divides)

        self.global_batch_size = global_batch_size
        self.local_batch_size = local_batch_size
        self.dp_size = dp_size
        self.grad_acc_steps = global_batch_size // per_micro_step
        self.max_steps = max_steps
        self.num_epochs = num_epochs
        self.val_every_steps = val_every_steps
        self.ckpt_every_steps = ckpt_every_steps
        self.dataloader = dataloader

        self.step = 0
        self.epoch = 0
        # micro-batches of the current epoch consumed by completed optimizer steps (the resume position)
        self.batches_in_epoch = 0
        self.num_dropped_batches = 0
        self._resuming = False

        # Read once: a sampler may shorten its length after set_start(), and the total must not change on resume.
        self._batches_per_epoch: int | None = None
        if dataloader is not None:
            try:
                self._batches_per_epoch = len(dataloader)
            except TypeError:  # an iterable dataset without __len__
                self._batches_per_epoch = None
            if self._batches_per_epoch is None and max_steps is None:
                logger.warning(
                    "the dataloader has no length and step_scheduler.max_steps is not set: the total number of "
                    "steps is unknown (LR schedules need it) and the final step is not detected; set max_steps"
                )
            if self._batches_per_epoch is not None and self._batches_per_epoch < self.grad_acc_steps:
                raise TrainingError(
                    f"step_scheduler: the dataloader yields {self._batches_per_epoch} micro-batches per epoch, fewer "
                    f"than the {self.grad_acc_steps} one optimizer step needs (global_batch_size({global_batch_size}) "
                    f"/ (local_batch_size({local_batch_size}) x dp_size({dp_size}))); lower global_batch_size or "
                    "use more data"
                )

    @staticmethod
    def batch_size_problem(
        global_batch_size: int, local_batch_size: int, dp_size: int, *, dp_name: str = "dp_size"
    ) -> str | None:
        """The training contract's rule: global = local x data-parallel size x gradient-accumulation steps."""
        per_micro_step = local_batch_size * dp_size
        if global_batch_size % per_micro_step == 0:
            return None
        lower = max(per_micro_step, global_batch_size // per_micro_step * per_micro_step)
        return (
            f"step_scheduler: global_batch_size({global_batch_size}) must be a multiple of "
            f"local_batch_size({local_batch_size}) x {dp_name}({dp_size}) = {per_micro_step}; "
            f"set global_batch_size to e.g. {lower} or {lower + per_micro_step}, or change local_batch_size"
        )

    @staticmethod
    def check_settings(
        global_batch_size: Any,
        local_batch_size: Any,
        *,
        max_steps: Any = None,
        num_epochs: Any = 1,
        val_every_steps: Any = None,
        ckpt_every_steps: Any = None,
    ) -> list[str]:
        """Every problem with these settings, one message each (empty when they are fine).

        The constructor raises the first of them; a config validator calls this to report them all before anything
        is built. The multiple-of check needs the data-parallel size, so it stays in the constructor.
        """
        problems = [
            _positive_int_problem("global_batch_size", global_batch_size, optional=False),
            _positive_int_problem("local_batch_size", local_batch_size, optional=False),
        ]
        for name, value in [
            ("max_steps", max_steps),
            ("num_epochs", num_epochs),
            ("val_every_steps", val_every_steps),
            ("ckpt_every_steps", ckpt_every_steps),
        ]:
            problems.append(_positive_int_problem(name, value, optional=True))
        if max_steps is None and num_epochs is None:
            problems.append("step_scheduler: set max_steps or num_epochs (both are null, so training would never stop)")
        return [problem for problem in problems if problem]

    # --- totals and cadence -----------------------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int | None:
        """Optimizer steps in one full epoch, or None when the dataloader has no length."""
        if self._batches_per_epoch is None:
            return None
        return self._batches_per_epoch // self.grad_acc_steps

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (resumed or not): what LR schedules need."""
        by_epochs = None
        if self.num_epochs is not None and self.steps_per_epoch is not None:
            by_epochs = self.num_epochs * self.steps_per_epoch
        if self.max_steps is not None and by_epochs is not None:
            return min(self.max_steps, by_epochs)
        if self.max_steps is not None:
            return self.max_steps
        if by_epochs is not None:
            return by_epochs
        raise TrainingError(
            "step_scheduler: the total number of steps is unknown (the dataloader has no length); set "
            "step_scheduler.max_steps"
        )

    @property
    def is_last_step(self) -> bool:
        """True for the final optimizer step of the run (False when the total is unknown)."""
        try:
            return self.step >= self.total_steps
        except TrainingError:
            return False

    @property
    def is_val_step(self) -> bool:
        """True after every ``val_every_steps``-th optimizer step."""
        return self.val_every_steps is not None and self.step > 0 and self.step % self.val_every_steps == 0

    @property
    def is_ckpt_step(self) -> bool:
        """True after every ``ckpt_every_steps``-th optimizer step, and always after the last one.

        Whether a checkpoint is written at all is the checkpointer's decision (``checkpoint.enabled``).
        """
        if self.step == 0:
            return False
        every = self.ckpt_every_steps is not None and self.step % self.ckpt_every_steps == 0
        return every or self.is_last_step

    def _finished(self) -> bool:
        if self.max_steps is not None and self.step >= self.max_steps:
            return True
        return self.num_epochs is not None and self.epoch >= self.num_epochs

    # --- iteration --------------------------------------------------------------------------------------------

    def _start_epoch(self) -> None:
        epoch_sampler = _find_sampler_with(self.dataloader, "set_epoch")
        if epoch_sampler is not None:
            epoch_sampler.set_epoch(self.epoch)
        start_sampler = _find_sampler_with(self.dataloader, "set_start")
        start = self.batches_in_epoch * self.local_batch_size if self._resuming else 0
        if start_sampler is not None:
            # also called with 0 for a fresh epoch, so a sampler that keeps its start across epochs is reset
            start_sampler.set_start(start)
        elif start > 0:
            logger.warning(
                "resuming in epoch %d after %d micro-batches, but the dataloader's sampler has no set_start(): the "
                "data order restarts this epoch from its beginning",
                self.epoch,
                self.batches_in_epoch,
            )
            self.batches_in_epoch = 0
        self._resuming = False

    def __iter__(self) -> Iterator[list[Any]]:
        if self.dataloader is None:
            raise TrainingError("StepScheduler has no dataloader to iterate; pass dataloader=... when building it")
        while not self._finished():
            self._start_epoch()
            started_at = self.batches_in_epoch
            group: list[Any] = []
            for batch in self.dataloader:
                group.append(batch)
                if len(group) < self.grad_acc_steps:
                    continue
                # update before yielding: state_dict() read in the loop body describes the state after this step
                self.batches_in_epoch += len(group)
                self.step += 1
                yield group
                group = []
                if self.max_steps is not None and self.step >= self.max_steps:
                    return
            if started_at == 0 and self.batches_in_epoch == 0:
                raise TrainingError(
                    f"step_scheduler: epoch {self.epoch} produced no optimizer step: the dataloader yielded "
                    f"{len(group)} micro-batches, fewer than grad_acc_steps({self.grad_acc_steps}); lower "
                    "global_batch_size or use more data"
                )
            if group:
                self.num_dropped_batches += len(group)
                logger.info(
                    "epoch %d: dropped %d trailing micro-batch(es) that did not fill a group of %d",
                    self.epoch,
                    len(group),
                    self.grad_acc_steps,
                )
            if self.num_epochs is not None and self.epoch + 1 >= self.num_epochs:
                # Keep `epoch` on the last epoch trained, so a final checkpoint after the loop gets the same name as
                # one saved in the body of the last step. Resuming from this state replays the dropped tail only.
                self._resuming = True
                return
            self.epoch += 1
            self.batches_in_epoch = 0

    # --- resume -----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        """The resume position: ``{"step", "epoch", "batches_in_epoch"}`` (JSON-serialisable)."""
        return {"step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Restore the position; the next iteration continues the epoch where the saved run stopped."""
        missing = [key for key in ("step", "epoch", "batches_in_epoch") if key not in state_dict]
        if missing:
            raise TrainingError(
                f"step scheduler state {state_dict!r} lacks {missing}; the checkpoint's train_state.json is "
                "incomplete or from another program"
            )
        self.step = int(state_dict["step"])
        self.epoch = int(state_dict["epoch"])
        self.batches_in_epoch = int(state_dict["batches_in_epoch"])
        self._resuming = True

"""The one training loop: epochs of micro-batches through a ``Trainer``, private or not.

Per micro-batch: gradients over its K views, a divergence check, alignment cosines, the step.
Per optimizer step: EMA update and diagnostics (the trainer is told beforehand which steps are
logged, so it records clipping and update diagnostics on those only). Per epoch: its record and, with ``save``, a
checkpoint. The loop never asks whether the trainer is private.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch

from reproduce.errors import ReproduceError
from reproduce.records.result import EpochRecord, StepRecord
from reproduce.training.progress import Progress
from reproduce.training.state import TrainingState
from reproduce.training.tracker import StepTracker, finite
from reproduce.training.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """What the loop hands back: counts, time and the recorded series."""

    steps: int
    seen: int
    seconds: float
    epochs: tuple[EpochRecord, ...]
    step_records: tuple[StepRecord, ...]


def train(
    trainer: Trainer,
    *,
    model: torch.nn.Module,
    tracker: StepTracker,
    ema,
    key: str,
    label: str,
    resume: TrainingState | None = None,
    save: Callable[[TrainingState], None] | None = None,
    progress: bool = True,
) -> TrainingRun:
    """Run ``trainer`` for its steps, from ``resume`` (restored here) or from the start.

    Args:
        trainer: The private or plain trainer of the cell.
        model: The cell's model (its weights are checkpointed).
        tracker: Per-step and per-epoch diagnostics, hooked into ``model``.
        ema: The weights' moving average, or None.
        key: ``checkpoint_key`` of the cell.
        label: The cell id, for messages and the progress bar.
        resume: A checkpoint's state to continue from.
        save: Called with the state after every epoch (a checkpoint writer).
        progress: Show progress (``reproduce.training.progress``: a bar on a terminal, log lines elsewhere).
    """
    epoch0, step, seen, elapsed, epochs = 0, 0, 0, 0.0, []
    if resume is not None:
        resume.restore(model=model, ema=ema, trainer=trainer)
        epoch0, step, seen, elapsed, epochs = resume.epoch_done, resume.step, resume.seen, resume.elapsed, resume.epochs
        tracker.rows = list(resume.steps)
    t0 = time.perf_counter()
    # closed on any exit (Ctrl-C included), so what is printed next starts on a line of its own
    with Progress(total=trainer.steps, initial=step, seen=seen, label=label, enabled=progress) as bar:
        trainer.record_next_step(tracker.due(step + 1))
        for epoch in range(epoch0, trainer.epochs):
            for x, y in trainer.batches():
                if step == trainer.steps:
                    break
                loss, targets = trainer.forward_backward(x, y)
                # An empty Poisson batch has a NaN mean loss but is a valid noise-only DP step.
                if len(x) and not torch.isfinite(loss):
                    raise ReproduceError(
                        f"cell {label}: training diverged (loss {loss.item()}) at step {step + 1}, "
                        f"epoch {epoch}; lower the learning rate in the study's training.optimizer"
                    )
                tracker.record_batch(targets)
                seen += len(x)
                if not trainer.step():
                    continue
                step += 1
                if ema is not None:
                    ema.update()
                tracker.after_step(
                    step, epoch, loss, clipped=trainer.clipped_update, diagnostics=trainer.step_diagnostics
                )
                trainer.record_next_step(tracker.due(step + 1))  # before the next step's first micro-batch
                bar.update(step=step, epoch=epoch, loss=loss, seen=seen)
            epochs.append(EpochRecord(epoch=epoch, loss=finite(loss), alignment=tracker.end_epoch()))
            if save is not None:
                save(
                    TrainingState.capture(
                        key=key,
                        epoch_done=epoch + 1,
                        step=step,
                        seen=seen,
                        elapsed=elapsed + time.perf_counter() - t0,
                        epochs=epochs,
                        steps=tracker.rows,
                        model=model,
                        ema=ema,
                        trainer=trainer,
                    )
                )
    return TrainingRun(
        steps=step,
        seen=seen,
        seconds=elapsed + time.perf_counter() - t0,
        epochs=tuple(epochs),
        step_records=tuple(tracker.rows),
    )

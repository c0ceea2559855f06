"""What a training checkpoint holds, so that a run resumed after any epoch continues bit-identically.

``TrainingState`` is captured after every epoch and restored before the loop continues; it is saved
as a plain dict (``to_dict``) by ``reproduce.training.checkpoint``, which adds the checksum and atomicity.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from typing import Any

import numpy as np
import torch

from reproduce.records.result import EpochRecord, StepRecord

# The layout of TrainingState.to_dict; part of the key, so a checkpoint of another layout (one
# written before TrainingState) is set aside with a warning, not misread.
CHECKPOINT_FORMAT = 2


def checkpoint_key(cell) -> str:
    """Identifies what a checkpoint was trained for, and its format; any config change invalidates it."""
    identity = {"format": CHECKPOINT_FORMAT, "config": cell.config()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass
class TrainingState:
    """Everything that evolves during training, after ``epoch_done`` epochs.

    Attributes:
        key: ``checkpoint_key`` of the cell it belongs to.
        epoch_done: Epochs finished.
        step: Optimizer steps taken.
        seen: Training samples (micro-batch rows) processed.
        elapsed: Training seconds so far (wall clock).
        epochs: The finished epochs' records.
        steps: The logged steps' records.
        model: The model's ``state_dict``.
        ema: The weights' moving average, None without EMA.
        trainer: The trainer's own state (optimizer, data order, views, noise and accountant).
        torch_rng: torch's global generator state.
        numpy_rng: numpy's global generator state.
    """

    key: str
    epoch_done: int
    step: int
    seen: int
    elapsed: float
    epochs: list[EpochRecord]
    steps: list[StepRecord]
    model: dict[str, torch.Tensor]
    ema: list[torch.Tensor] | None
    trainer: dict[str, Any]
    torch_rng: torch.Tensor
    numpy_rng: tuple

    @classmethod
    def capture(
        cls,
        *,
        key: str,
        epoch_done: int,
        step: int,
        seen: int,
        elapsed: float,
        epochs,
        steps,
        model: torch.nn.Module,
        ema,
        trainer,
    ) -> TrainingState:
        """A copy of the run's state now, with the global generators' states.

        Copied, not referenced: state dicts hold the live weights and buffers, which training
        goes on to change in place.
        """
        live = {"model": model.state_dict(), "ema": None if ema is None else ema.shadow, "trainer": trainer.state()}
        return cls(
            key=key,
            epoch_done=epoch_done,
            step=step,
            seen=seen,
            elapsed=elapsed,
            epochs=list(epochs),
            steps=list(steps),
            **copy.deepcopy(live),
            torch_rng=torch.get_rng_state(),
            numpy_rng=np.random.get_state(),
        )

    def restore(self, *, model: torch.nn.Module, ema, trainer) -> None:
        """Put the model, the average, the trainer and the global generators back to this state."""
        model.load_state_dict(self.model)
        if ema is not None:
            ema.shadow = self.ema
        trainer.load_state(self.trainer)
        torch.set_rng_state(self.torch_rng)
        np.random.set_state(self.numpy_rng)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint payload (records as plain dicts, so a checkpoint needs no suite class to load)."""
        return {
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
            "epochs": [e.to_json() for e in self.epochs],
            "steps": [s.to_json() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TrainingState:
        return cls(
            **{
                **payload,
                "epochs": [EpochRecord.from_json(e) for e in payload["epochs"]],
                "steps": [StepRecord.from_json(s) for s in payload["steps"]],
            }
        )

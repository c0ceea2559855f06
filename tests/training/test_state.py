"""TrainingState: a checkpoint's state restores a run that continues exactly as if never stopped."""

from __future__ import annotations

import pytest
import torch

from reproduce.training.checkpoint import load_checkpoint, save_checkpoint
from reproduce.training.ema import EMA
from reproduce.training.loop import train
from reproduce.training.state import TrainingState
from reproduce.training.tracker import StepTracker
from tests.training.test_trainers import make_trainer


def _run(private: bool, *, resume=None, save=None):
    torch.manual_seed(0)
    trainer, model = make_trainer(private=private, k=2)
    tracker = StepTracker(model, task=trainer.task, every=3)
    ema = EMA(trainer.params, decay=0.9)
    run = train(
        trainer, model=model, tracker=tracker, ema=ema, key="k", label="cell", resume=resume, save=save, progress=False
    )
    return run, model, ema


@pytest.mark.parametrize("private", [False, True])
def test_resuming_from_the_first_epochs_checkpoint_continues_bit_identically(private, tmp_path):
    saved = []
    whole, model, ema = _run(private, save=saved.append)
    assert [s.epoch_done for s in saved] == [1, 2]
    path = tmp_path / "cell.ckpt"
    save_checkpoint(path, saved[0].to_dict())  # through the file format
    state = TrainingState.from_dict(load_checkpoint(path, expect_key="k"))
    assert state.epochs == saved[0].epochs and state.steps == saved[0].steps and state.step == saved[0].step
    resumed, model2, ema2 = _run(private, resume=state)
    assert resumed.steps == whole.steps and resumed.seen == whole.seen
    assert resumed.epochs == whole.epochs and resumed.step_records == whole.step_records
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow, ema2.shadow))


def test_state_holds_the_trainers_generators_and_the_global_ones():
    saved = []
    _run(True, save=saved.append)
    state = saved[0]
    assert {"optimizer", "accountant_history", "sampler_gen", "noise_gen", "views_gen"} <= set(state.trainer)
    assert state.key == "k" and state.elapsed > 0 and state.ema is not None
    payload = state.to_dict()
    assert all(isinstance(row, dict) for row in payload["steps"] + payload["epochs"])  # no suite class pickled
    assert TrainingState.from_dict(payload).steps == state.steps


def test_a_checkpoint_of_the_old_layout_is_set_aside_not_misread(tmp_path):
    import hashlib
    import json

    from reproduce.data.stand_in import stand_in
    from reproduce.study import parse_study
    from reproduce.training.cell import run_cell
    from tests.training.test_trainers import STUDY

    (cell,) = parse_study(STUDY.format(epsilon="non-private", k=1).replace("epochs: 2", "epochs: 1")).cells()
    old_key = hashlib.sha256(json.dumps(cell.config(), sort_keys=True).encode()).hexdigest()
    path = tmp_path / "cell.ckpt"
    save_checkpoint(path, {"key": old_key, "epoch_done": 1, "log": [], "sampler_gen": None})  # before TrainingState
    with pytest.warns(UserWarning, match="another configuration"):
        result = run_cell(
            cell, data_root=None, progress=False, checkpoint=path, splits=stand_in(cell.dataset, size=28, seed=0)
        )
    assert result.metrics["steps"] == 32

"""Kept weights: model.pt rebuilds the very model the metrics describe, and refuses any other."""

from __future__ import annotations

import dataclasses
import json

import pytest

from reproduce.data.stand_in import stand_in
from reproduce.errors import ReproduceError
from reproduce.training.cell import run_cell, write_cell
from reproduce.training.evaluate import evaluate
from reproduce.training.kept import load_cell_model
from reproduce.training.weights import save_weights, weights_checksum
from tests.conftest import tiny_study


@pytest.fixture(scope="module")
def cells():
    # EMA on: the kept weights must be the averaged ones the metrics were measured on, not the last step's.
    return tiny_study(
        name="kept",
        model={"widths": [2, 2, 4]},
        training={
            "optimizer": None,
            "batch_size": 16,
            "physical_batch_size": 8,
            "epochs": None,
            "steps": 3,
            "max_train_samples": 32,
            "ema_decay": 0.5,
        },
        dataset="bloodmnist",
        group=["e", "C4"],
        epsilon=8,
    ).cells()


@pytest.fixture(scope="module")
def splits(cells):
    return stand_in("bloodmnist", size=28, seed=0)


@pytest.fixture(scope="module", params=["e", "C4"])
def written(request, cells, splits, tmp_path_factory):
    cell = next(c for c in cells if c.group == request.param)
    result = run_cell(cell, data_root=None, progress=False, splits=splits)
    out = tmp_path_factory.mktemp(cell.id)
    write_cell(result, out)
    return cell, result, out


def test_the_loaded_model_reproduces_every_recorded_metric(written, splits):
    cell, result, out = written
    assert result.weights.file == "model.pt" and result.weights.ema
    model = load_cell_model(cell, results_dir=out)
    assert not model.training
    again = evaluate(model, splits, task=splits.info.task, batch_size=64).metrics
    assert again == {k: result.metrics[k] for k in again}


def test_the_weights_are_written_deterministically(written, tmp_path):
    _, result, out = written
    # same bytes from the same weights (the archive name inside does not follow the temp file's)
    assert save_weights(result.state, tmp_path / "again.pt") == result.weights.sha256
    assert (tmp_path / "again.pt").read_bytes() == (out / "model.pt").read_bytes()
    assert json.loads((out / "result.json").read_text())["weights"]["sha256"] == result.weights.sha256


def test_changed_weights_are_refused(written, tmp_path):
    cell, result, out = written
    state = {k: v.clone() for k, v in result.state.items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] += 1e-6
    save_weights(state, tmp_path / "model.pt")
    (tmp_path / "result.json").write_text((out / "result.json").read_text())
    with pytest.raises(ReproduceError, match="checksum"):
        load_cell_model(cell, results_dir=tmp_path)
    assert weights_checksum(state) != result.weights.sha256


def test_missing_weights_and_old_results_say_what_to_do(written, tmp_path):
    cell, result, out = written
    (tmp_path / "result.json").write_text((out / "result.json").read_text())
    with pytest.raises(ReproduceError, match="dvc pull"):
        load_cell_model(cell, results_dir=tmp_path)
    with pytest.raises(ReproduceError, match="before trained weights were kept"):
        load_cell_model(cell, results_dir=tmp_path, result=dataclasses.replace(result, weights=None))
    with pytest.raises(ReproduceError, match="no result"):
        load_cell_model(cell, results_dir=tmp_path / "nowhere")


def test_weights_of_another_model_are_refused(cells, written, tmp_path):
    cell, result, out = written
    other = next(c for c in cells if c is not cell)
    with pytest.raises(ReproduceError, match="do not fit"):
        load_cell_model(other, results_dir=out)


def test_the_train_stage_keeps_the_file_the_trainer_writes():
    from reproduce.pipeline.stages import CELL_OUTPUTS
    from reproduce.training.weights import WEIGHTS_FILE

    assert WEIGHTS_FILE in CELL_OUTPUTS


def test_a_truncated_weights_file_names_the_file_and_how_to_restore_or_retrain_it(written, tmp_path):
    cell, result, out = written
    (tmp_path / "result.json").write_text((out / "result.json").read_text())
    (tmp_path / "model.pt").write_bytes((out / "model.pt").read_bytes()[:200])  # a killed copy
    with pytest.raises(ReproduceError) as info:
        load_cell_model(cell, results_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "model.pt") in msg and "dvc pull" in msg, msg
    assert f"reproduce train studies/kept.yaml --cell {cell.id}" in msg and f"train@{cell.id}" in msg, msg

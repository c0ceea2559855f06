"""CellResult: what the trainer writes is what the report and `reproduce check` read back."""

from __future__ import annotations

import dataclasses
import json

import pytest

from reproduce.data.stand_in import stand_in
from reproduce.errors import ReproduceError
from reproduce.records.result import Alignment, CellResult, EpochRecord, StepRecord, read_result
from reproduce.training.cell import run_cell, write_cell
from tests.conftest import tiny_study
from tests.report.conftest import FAKE_CELL, fake_result


@pytest.fixture(scope="module")
def trained() -> CellResult:
    # one DP cell, 2 steps of the default optimizer, every step logged
    (cell,) = tiny_study(
        name="result",
        model={"widths": [2, 2, 4]},
        training={
            "optimizer": None,
            "batch_size": 16,
            "physical_batch_size": 8,
            "epochs": None,
            "steps": 2,
            "max_train_samples": 32,
            "log_every": 1,
        },
        dataset="bloodmnist",
        epsilon=8,
    ).cells()
    return run_cell(cell, data_root=None, progress=False, splits=stand_in(cell.dataset, size=28, seed=0))


def test_a_trained_result_round_trips_through_result_json(trained, tmp_path):
    write_cell(trained, tmp_path)
    back = read_result(tmp_path / "result.json")
    # result.json holds what an identical rerun reproduces; the run record (timings, host) is run.json
    assert back == dataclasses.replace(trained, run=None)
    assert json.loads((tmp_path / "run.json").read_text()) == trained.run.to_json()
    assert json.loads((tmp_path / "metrics.json").read_text()) == trained.numbers()
    assert json.loads((tmp_path / "steps.json").read_text()) == [s.to_json() for s in trained.steps]
    assert trained.privacy.private and trained.statement == trained.privacy.sentence()
    assert trained.reliability_test and trained.steps[0].l0_clipped is not None


def test_the_report_tests_fake_results_read_back_as_written():
    record = fake_result(FAKE_CELL)
    result = CellResult.from_json(record)
    again = result.to_json()
    for section in ("cell", "config", "metrics", "steps", "metrics_detail", "provenance"):
        assert again[section] == record[section], section
    assert record["privacy"].items() <= again["privacy"].items()  # plus the statement's defaults
    assert CellResult.from_json(again) == result and result.widths == (8, 16, 32)


def test_rows_write_their_optional_parts_only_when_recorded():
    plain = StepRecord(step=1, epoch=0, loss=None, l0_update=0.5)
    assert plain.to_json() == {"step": 1, "epoch": 0, "loss": None, "l0_update": 0.5}
    # tracked alignment with an undefined GWA (no spread) is written, as null
    tracked = StepRecord(step=1, epoch=0, loss=1.0, l0_update=0.5, alignment=Alignment(None, 0.1))
    assert tracked.to_json()["gwa"] is None and StepRecord.from_json(tracked.to_json()) == tracked
    assert StepRecord.from_json(plain.to_json()) == plain and plain.gwa is None
    epoch = EpochRecord(epoch=0, loss=1.0, alignment=Alignment(0.2, 0.1, -0.5))
    assert epoch.to_json() == {"epoch": 0, "loss": 1.0, "gwa": 0.2, "gwa_mean": 0.1, "gwa_excess_kurtosis": -0.5}
    assert EpochRecord.from_json(epoch.to_json()) == epoch


def test_metric_is_a_finite_float_or_none():
    result = CellResult.from_json({**fake_result(FAKE_CELL), "metrics": {"a": 1, "b": None, "c": float("nan")}})
    assert result.metric("a") == 1.0 and result.metric("b") is None and result.metric("c") is None
    assert result.metric("absent") is None and result.numbers() == {"a": 1}


def test_a_file_that_is_not_a_result_is_refused_by_name(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"metrics": {"test_acc": 0.5}}))
    with pytest.raises(ReproduceError, match=r"result.json: not a cell result: no field 'privacy'"):
        read_result(path)
    path.write_text(json.dumps({**fake_result(FAKE_CELL), "steps": [{"step": 1, "surprise": 2}]}))
    with pytest.raises(ReproduceError, match="not a cell result"):
        read_result(path)
    path.write_text("{")
    with pytest.raises(ReproduceError, match="corrupt result"):
        read_result(path)

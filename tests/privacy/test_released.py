"""Every released field is classified as covered by the guarantee or read from the training data without noise."""

from __future__ import annotations

import pytest

from reproduce.errors import ReproduceError
from reproduce.privacy.released import released_paths, unnoised_releases

RECORD = {
    "cell": "x",
    "config": {"training": {"batch_size": 16}, "data": {"local_files": {}}},
    "metrics": {"test_acc": 0.5, "train_loss_last": None},
    "epochs": [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": None, "gwa": 0.1}],
    "steps": [],
    "metrics_detail": {},
    "provenance": {"data": {"name": "d", "sha256": "0" * 64}},
    "run": {"train_seconds": 1.0, "commit": None},
}


def test_released_paths_name_list_elements_and_skip_empty_containers():
    assert released_paths(RECORD) == [
        "cell",
        "config.training.batch_size",
        "metrics.test_acc",
        "metrics.train_loss_last",
        "epochs[].epoch",
        "epochs[].loss",
        "epochs[].gwa",
        "provenance.data.name",
        "provenance.data.sha256",
        "run.train_seconds",
        "run.commit",
    ]


def test_unnoised_releases_are_the_classified_paths_present():
    assert unnoised_releases(RECORD) == [
        "metrics.train_loss_last",
        "run.train_seconds",
        "epochs[].loss",
        "epochs[].gwa",
        "provenance.data.sha256",
    ]


def test_an_unclassified_result_field_is_refused():
    with pytest.raises(ReproduceError, match=r"metrics\.train_acc.*COVERED or UNNOISED"):
        unnoised_releases({**RECORD, "metrics": {**RECORD["metrics"], "train_acc": 0.9}})

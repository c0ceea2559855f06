"""`reproduce exp show`: DVC's experiment JSON (the shape `dvc exp show --json` prints at the pinned
version) as one row per experiment of one study. The end-to-end run through DVC is in
tests/pipeline/test_versioning.py."""

from __future__ import annotations

import pytest

from reproduce.errors import ReproduceError
from reproduce.pipeline.experiments import exp_table, experiment_rows, render

STUDY, SUMMARY = "studies/ci.yaml", "results/ci/summary.json"


def row_data(*, epochs=2, epsilon=("non-private", 8), acc=None, timestamp="2026-12-01T10:20:41"):
    """One row's data as DVC prints it: every study's params and summary, deps, outs."""
    acc = acc or {
        "e/val_acc/non-DP, no aug": 0.4,
        "e/val_acc/DP eps=8, no aug": 0.214,
        "e/val_acc/DP gap eps=8, no aug": 0.186,
        "e/test_acc/non-DP, no aug": 0.416,
    }
    ci = {
        "name": "ci",
        "privacy": {"delta": 1e-5, "hyperparameter_selection": "a long text " * 10},
        "training": {"optimizer": {"name": "sgd", "lr": 0.05}, "epochs": epochs},
        "grid": {"group": ["e"], "epsilon": list(epsilon)},
    }
    other = {"name": "default", "training": {"epochs": 10, "max_train_samples": 4096}}
    return {
        "rev": "x",
        "timestamp": timestamp,
        "params": {STUDY: {"data": ci}, "studies/default.yaml": {"data": other}},
        "metrics": {
            SUMMARY: {"data": {f"embedded/{k}": v for k, v in acc.items()}},
            "results/default/summary.json": {"data": {"embedded/e/val_acc/non-DP, no aug": 0.9}},
            "results/bridging_the_gap/summary.json": {"error": {"type": "FileNotFoundError"}},
        },
        "deps": {"data/embedded": {"hash": "08ca.dir"}},
        "outs": {},
        "meta": {},
    }


def shown(*experiments):
    """`dvc exp show --json`: the workspace, the baseline commit, then its experiments."""
    return [
        {"rev": "workspace", "name": None, "data": row_data(timestamp=None), "error": None, "experiments": None},
        {
            "rev": "e0c394efa6a03c3cc25c55e0ef8205f5def27b18",
            "name": "main",
            "data": row_data(),
            "error": None,
            "experiments": [
                {
                    "executor": None,
                    "name": name,
                    "revs": [{"rev": "3e91320be8b5", "name": name, "data": data, "error": None, "experiments": None}],
                }
                for name, data in experiments
            ],
        },
    ]


def test_rows_are_the_workspace_the_baseline_and_each_experiment_under_it():
    rows = experiment_rows(shown(("ep1", row_data(epochs=1))))
    assert [label for label, _ in rows] == ["workspace", "main", "  ep1"]
    unnamed = shown()
    unnamed[1]["name"] = None
    assert experiment_rows(unnamed)[1][0] == "e0c394e"


def test_one_row_per_experiment_with_the_studys_numbers_and_only_the_params_that_differ():
    header, rows, note = exp_table(
        shown(
            ("ep1", row_data(epochs=1, acc={"e/val_acc/non-DP, no aug": 0.164, "e/val_acc/DP eps=8, no aug": 0.196}))
        ),
        study_file=STUDY,
        summary_file=SUMMARY,
    )
    # training.epochs is the one param that differs; the long privacy text, other studies' params,
    # the default study's summary, the gap and test_acc columns, deps: none of them.
    assert header == ["Experiment", "Created", "training.epochs", "e non-DP", "e DP eps=8"]
    assert rows == [
        ["workspace", "-", "2", "40.00", "21.40"],
        ["main", "2026-12-01 10:20", "2", "40.00", "21.40"],
        ["  ep1", "2026-12-01 10:20", "1", "16.40", "19.60"],
    ]
    assert "val_acc (%)" in note and "no aug" in note and SUMMARY in note


def test_columns_of_every_experiment_in_table_order_and_derived_ones_on_request():
    eps4 = row_data(
        epsilon=("non-private", 4),
        acc={
            "e/val_acc/DP eps=4, no aug": 0.182,
            "e/val_acc/non-DP, no aug": 0.4,
            "e/val_acc/DP gap eps=4, no aug": 0.218,
        },
    )
    header, rows, _ = exp_table(shown(("eps4", eps4)), study_file=STUDY, summary_file=SUMMARY)
    assert header == ["Experiment", "Created", "grid.epsilon", "e non-DP", "e DP eps=4", "e DP eps=8"]
    assert rows[2] == ["  eps4", "2026-12-01 10:20", '["non-private", 4]', "40.00", "18.20", "-"]
    header, _, _ = exp_table(shown(("eps4", eps4)), study_file=STUDY, summary_file=SUMMARY, derived=True)
    assert header[3:] == ["e non-DP", "e DP eps=4", "e DP gap eps=4", "e DP eps=8", "e DP gap eps=8"]


def test_every_metric_names_the_metric_and_an_unknown_one_is_refused():
    header, _, note = exp_table(shown(), study_file=STUDY, summary_file=SUMMARY, metric="all")
    assert header[2:] == ["e test_acc non-DP", "e val_acc non-DP", "e val_acc DP eps=8"]
    assert "(%)" not in note
    with pytest.raises(ReproduceError, match="no 'val_auc' numbers; it has test_acc, val_acc"):
        exp_table(shown(), study_file=STUDY, summary_file=SUMMARY, metric="val_auc")


def test_a_study_never_run_has_rows_without_numbers():
    header, rows, _ = exp_table(
        shown(), study_file="studies/bridging_the_gap.yaml", summary_file="results/bridging_the_gap/summary.json"
    )
    assert header == ["Experiment", "Created"] and len(rows) == 2


def test_render_aligns_numbers_and_writes_markdown():
    header, rows = (
        ["Experiment", "Created", "e non-DP"],
        [["main", "2026-12-01 10:20", "40.00"], ["  ep1", "-", "5.00"]],
    )
    lines = render(header, rows).splitlines()
    assert lines[0] == "Experiment  Created           e non-DP"
    assert lines[3] == "  ep1       -                     5.00"
    assert render(header, rows, markdown=True).splitlines()[:2] == [
        "| Experiment | Created | e non-DP |",
        "|---|---|---|",
    ]

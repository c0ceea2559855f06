"""`reproduce check`: a perturbed metric fails with a readable diff; an unperturbed rerun passes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from reproduce.checks.baseline import Verdict, cell_hashes, compare, render_hashes, reproduced_by_hash, seed_stds
from tests.conftest import REPO, study_text, tiny_study
from tests.report.conftest import fake_result

# The tiny study's DP cell at two seeds, with its own tolerances (the fake results are never trained).
CHK = {
    "name": "chk",
    "checks": {"tolerances": {"test_acc": {"abs": 0.01, "std": 2.0}, "epsilon": {"abs": 1.0e-6}}},
    "epsilon": 8,
    "seed": [0, 1],
}


def _baseline():
    return {
        "embedded-e-8-1-0": {"test_acc": 0.50, "epsilon": 7.99},
        "embedded-e-8-1-1": {"test_acc": 0.54, "epsilon": 7.99},
    }


def test_seed_std_is_the_sample_std_over_seeds_of_a_row():
    assert abs(seed_stds(_baseline())[("embedded-e-8-1", "test_acc")] - 0.028284271) < 1e-8


def test_tolerance_is_max_of_abs_and_seed_std_units():
    study = tiny_study(**CHK)
    now = _baseline()
    now["embedded-e-8-1-0"] = {"test_acc": 0.50 + 0.0565, "epsilon": 7.99}  # 2 x 0.02828 = 0.0566 allowed
    assert all(v.ok for v in compare(study, _baseline(), now))
    now["embedded-e-8-1-0"]["test_acc"] = 0.50 + 0.0570
    bad = [v for v in compare(study, _baseline(), now) if not v.ok]
    assert [(v.cell, v.metric) for v in bad] == [("embedded-e-8-1-0", "test_acc")]
    now["embedded-e-8-1-0"] = {"test_acc": 0.5, "epsilon": 7.99 + 1e-5}
    assert [v.metric for v in compare(study, _baseline(), now) if not v.ok] == ["epsilon"]


def test_metric_absent_on_both_sides_is_not_applicable_but_one_sided_fails():
    study = tiny_study(**CHK)
    base = {c: {"test_acc": m["test_acc"]} for c, m in _baseline().items()}  # e.g. non-private: no epsilon
    assert all(v.ok for v in compare(study, base, base))
    assert [v.reason for v in compare(study, base, _baseline()) if not v.ok] == ["metric missing"] * 2


def test_missing_and_extra_cells_fail():
    study = tiny_study(**CHK)
    now = _baseline()
    del now["embedded-e-8-1-1"]
    base = {**_baseline(), "embedded-C4-8-1-0": {"test_acc": 0.6, "epsilon": 7.9}}
    reasons = sorted(v.reason.split(":")[0] for v in compare(study, base, now) if not v.ok)
    assert reasons == ["extra cell in baseline, not in the study", "missing cell"]


def test_cli_check_fails_on_perturbation_and_passes_unperturbed(tmp_path, temp_study):
    temp_study(**CHK)
    study = tiny_study(**CHK)

    def write(cell_id: str, metrics: dict) -> None:  # a whole result, as the trainer writes one
        d = tmp_path / "results" / "chk" / "cells" / cell_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "result.json").write_text(json.dumps({**fake_result(study.cell(cell_id)), "metrics": metrics}))

    for cell, metrics in _baseline().items():
        write(cell, {**metrics, "train_seconds": 1.0})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", "reproduce", "check", "studies/chk.yaml", *a],  # noqa: E731
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run().returncode == 1 and "no baseline" in run().stderr
    up = run("--update")
    assert up.returncode == 0 and "embedded-e-8-1-0" in up.stdout
    ok = run()
    assert ok.returncode == 0, ok.stdout
    assert "4 ok, 0 failed" in ok.stdout
    # Perturb one published number: the check fails and shows baseline, now and delta.
    write("embedded-e-8-1-1", {"test_acc": 0.70, "epsilon": 7.99})
    bad = run()
    assert bad.returncode == 1
    line = next(ln for ln in bad.stdout.splitlines() if ln.startswith("embedded-e-8-1-1") and "test_acc" in ln)
    assert "0.54" in line and "0.7" in line and "FAIL" in line


def test_hash_check_names_each_cell_reproduced_differing_within_or_beyond_tolerance_or_absent(tmp_path):
    """Outputs vs a committed dvc.lock: informative per cell; the tolerances say which mismatch matters."""
    study = tiny_study(**{**CHK, "seed": range(4)})
    files = {}
    for cell in ("embedded-e-8-1-0", "embedded-e-8-1-1", "embedded-e-8-1-2"):
        path = f"results/chk/cells/{cell}/result.json"
        (tmp_path / path).parent.mkdir(parents=True)
        (tmp_path / path).write_text(f"{cell} committed")
        files[cell] = path
    md5 = lambda p: hashlib.md5((tmp_path / p).read_bytes()).hexdigest()  # noqa: E731
    lock = {
        "schema": "2.0",
        "stages": {
            f"train@{cell}": {"cmd": "x", "outs": [{"path": path, "hash": "md5", "md5": md5(path), "size": 1}]}
            for cell, path in files.items()
        }
        | {"report": {"outs": [{"path": "results/chk/table.md", "md5": "0"}]}},
    }
    assert cell_hashes(lock)["embedded-e-8-1-0"] == {files["embedded-e-8-1-0"]: md5(files["embedded-e-8-1-0"])}
    (tmp_path / files["embedded-e-8-1-1"]).write_text("rounded differently")
    (tmp_path / files["embedded-e-8-1-2"]).write_text("moved")
    verdicts = [Verdict("embedded-e-8-1-2", "test_acc", 0.5, 0.7, 0.01, False)]
    out = {v.cell: v.detail for v in reproduced_by_hash(study, lock, verdicts, root=tmp_path)}
    assert out == {
        "embedded-e-8-1-0": "reproduced bit for bit",
        "embedded-e-8-1-1": "differs (within tolerances: see baseline check; result.json)",
        "embedded-e-8-1-2": "differs (beyond tolerances: see baseline check; result.json)",
        "embedded-e-8-1-3": "not in the committed dvc.lock",
    }
    text = render_hashes(study, reproduced_by_hash(study, lock, verdicts, root=tmp_path))
    assert "1 of 4 cells reproduced bit for bit" in text and "pipelines/chk/dvc.lock" in text


# ---------------------------------------------------------------- the privacy audit

# Gradient-canary audits of the tiny study at epsilon 2 and without DP, two seeds (fake results).
AUDIT_CHECK = {
    "name": "chk_audit",
    "audit": {"canaries": 40},
    "checks": {"tolerances": {"epsilon": {"abs": 1.0e-6}, "audit_epsilon_lower": {"abs": 0.05, "std": 2.0}}},
    "epsilon": ["non-private", 2],
    "seed": [0, 1],
    "grid": {"audit.kind": ["gradient"]},
}
BROKEN = "embedded-e-2-1-1-gradient-audit"


def _check(tmp_path, monkeypatch, capsys, *args):
    """`reproduce check studies/chk_audit.yaml ARGS` in tmp_path (in process): (exit code, stdout, stderr)."""
    from reproduce.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["check", "studies/chk_audit.yaml", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _audited(tmp_path, bounds=None):
    from tests.report.conftest import write_audited_results

    (tmp_path / "studies").mkdir(exist_ok=True)
    (tmp_path / "studies" / "chk_audit.yaml").write_text(study_text(**AUDIT_CHECK))
    write_audited_results(tmp_path / "results" / "chk_audit", tiny_study(**AUDIT_CHECK), bounds=bounds)


def test_check_of_an_audited_study_without_baseline_runs_the_audit_and_passes_when_consistent(
    tmp_path, monkeypatch, capsys
):
    _audited(tmp_path)
    code, out, err = _check(tmp_path, monkeypatch, capsys)
    assert code == 0, out + err
    assert "only the privacy audit was checked" in out and "4 consistent, 0 violated" in out
    assert "VIOLATION" not in out + err


def test_a_violation_fails_check_loudly_with_or_without_a_baseline(tmp_path, monkeypatch, capsys):
    _audited(tmp_path, bounds={BROKEN: 2.5})  # the accountant says 1.98
    code, out, err = _check(tmp_path, monkeypatch, capsys)
    assert code == 1
    line = next(ln for ln in out.splitlines() if BROKEN in ln)
    assert line.strip().startswith(f"VIOLATION {BROKEN}") and "2.5" in line and "1.98" in line
    assert "breaks its privacy guarantee" in line
    assert "PRIVACY VIOLATION" in err and BROKEN in err and "3 consistent, 1 violated" in out
    # A baseline recording the very same numbers does not make it pass: a violation is no tolerance question.
    assert _check(tmp_path, monkeypatch, capsys, "--update")[0] == 1
    code, out, err = _check(tmp_path, monkeypatch, capsys)
    assert code == 1 and "6 ok, 0 failed" in out and "PRIVACY VIOLATION" in err


def test_audit_lower_bound_has_tolerances_like_any_metric_pooled_over_the_seeds_of_audited_ids(
    tmp_path, monkeypatch, capsys
):
    from reproduce.checks.baseline import seed_rows

    study = tiny_study(**AUDIT_CHECK)
    rows = seed_rows(study)  # the seed is not the last token of an audited id
    assert (
        rows["embedded-e-2-1-0-gradient-audit"]
        == rows["embedded-e-2-1-1-gradient-audit"]
        == "embedded-e-2-1-*-gradient-audit"
    )
    _audited(tmp_path)
    assert _check(tmp_path, monkeypatch, capsys, "--update")[0] == 0
    baseline = json.loads((tmp_path / "baselines" / "chk_audit.json").read_text())
    assert baseline["embedded-e-2-1-1-gradient-audit"] == {"epsilon": 1.98, "audit_epsilon_lower": pytest.approx(0.4)}
    # Seeds 0.3 and 0.4: std 0.0707, so 2 std = 0.141 is allowed; 0.4 -> 0.53 passes, 0.4 -> 0.6 fails.
    _audited(tmp_path, bounds={"embedded-e-2-1-1-gradient-audit": 0.53})
    assert _check(tmp_path, monkeypatch, capsys)[0] == 0
    _audited(tmp_path, bounds={"embedded-e-2-1-1-gradient-audit": 0.6})
    code, out, _ = _check(tmp_path, monkeypatch, capsys)
    line = next(
        ln for ln in out.splitlines() if ln.startswith("embedded-e-2-1-1-gradient-audit") and "audit_epsilon" in ln
    )
    assert code == 1 and "FAIL" in line

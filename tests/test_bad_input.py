"""Every subcommand of `reproduce` with bad arguments and bad files: exit 1 or 2, a message that names
the file or field, no traceback, and no half-written file left behind.

In-process (``reproduce.cli.main`` and capsys) for speed, from a throwaway working directory so that
default output paths (results/, checkpoints/, baselines/) land there; two subprocess runs check the
real entry point.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reproduce.cli import build_parser, main
from tests.conftest import REPO, TINY_STUDY, tiny_study
from tests.report.conftest import fake_result

# The bad study files are edits of the tiny study's text: their lines and byte offsets are the point.
STUDY = TINY_STUDY.format(name="tiny")
CELL = "embedded-e-8-1-0"

# The arguments after the study file of each subcommand that reads one (``fetch`` takes it by --study).
STUDY_ARGS = {
    "validate": [],
    "cells": [],
    "train": ["--cell", CELL],
    "run": [],
    "verify": [],
    "check": [],
    "table": [],
    "pipeline": [],
    "repro": [],
    "exp show": [],
    "report": [],
    "attribute": [],
    "params": [],
}

# A bad study file: (how to make it at path, what the message must say besides the path).
BAD_STUDIES = {
    "latin-1": (
        lambda p: p.write_bytes(STUDY.replace("\n", "\n# Hölzl\n", 1).encode("latin-1")),
        ":2: byte 0xf6 at offset 14 is not UTF-8; save the file as UTF-8",
    ),
    "missing": (lambda p: None, ": no such study file"),
    "empty": (lambda p: p.write_text(""), ": the study file is empty"),
    "directory": (lambda p: p.mkdir(), ": is a directory, not a study file"),
    "truncated": (lambda p: p.write_text(STUDY[: STUDY.index("group: [e]") + 8]), ":16: YAML syntax error"),
    "unbuildable widths": (
        lambda p: p.write_text(STUDY.replace("widths: [4, 8, 8]", "widths: [20, 40, 80]")),
        ":3: model.widths.1: widths 40, 80 cannot be built",
    ),
}


@pytest.fixture
def workdir(tmp_path, monkeypatch, temp_study):
    """A throwaway working directory with studies/tiny.yaml; no user config is read; the attribution
    stage reads a stand-in test split (so it reaches the result and model files without a dataset)."""
    import numpy as np

    import reproduce.attribution.objects
    import reproduce.attribution.stage
    from reproduce.data.stand_in import stand_in

    monkeypatch.setattr(reproduce.attribution.stage, "load_dataset", lambda name, **kw: stand_in(name, size=28))
    monkeypatch.setattr(
        reproduce.attribution.objects, "embedded_object_masks", lambda split, images: np.zeros(images.shape[:3])
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPRODUCE_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.delenv("REPRODUCE_DEVICE", raising=False)
    temp_study()
    return tmp_path


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _run(capsys, argv) -> tuple[int, str]:
    """main(argv) -> (exit code, stdout + stderr); argparse's exit counts as an exit code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, err


def _refused(capsys, argv, *, code, names) -> str:
    """Run argv; assert the exit code, a message naming ``names`` and that no temp file is left."""
    got, err = _run(capsys, argv)
    assert got == code, (got, err)
    for name in names:
        assert str(name) in err, err
    assert not list(Path.cwd().rglob("*.tmp")), "a half-written temp file was left behind"
    return err


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    """Every (nested) subcommand of ``parser``, e.g. {"validate", "exp show", ...}."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {prefix.strip()}
    return {name for cmd, sub in subs[0].choices.items() for name in _subcommands(sub, f"{prefix}{cmd} ")}


def test_the_corpus_covers_every_subcommand():
    assert _subcommands(build_parser()) == set(STUDY_ARGS) | {"fetch"}


@pytest.mark.parametrize("bad", BAD_STUDIES)
def test_every_subcommand_refuses_a_bad_study_file_with_exit_2_and_writes_nothing(bad, workdir, capsys):
    make, needle = BAD_STUDIES[bad]
    path = workdir / "studies" / "bad.yaml"
    make(path)
    before = _files(workdir)
    runs = [[*sub.split(), path, *args] for sub, args in STUDY_ARGS.items()]
    for argv in [*runs, ["fetch", "--study", path]]:
        err = _refused(capsys, argv, code=2, names=[f"{path}{needle}"])
        assert err.startswith("error: "), (argv, err)
    assert _files(workdir) == before


@pytest.mark.parametrize(
    "argv,code,needle",
    [
        (["train", "studies/tiny.yaml", "--cell", "nope"], 2, "no cell 'nope'"),
        (["train", "studies/tiny.yaml", "--cell", CELL, "--device", "tpu"], 2, "unknown device 'tpu'"),
        (["verify", "studies/tiny.yaml", "--device", "tpu"], 2, "unknown device 'tpu'"),
        (["verify", "studies/tiny.yaml", "--batch-size", "0"], 2, "--batch-size: must be at least 1"),
        (["verify", "studies/tiny.yaml", "--physical-batch-size", "x"], 2, "'x' is not a whole number"),
        (["run", "studies/tiny.yaml", "--jobs", "0"], 2, "--jobs: must be at least 1"),
        (["exp", "show", "studies/tiny.yaml", "-n", "-1"], 2, "-n/--num: must be at least 1"),
        (["run", "elsewhere/tiny.yaml"], 2, "elsewhere/tiny.yaml: no such study file"),
        (["fetch", "imagenet", "--root", "data"], 1, "unknown dataset 'imagenet'"),
        (["check", "studies/tiny.yaml"], 1, "no baseline baselines/tiny.json"),
        (["attribute", "studies/tiny.yaml", "--strict"], 1, "have no result under results/tiny/cells"),
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_arguments_are_refused_naming_the_argument(argv, code, needle, workdir, capsys):
    before = _files(workdir)
    err = _refused(capsys, argv, code=code, names=[needle])
    assert _files(workdir) == before, err


def test_a_user_config_that_is_not_utf8_is_named(workdir, capsys, monkeypatch):
    config = workdir / "config.yaml"
    config.write_bytes("run: {device: cpu}  # Hölzl\n".encode("latin-1"))
    monkeypatch.setenv("REPRODUCE_CONFIG", str(config))
    _refused(capsys, ["train", "studies/tiny.yaml", "--cell", CELL], code=1, names=[config, "not UTF-8"])


def _write_results(root: Path, *, cells=None, **fields) -> Path:
    """result.json of every cell of the tiny study (fake numbers), with ``fields`` replaced."""
    for cell in cells or tiny_study().cells():
        d = root / "cells" / cell.id
        d.mkdir(parents=True, exist_ok=True)
        (d / "result.json").write_text(json.dumps({**fake_result(cell), **fields}))
    return root


BAD_RESULTS = {
    "truncated": b'{"cell": "embedded-e-8-1-0", "met',
    "empty": b"",
    "latin-1": '{"cell": "Hölzl"}'.encode("latin-1"),
    "not an object": b"[1, 2]",
    "no fields": b"{}",
}


@pytest.mark.parametrize("bad", BAD_RESULTS)
def test_a_bad_result_file_is_named_by_every_reader(bad, workdir, capsys):
    results = _write_results(Path("results/tiny"))
    broken = results / "cells" / "embedded-e-non-private-1-0" / "result.json"  # the first cell each reader reads
    broken.write_bytes(BAD_RESULTS[bad])
    before = _files(workdir)
    for argv in (["table"], ["report"], ["check"], ["attribute"]):
        _refused(capsys, [*argv, "studies/tiny.yaml"], code=1, names=[broken])
    assert _files(workdir) == before


@pytest.mark.parametrize("text", ["{", "[]", '{"cells": 3}'])
def test_a_bad_attribution_scores_file_is_named(text, workdir, capsys):
    results = _write_results(Path("results/tiny"))
    (results / "attribution").mkdir()
    (results / "attribution" / "scores.json").write_text(text)
    _refused(
        capsys,
        ["table", "studies/tiny.yaml"],
        code=1,
        names=[results / "attribution" / "scores.json", "reproduce attribute"],
    )
    assert not (results / "table.md").exists()


def test_a_bad_baseline_is_named(workdir, capsys):
    _write_results(Path("results/tiny"))
    Path("baselines").mkdir()
    Path("baselines/tiny.json").write_text('{"embedded-e-8-1-0": {"test_acc": 0.')
    _refused(capsys, ["check", "studies/tiny.yaml"], code=1, names=["baselines/tiny.json", "--update"])
    _refused(capsys, ["check", "studies/tiny.yaml", "--update"], code=1, names=["baselines/tiny.json"])
    assert Path("baselines/tiny.json").read_text().endswith("0.")  # left as it was


def test_results_of_different_code_versions_are_named_by_the_report(workdir, temp_study, capsys):
    cells = tiny_study(seed=[0, 1]).cells()
    temp_study(seed=[0, 1])
    results = _write_results(Path("results/tiny"), cells=cells)
    other = results / "cells" / "embedded-e-8-1-1" / "result.json"
    record = json.loads(other.read_text())
    record["metrics_detail"]["reliability_test"][1]["upper"] = 0.4  # other bin edges
    other.write_text(json.dumps(record))
    _refused(
        capsys,
        ["report", "studies/tiny.yaml"],
        code=1,
        names=["embedded-e-8-1-0, embedded-e-8-1-1", "reliability bins differ"],
    )


def test_a_truncated_model_file_says_how_to_restore_or_retrain_the_cell(workdir, capsys):
    results = _write_results(Path("results/tiny"), weights={"file": "model.pt", "sha256": "0" * 64, "ema": False})
    model = results / "cells" / "embedded-e-non-private-1-0" / "model.pt"
    model.write_bytes(b"PK\x03\x04 cut short")
    _refused(
        capsys,
        ["attribute", "studies/tiny.yaml"],
        code=1,
        names=[model, "dvc pull", "reproduce train studies/tiny.yaml --cell embedded-e-non-private-1-0"],
    )
    assert not (results / "attribution").exists()


@pytest.fixture
def fake_training(monkeypatch):
    """`reproduce train` hands a fake result (the report tests' numbers) straight to write_cell."""
    import reproduce.training.cell
    from reproduce.records.result import CellResult

    monkeypatch.setattr(reproduce.training.cell, "run_cell", lambda cell, **kw: CellResult.from_json(fake_result(cell)))


class _FullDisk:
    """A file object whose writes stop half-way with ENOSPC, as on a full disk."""

    def __init__(self, fd, mode):
        self.fh = open(fd, mode)

    def write(self, data):
        self.fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_half_file(workdir, fake_training, capsys, monkeypatch):
    import reproduce.atomic

    _write_results(Path("results/tiny"))
    monkeypatch.setattr(reproduce.atomic.os, "fdopen", _FullDisk)  # the one place every output is written
    table = Path("results/tiny/table.md")
    _refused(
        capsys,
        ["table", "studies/tiny.yaml"],
        code=1,
        names=[f"{table}: No space left on device", "Free space on the disk"],
    )
    assert not table.exists()
    out = Path("out")
    err = _refused(
        capsys,
        ["train", "studies/tiny.yaml", "--cell", CELL, "--out", out],
        code=1,
        names=[out / "result.json", "No space left on device"],
    )
    assert len(err.splitlines()) == 1 and not (out / "result.json").exists()


def _read_only_works(directory: Path) -> bool:
    """Whether chmod keeps us out of ``directory`` (not for root, who writes anyway)."""
    probe = directory / ".probe"
    try:
        probe.write_text("")
    except PermissionError:
        return True
    probe.unlink()
    return False


def test_a_read_only_results_directory_is_one_line_naming_the_file(workdir, fake_training, capsys):
    results = _write_results(Path("results/tiny"))
    out = Path("out")
    out.mkdir()
    for d in (results, out):
        d.chmod(0o555)
    try:
        if not _read_only_works(results):
            pytest.skip("running as root: chmod does not make a directory read-only")
        _refused(
            capsys,
            ["table", "studies/tiny.yaml"],
            code=1,
            names=[f"{results / 'table.md'}: Permission denied", "writable for you"],
        )
        _refused(
            capsys,
            ["report", "studies/tiny.yaml", "--out", "site"],
            code=1,
            names=[f"{results / 'table.md'}: Permission denied"],
        )
        _refused(
            capsys,
            ["train", "studies/tiny.yaml", "--cell", CELL, "--out", out],
            code=1,
            names=[f"{out / 'result.json'}: Permission denied"],
        )
        assert list(results.iterdir()) == [results / "cells"] and not list(out.iterdir())
    finally:
        for d in (results, out):
            d.chmod(0o755)


def test_the_real_entry_point_prints_one_line_without_a_traceback(workdir, temp_study):
    """The two subprocess runs: a study file that is not UTF-8 (exit 2) and a truncated result (exit 1)."""
    BAD_STUDIES["latin-1"][0](workdir / "studies" / "tiny.yaml")
    results = _write_results(Path("results/other"))
    (results / "cells" / CELL / "result.json").write_bytes(BAD_RESULTS["truncated"])
    temp_study(name="other")
    env = {**os.environ, "PYTHONPATH": str(REPO), "REPRODUCE_CONFIG": str(workdir / "no-config.yaml")}
    for argv, code, name in (
        (["validate", "studies/tiny.yaml"], 2, "studies/tiny.yaml:2:"),
        (["table", "studies/other.yaml"], 1, "results/other/cells/embedded-e-8-1-0/result.json"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "reproduce", *argv],
            capture_output=True,
            text=True,
            cwd=workdir,
            env=env,
            timeout=120,
        )
        assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"error: {name}") and len(proc.stderr.splitlines()) == 1, proc.stderr

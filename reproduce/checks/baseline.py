"""Result regression checks: current cell metrics vs a committed baseline, with declared tolerances.

DVC's ``metrics diff`` has no tolerances; this is the layer on top. Pure functions compare; the CLI
reads ``results/<study>/cells/*/result.json`` and ``baselines/<study>.json``.

A metric passes when |now - baseline| <= max(abs, std * seed_std), where seed_std is the baseline's
standard deviation of that metric over the seeds of the cell's row (same dataset, group, epsilon,
multiplicity). Metrics without a declared tolerance are not checked.

``reproduce.checks.audit.audit_check`` is the privacy check of an audited study (one with an ``audit`` section): a cell
whose measured epsilon lower bound exceeds its accountant's epsilon broke its guarantee, and fails
the check whether or not a baseline exists. ``audit_epsilon_lower`` is a metric like any other for
the tolerances (``checks.tolerances.audit_epsilon_lower``). ``check_study`` runs both, in that order.

``reproduced_by_hash`` is the exact check beside it: each cell's outputs against the DVC hashes in the
study's committed ``dvc.lock`` (``git show HEAD:<lock>``). On the platform that produced the lock a
rerun matches bit for bit; elsewhere float rounding may differ, which the tolerances judge, so a hash
mismatch alone never fails the check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import subprocess
from pathlib import Path

import yaml

from reproduce.atomic import read_json, write_text_atomic
from reproduce.checks.audit import audit_check, render_audit, violation_message
from reproduce.errors import ReproduceError
from reproduce.records.result import CellResult, read_results
from reproduce.study import Study


@dataclasses.dataclass(frozen=True)
class Verdict:
    cell: str
    metric: str
    baseline: float | None
    now: float | None
    tolerance: float | None
    ok: bool
    reason: str = ""

    @property
    def delta(self) -> float | None:
        return None if self.baseline is None or self.now is None else self.now - self.baseline


def _row(cell_id: str) -> str:
    return cell_id.rsplit("-", 1)[0]  # the id without its seed, when the seed is its last token


def seed_rows(study: Study) -> dict[str, str]:
    """Cell id -> its row: the id with ``*`` for its seed (dotted axes and the ``audit`` suffix follow
    the seed, so it is not always the last token)."""
    return {c.id: dataclasses.replace(c, seed="*").id for c in study.cells()}


def seed_stds(
    baseline: dict[str, dict[str, float]], rows: dict[str, str] | None = None
) -> dict[tuple[str, str], float]:
    """Std over seeds of each metric, per row (``rows``: cell id -> row, default the id without its last token)."""
    out: dict[tuple[str, str], list[float]] = {}
    for cell, metrics in baseline.items():
        row = (rows or {}).get(cell) or _row(cell)
        for m, v in metrics.items():
            out.setdefault((row, m), []).append(v)
    return {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in out.items()}


def compare(study: Study, baseline: dict[str, dict[str, float]], now: dict[str, dict[str, float]]) -> list[Verdict]:
    """One verdict per (cell, checked metric), plus one per missing or extra cell."""
    tolerances = study.checks.tolerances
    rows = seed_rows(study)
    stds = seed_stds(baseline, rows)
    out = []
    expected = [c.id for c in study.cells()]
    for cell in expected:
        if cell not in baseline:
            out.append(
                Verdict(cell, "*", None, None, None, False, "cell not in baseline (run `reproduce check --update`)")
            )
            continue
        if cell not in now:
            out.append(Verdict(cell, "*", None, None, None, False, "missing cell: no current result"))
            continue
        for metric, tol in tolerances.items():
            b, n = baseline[cell].get(metric), now[cell].get(metric)
            if b is None and n is None:
                continue  # not applicable to this cell (e.g. epsilon of a non-private cell)
            if b is None or n is None:
                out.append(Verdict(cell, metric, b, n, None, False, "metric missing"))
                continue
            allowed = max(tol.abs, tol.std * stds.get((rows[cell], metric), 0.0))
            out.append(Verdict(cell, metric, b, n, allowed, abs(n - b) <= allowed))
    for cell in sorted(set(baseline) - set(expected)):
        out.append(Verdict(cell, "*", None, None, None, False, "extra cell in baseline, not in the study"))
    return out


def render(verdicts: list[Verdict]) -> str:
    head = f"{'cell':36} {'metric':14} {'baseline':>10} {'now':>10} {'delta':>10} {'tolerance':>10}  verdict"
    lines = [head, "-" * len(head)]
    fmt = lambda v: "" if v is None else f"{v:10.5g}"  # noqa: E731
    for v in verdicts:
        verdict = "ok" if v.ok else f"FAIL {v.reason}".rstrip()
        lines.append(
            f"{v.cell:36} {v.metric:14} {fmt(v.baseline):>10} {fmt(v.now):>10} {fmt(v.delta):>10} "
            f"{fmt(v.tolerance):>10}  {verdict}"
        )
    bad = sum(not v.ok for v in verdicts)
    lines.append(f"{len(verdicts) - bad} ok, {bad} failed")
    return "\n".join(lines)


def checked_metrics(study: Study, results: dict[str, CellResult]) -> dict[str, dict[str, float]]:
    """The checked metrics (those with a tolerance) of each result, the audit's lower bound included."""
    out = {}
    for cell, result in results.items():
        out[cell] = {k: v for k, v in result.flat_metrics().items() if k in study.checks.tolerances}
    return out


def current_metrics(study: Study, results_dir: Path) -> dict[str, dict[str, float]]:
    """The checked metrics of every cell of ``study`` with a result in ``results_dir``."""
    return checked_metrics(study, read_results(study, results_dir))


def baseline_path(study: Study, root: Path = Path(".")) -> Path:
    return root / "baselines" / f"{study.name}.json"


def read_baseline(path: Path) -> dict:
    """The committed baseline in ``path``; ReproduceError naming it when it is truncated or corrupt."""
    return read_json(
        path,
        what="baseline",
        remedy=f"restore it from git (`git checkout -- {path}`) or recreate it "
        "deliberately with `reproduce check <study> --update`",
    )


def update_baseline(study: Study, now: dict[str, dict[str, float]], path: Path) -> str:
    """Rewrite the baseline deliberately; returns what changed, cell by cell."""
    old = read_baseline(path) if path.exists() else {}
    changes = []
    for cell in sorted(set(old) | set(now)):
        if old.get(cell) != now.get(cell):
            changes.append(f"  {cell}: {old.get(cell)} -> {now.get(cell)}")
    write_text_atomic(path, json.dumps(now, indent=2, sort_keys=True) + "\n")  # never half a baseline
    return "\n".join(changes) if changes else "  (no change)"


def lock_path(study: Study) -> Path:
    """The study's ``dvc.lock`` beside its generated ``dvc.yaml``, relative to the repository root."""
    from reproduce.study.files import pipeline_path

    return pipeline_path(study).with_name("dvc.lock")


def committed_lock(study: Study, root: Path = Path("."), rev: str = "HEAD") -> dict | None:
    """The study's ``dvc.lock`` as committed at ``rev``; None when git has none (or no git)."""
    try:
        out = subprocess.run(
            ["git", "show", f"{rev}:{lock_path(study).as_posix()}"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return yaml.safe_load(out.stdout) if out.returncode == 0 else None


def cell_hashes(lock: dict) -> dict[str, dict[str, str]]:
    """Cell id -> {output path: md5} of every ``train@<cell>`` stage of a ``dvc.lock``."""
    return {
        name.split("@", 1)[1]: {o["path"]: o["md5"] for o in stage.get("outs", ())}
        for name, stage in (lock.get("stages") or {}).items()
        if name.startswith("train@")
    }


def _md5(path: Path) -> str | None:
    # DVC 3 hashes a file as the plain md5 of its bytes ("hash: md5").
    return hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else None


@dataclasses.dataclass(frozen=True)
class HashVerdict:
    cell: str
    reproduced: bool | None  # None: nothing to compare (not in the lock, or no current result)
    detail: str


def reproduced_by_hash(study: Study, lock: dict, verdicts: list[Verdict], root: Path = Path(".")) -> list[HashVerdict]:
    """Per cell: do its outputs match the committed lock's hashes byte for byte? ``verdicts`` (the
    baseline check) say whether a mismatch is within the tolerances."""
    committed = cell_hashes(lock)
    failed = {v.cell for v in verdicts if not v.ok}
    out = []
    for cell in (c.id for c in study.cells()):
        outs = committed.get(cell)
        if not outs:
            out.append(HashVerdict(cell, None, "not in the committed dvc.lock"))
            continue
        differ = [p for p, md5 in outs.items() if _md5(root / p) != md5]
        if not differ:
            out.append(HashVerdict(cell, True, "reproduced bit for bit"))
        elif any(_md5(root / p) is None for p in differ):
            out.append(HashVerdict(cell, None, "no current result"))
        else:
            within = "beyond tolerances" if cell in failed else "within tolerances"
            names = ", ".join(Path(p).name for p in differ)
            out.append(HashVerdict(cell, False, f"differs ({within}: see baseline check; {names})"))
    return out


def render_hashes(study: Study, verdicts: list[HashVerdict]) -> str:
    lines = [
        f"DVC hashes vs the committed {lock_path(study)} (bit for bit is expected on the platform "
        "that committed it; elsewhere the tolerances above decide):"
    ]
    lines += [f"  {v.cell:36} {v.detail}" for v in verdicts]
    same = sum(v.reproduced is True for v in verdicts)
    lines.append(f"{same} of {len(verdicts)} cells reproduced bit for bit")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    """What ``reproduce check`` says: the report (stdout), a privacy violation (stderr) and the exit status."""

    report: str
    violation: str | None
    exit_code: int
    error: str | None = None  # why the check could not run (after the audit, which always runs)


def check_study(study: Study, *, results_dir: Path, update: bool, study_arg: str) -> CheckOutcome:
    """The privacy audit of an audited study (always, baseline or not: a lower bound above the accountant's
    epsilon is a broken guarantee, never a tolerance question), then the results against the baseline (or
    the baseline rewritten deliberately with ``update``), then the DVC hashes against the committed lock.
    ``study_arg``: the study file as the user named it, for the commands this suggests."""
    results = read_results(study, results_dir)
    now = checked_metrics(study, results)
    path = baseline_path(study)
    audited = audit_check(study, results) if study.audit is not None else []
    violation = violation_message([v.cell for v in audited if v.violated])
    out = [render_audit(study, audited)] if study.audit is not None else []
    create = f"`reproduce check {study_arg} --update`"
    if update:
        missing = [c.id for c in study.cells() if c.id not in now]
        if missing:
            error = f"cannot update the baseline: no result for {', '.join(missing)}"
            return CheckOutcome("\n".join(out), violation, ReproduceError.exit_code, error)
        out.append(f"updated {path}:\n{update_baseline(study, now, path)}")
        return CheckOutcome("\n".join(out), violation, int(violation is not None))
    if not path.exists():
        if study.audit is None or not audited:
            error = f"no baseline {path}; create it deliberately with {create}"
            return CheckOutcome("\n".join(out), violation, ReproduceError.exit_code, error)
        out.append(f"no baseline {path}: only the privacy audit was checked (create one deliberately with {create})")
        return CheckOutcome("\n".join(out), violation, int(violation is not None))
    verdicts = compare(study, read_baseline(path), now)
    out.append(render(verdicts))
    # The exact check: outputs vs the committed dvc.lock; informative only (platforms round differently).
    lock = committed_lock(study)
    out.append(
        render_hashes(study, reproduced_by_hash(study, lock, verdicts))
        if lock
        else f"no committed {lock_path(study)}: nothing to compare by DVC hash"
    )
    failed = violation is not None or not all(v.ok for v in verdicts)
    return CheckOutcome("\n".join(out), violation, int(failed))

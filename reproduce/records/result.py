"""A trained cell's result as a type: what ``result.json`` holds, written by the trainer and read
by the report and ``reproduce check``.

``CellResult.to_json`` is the file's content and ``CellResult.from_json`` reads it back, refusing a
record that is not shaped like one (a missing or unknown field names the file and the field).
Per-step and per-epoch series are typed rows whose optional parts are written only when recorded
(DP-only ``l0_clipped``; the alignment, which multi-label tasks do not track).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from reproduce.atomic import read_json
from reproduce.errors import ReproduceError
from reproduce.records.audit import AuditRecord
from reproduce.records.privacy import PrivacyStatement
from reproduce.records.provenance import Provenance, RunRecord

# Quantile levels of the per-sample norms reported per step.
NORM_QUANTILES = (0.1, 0.5, 0.9)


def quantile_key(level: float) -> str:
    """The row key of a norm quantile: 0.1 -> ``grad_norm_q10``."""
    return f"grad_norm_q{round(100 * level)}"


# The keys of ``reproduce.metrics.clipping.ClippingDiagnostics.as_row`` at the default levels, in its order.
DIAGNOSTIC_KEYS = (
    "share_clipped",
    *(quantile_key(q) for q in NORM_QUANTILES),
    "clip_bias_cosine",
    "clip_bias_norm_ratio",
    "noise_to_signal",
    "update_cosine",
    "max_grad_norm",
)


@dataclasses.dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: confidences in ``(lower, upper]`` (the first bin also
    holds confidence 0). ``confidence`` = mean max-probability and ``accuracy`` = share of correct
    argmax predictions of the ``count`` samples in the bin; both ``None`` for an empty bin."""

    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Gradient-weight alignment of a set of training samples (``reproduce.metrics.alignment``).

    ``gwa`` = mean / (excess kurtosis + 1.2), ``gwa_mean`` the mean cosine; each None where undefined
    (no defined cosine, no spread). ``gwa_excess_kurtosis`` is written per epoch only.
    """

    gwa: float | None
    gwa_mean: float | None
    gwa_excess_kurtosis: float | None = None


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One logged optimizer step (every ``training.log_every`` steps, and the first).

    ``loss`` is None for an empty Poisson batch; ``l0_update`` is the share of near-zero entries of
    the applied update, ``l0_clipped`` that of the clipped sum before noise (DP only, else None);
    ``alignment`` that of the step's samples (None where not tracked: multi-label tasks).
    ``diagnostics``: what clipping, noise and the optimizer did (``reproduce.metrics.clipping``:
    every ``DIAGNOSTIC_KEYS`` entry for DP steps, ``update_cosine`` alone for non-private ones),
    None where not recorded (results written before they existed).
    """

    step: int
    epoch: int
    loss: float | None
    l0_update: float
    l0_clipped: float | None = None
    alignment: Alignment | None = None
    diagnostics: dict[str, float | None] | None = None

    @property
    def gwa(self) -> float | None:
        return None if self.alignment is None else self.alignment.gwa

    @property
    def gwa_mean(self) -> float | None:
        return None if self.alignment is None else self.alignment.gwa_mean

    def to_json(self) -> dict[str, Any]:
        out = {"step": self.step, "epoch": self.epoch, "loss": self.loss, "l0_update": self.l0_update}
        if self.l0_clipped is not None:
            out["l0_clipped"] = self.l0_clipped
        if self.alignment is not None:
            out.update(gwa=self.alignment.gwa, gwa_mean=self.alignment.gwa_mean)
        if self.diagnostics is not None:
            out.update(self.diagnostics)
        return out

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> StepRecord:
        row = dict(row)
        tracked = "gwa" in row or "gwa_mean" in row
        alignment = Alignment(row.pop("gwa", None), row.pop("gwa_mean", None)) if tracked else None
        diagnostics = {k: row.pop(k) for k in list(row) if k in DIAGNOSTIC_KEYS or k.startswith("grad_norm_q")}
        return cls(**row, alignment=alignment, diagnostics=diagnostics or None)


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """One epoch: the last batch's loss (None if empty) and the alignment over the epoch's samples."""

    epoch: int
    loss: float | None
    alignment: Alignment | None = None

    @property
    def gwa(self) -> float | None:
        return None if self.alignment is None else self.alignment.gwa

    def to_json(self) -> dict[str, Any]:
        out = {"epoch": self.epoch, "loss": self.loss}
        if self.alignment is not None:
            out.update(dataclasses.asdict(self.alignment))
        return out

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> EpochRecord:
        row = dict(row)
        keys = [f.name for f in dataclasses.fields(Alignment)]
        tracked = any(k in row for k in keys)
        alignment = Alignment(*(row.pop(k, None) for k in keys)) if tracked else None
        return cls(**row, alignment=alignment)


@dataclasses.dataclass(frozen=True)
class KeptWeights:
    """The trained weights kept beside ``result.json`` (``reproduce.training.weights``).

    Attributes:
        file: The file name in the cell's result directory (``model.pt``).
        sha256: ``weights_checksum`` of its state dict (over the tensors, not the file's bytes).
        ema: Whether these are the EMA weights (the ones the metrics were measured on).
    """

    file: str
    sha256: str
    ema: bool = False


@dataclasses.dataclass(frozen=True)
class CellResult:
    """Everything one trained cell releases.

    Attributes:
        cell: The cell id.
        config: ``Cell.config()``, everything that determined the result.
        metrics: Flat name -> value: ``<split>_<metric>`` for every split metric of the metric
            registry, the rotated-test metrics, ``parameters``, ``steps``, the last training loss and
            alignment, and ``epsilon`` for DP cells (no timings: they are in ``run``).
        privacy: The privacy statement's fields.
        statement: The privacy statement in words, as written with the result.
        provenance: Study, data and environment that produced it (the same on an identical rerun).
        epochs: One record per epoch.
        steps: One record per logged optimizer step.
        reliability_test: Reliability-diagram bins on the test split (single-label tasks only).
        run: This run's timings and host (``run.json``, not in ``result.json``); None when read back.
        weights: The kept weights' record (``model.pt``); None in results written before they were kept.
        audit: The privacy audit of an audited cell (``reproduce.audit``); None for every other cell.
        state: The weights themselves, to be written by ``write_cell`` (never in ``result.json``;
            None when read back).
    """

    cell: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    privacy: PrivacyStatement
    statement: str
    provenance: Provenance
    epochs: tuple[EpochRecord, ...] = ()
    steps: tuple[StepRecord, ...] = ()
    reliability_test: tuple[ReliabilityBin, ...] | None = None
    run: RunRecord | None = None
    weights: KeptWeights | None = None
    audit: AuditRecord | None = None
    state: dict[str, Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def widths(self) -> tuple[int, ...]:
        """The model's width layout (a study may give each group its own)."""
        return tuple(self.config["model"]["widths"])

    def metric(self, name: str) -> float | None:
        """The metric as a float, None when absent, undefined (None) or not finite."""
        value = self.metrics.get(name)
        if value is None or not math.isfinite(float(value)):
            return None
        return float(value)

    def flat_metrics(self) -> dict[str, Any]:
        """The metrics, and an audited cell's lower bound as ``audit_epsilon_lower``: what metrics.json
        and ``reproduce check`` read."""
        return self.metrics if self.audit is None else {**self.metrics, "audit_epsilon_lower": self.audit.epsilon_lower}

    def numbers(self) -> dict[str, int | float]:
        """The flat metrics that are numbers (``metrics.json``, for ``dvc metrics``)."""
        return {
            k: v
            for k, v in self.flat_metrics().items()
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))
        }

    def to_json(self) -> dict[str, Any]:
        """The ``result.json`` record: deterministic for a seeded cell on one platform (no ``run``)."""
        detail = (
            {}
            if self.reliability_test is None
            else {"reliability_test": [dataclasses.asdict(b) for b in self.reliability_test]}
        )
        return {
            "cell": self.cell,
            "config": self.config,
            "metrics": self.metrics,
            "epochs": [e.to_json() for e in self.epochs],
            "steps": [s.to_json() for s in self.steps],
            "metrics_detail": detail,
            "privacy": {**dataclasses.asdict(self.privacy), "statement": self.statement},
            "provenance": self.provenance.to_json(),
            **({} if self.weights is None else {"weights": dataclasses.asdict(self.weights)}),
            **({} if self.audit is None else {"audit": self.audit.to_json()}),
        }

    def released(self) -> dict[str, Any]:
        """Everything written without the privacy statement (the run record as ``run``): what the
        statement speaks about."""
        record = self.to_json()
        del record["privacy"]
        if self.run is not None:
            record["run"] = self.run.to_json()
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any], *, where: str = "result") -> CellResult:
        """Read a ``result.json`` record; ReproduceError naming ``where`` and the field if malformed."""
        try:
            privacy = dict(record["privacy"])
            statement = privacy.pop("statement")
            privacy["unnoised_releases"] = tuple(privacy.get("unnoised_releases", ()))
            detail = record.get("metrics_detail") or {}
            bins = detail.get("reliability_test")
            weights, audit = record.get("weights"), record.get("audit")
            return cls(
                cell=record["cell"],
                config=record["config"],
                metrics=dict(record["metrics"]),
                privacy=PrivacyStatement(**privacy),
                statement=statement,
                provenance=Provenance.from_json(record["provenance"]),
                epochs=tuple(EpochRecord.from_json(e) for e in record.get("epochs", ())),
                steps=tuple(StepRecord.from_json(s) for s in record.get("steps", ())),
                reliability_test=None if bins is None else tuple(ReliabilityBin(**b) for b in bins),
                weights=None if weights is None else KeptWeights(**weights),
                audit=None if audit is None else AuditRecord.from_json(audit),
            )
        except KeyError as e:
            raise ReproduceError(f"{where}: not a cell result: no field {e.args[0]!r}") from None
        except TypeError as e:
            raise ReproduceError(f"{where}: not a cell result: {e}") from None


def read_result(path: Path) -> CellResult:
    """The cell result in ``path`` (a ``result.json``); ReproduceError if corrupt or malformed."""
    record = read_json(
        path,
        what="result",
        remedy="restore it with `dvc checkout` (or `dvc pull`), or delete it and retrain the cell (`dvc repro`)",
    )
    if not isinstance(record, dict):
        raise ReproduceError(
            f"{path}: not a cell result (a JSON {type(record).__name__}, not an object); "
            "delete it and retrain the cell (`dvc repro`)"
        )
    return CellResult.from_json(record, where=str(path))


def read_results(study, results_dir: Path) -> dict[str, CellResult]:
    """The result of every current cell of ``study`` that has one under ``results_dir``
    (``cells/<id>/result.json``; stale cells from older grids are ignored)."""
    paths = {c.id: Path(results_dir) / "cells" / c.id / "result.json" for c in study.cells()}
    return {cell: read_result(path) for cell, path in paths.items() if path.exists()}

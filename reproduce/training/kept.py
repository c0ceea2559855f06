"""A trained cell's model, rebuilt from its study and its kept weights, without retraining.

``load_cell_model(cell)`` reads the cell's ``result.json`` for the weights' checksum, builds the model
exactly as the trainer did (``build_cell_model``, with the dataset table's channels and classes) and
loads ``model.pt`` after verifying it (``reproduce.training.weights``). The attribution stage, audits and
anyone analysing a published cell use it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from reproduce.data import dataset_source
from reproduce.errors import ReproduceError
from reproduce.models import build_cell_model
from reproduce.records.result import CellResult, read_result
from reproduce.study import Cell
from reproduce.training.weights import load_weights


def cell_dir(cell: Cell, results_root: Path | str = "results") -> Path:
    """``results/<study>/cells/<cell id>``, where the train stage writes the cell's outputs."""
    return Path(results_root) / cell.study.name / "cells" / cell.id


def load_cell_model(
    cell: Cell, *, results_dir: Path | str | None = None, result: CellResult | None = None
) -> nn.Module:
    """The trained model of ``cell`` in eval mode, on the CPU, its weights' checksum verified.

    Args:
        cell: The cell (``study.cell(id)``).
        results_dir: The cell's result directory (default ``results/<study>/cells/<id>``).
        result: Its ``result.json`` when already read.

    Raises:
        ReproduceError: no result or weights (train or pull the cell first), a result written before
            weights were kept, or weights that do not verify.
    """
    directory = Path(results_dir) if results_dir is not None else cell_dir(cell)
    if result is None:
        path = directory / "result.json"
        if not path.exists():
            raise ReproduceError(f"{path}: cell {cell.id} has no result; run `dvc repro` (or `dvc pull`) first")
        result = read_result(path)
    if result.weights is None:
        raise ReproduceError(
            f"{directory}/result.json: written before trained weights were kept; "
            f"rerun the cell (`dvc repro -f` its train stage)"
        )
    info = dataset_source(cell.dataset).info(cell.study.data.size)
    model = build_cell_model(cell, in_channels=info.n_channels, num_classes=info.num_classes)
    load_weights(model, directory / result.weights.file, sha256=result.weights.sha256, restore=how_to_restore(cell))
    return model.eval()


def how_to_restore(cell: Cell) -> str:
    """The commands that bring back a cell's outputs: from DVC's cache or remote, else by retraining it."""
    from reproduce.study.files import pipeline_path, study_file

    return (
        f"`dvc pull` it, or retrain the cell: `reproduce train {study_file(cell.study)} --cell {cell.id}` "
        f"(in the pipeline: `dvc repro {pipeline_path(cell.study).as_posix()}:train@{cell.id}`)"
    )

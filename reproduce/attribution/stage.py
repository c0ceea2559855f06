"""The attribution stage's edge: every trained cell of a study -> its maps and scores on disk.

``reproduce attribute STUDY`` (a DVC stage after the train stages, before the report) loads each
cell's kept model (``reproduce.training.kept.load_cell_model``: no retraining), attributes a fixed,
seeded selection of test images - ``PER_CLASS`` per class, the same images for every cell of a
dataset - and writes, into ``results/<study>/attribution/``:

- ``<cell>.npz``: the selection's indices and uint8 images, and ``Attributions.arrays()``;
- ``scores.json``: per cell, the co-location scores averaged over the selection (``score``; on the
  embedded data also the object shares against the generator's masks) and the filter impulse
  response: the mean expanded-kernel norm of each convolution and over all of them (``fir/*``).

Multi-label datasets are skipped (Grad-CAM of one class per image has no single target there), as
are cells without a result yet (named in a warning; ``strict`` refuses them). Everything is a
deterministic function of the kept weights and the test split, so an identical rerun writes
identical bytes.
"""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import numpy as np
import torch

from reproduce.atomic import write_bytes_atomic, write_json_atomic
from reproduce.attribution.attribute import attribute, score
from reproduce.attribution.files import SCORES_FILE
from reproduce.attribution.response import filter_norms
from reproduce.attribution.selection import select_per_class
from reproduce.data import load_dataset
from reproduce.errors import ReproduceError
from reproduce.pipeline.stages import untrained_cells, untrained_message
from reproduce.records.result import read_result
from reproduce.study import Study
from reproduce.training.kept import load_cell_model
from reproduce.training.task import multi_label, to_tensor

#: test images per class whose attributions are computed, and the selection's seed
PER_CLASS = 4
SELECTION_SEED = 0


def fir_summary(model: torch.nn.Module) -> dict[str, float]:
    """``fir/<layer>``: mean kernel norm over a convolution's output channels; ``fir/mean`` over all."""
    norms = filter_norms(model)
    out = {f"fir/{name}": float(v.mean()) for name, v in norms.items()}
    out["fir/mean"] = float(np.concatenate(list(norms.values())).mean()) if norms else float("nan")
    return out


def _selection(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``PER_CLASS`` seeded test images per class (``select_per_class``); fewer, the same number for
    every class, where a small test split has fewer; only the classes the split has."""
    flat = np.asarray(labels).reshape(-1)
    counts = np.bincount(flat, minlength=num_classes)
    per_class = int(min(PER_CLASS, counts[counts > 0].min()))
    if (counts > 0).all():
        return select_per_class(flat, per_class=per_class, seed=SELECTION_SEED, classes=num_classes)
    present = np.flatnonzero(counts)  # relabel the present classes 0..k-1; indices stay the split's
    return select_per_class(
        np.searchsorted(present, flat), per_class=per_class, seed=SELECTION_SEED, classes=len(present)
    )


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    # From memory, uncompressed: np.savez's zip entries then carry no time that changes between reruns.
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _check_trained(study: Study, results_dir: Path, *, strict: bool) -> None:
    """Untrained cells are skipped (the DVC stage may run before all are pulled), never silently."""
    untrained = untrained_cells(study, results_dir)
    if not untrained:
        return
    message = untrained_message(study, untrained, results_dir)
    if strict:
        raise ReproduceError(message)
    print(f"warning: {message}; they are skipped (--strict makes this an error)", file=sys.stderr)


def attribute_study(
    study: Study, *, results_dir: Path, data_root: Path, out_dir: Path | None = None, strict: bool = False
) -> list[Path]:
    """Attribute every trained cell of ``study``; returns the files written (``scores.json`` last).

    Args:
        study: The study.
        results_dir: ``results/<study>`` (its ``cells/<id>/`` hold result.json and model.pt).
        data_root: Where the datasets are (``data/``).
        out_dir: Default ``results_dir / "attribution"``.
        strict: Refuse (ReproduceError, nothing written) a study with untrained cells instead of
            skipping them with a warning on stderr.
    """
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "attribution"
    _check_trained(study, results_dir, strict=strict)
    written, scores = [], {}
    selections: dict[str, tuple] = {}
    for cell in study.cells():
        cell_dir = results_dir / "cells" / cell.id
        if not (cell_dir / "result.json").exists():
            continue
        if cell.dataset not in selections:
            splits = load_dataset(cell.dataset, root=data_root, options=study.data)
            if multi_label(splits.info.task):
                selections[cell.dataset] = None
            else:
                labels = splits.labels("test")
                idx = _selection(labels, splits.info.num_classes)
                raw = splits.images("test")
                masks = None
                if cell.dataset == "embedded":
                    from reproduce.attribution.objects import embedded_object_masks

                    masks = embedded_object_masks("test", images=raw)[idx]
                selections[cell.dataset] = (idx, raw[idx], labels[idx], masks)
        if selections[cell.dataset] is None:
            continue
        idx, raw, labels, masks = selections[cell.dataset]
        model = load_cell_model(cell, results_dir=cell_dir, result=read_result(cell_dir / "result.json"))
        att = attribute(model, to_tensor(raw), labels)
        _, means = score(att, masks=masks)
        # An undefined score (e.g. a constant map's rank correlation) is null, not NaN (not JSON).
        scores[cell.id] = {k: None if math.isnan(v) else v for k, v in {**means, **fir_summary(model)}.items()}
        path = out_dir / f"{cell.id}.npz"
        write_bytes_atomic(path, _npz_bytes({"indices": idx, "images": raw, **att.arrays()}))
        written.append(path)
    # Cells of an older grid leave no stale file behind (DVC would cache it with the new ones).
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed run leaves no empty directory
    keep = {p.name for p in written} | {SCORES_FILE}
    for stale in out_dir.iterdir():
        if stale.name not in keep and stale.suffix in (".npz", ".json"):
            stale.unlink()
    path = out_dir / SCORES_FILE
    write_json_atomic(path, {"per_class": PER_CLASS, "selection_seed": SELECTION_SEED, "cells": scores})
    return [*written, path]

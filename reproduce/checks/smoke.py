"""CPU smoke run of a study: a few steps of every distinct configuration, on stand-in data.

Paper studies need real datasets and GPUs; CI checks that every configuration they declare (group,
DP or not, augmentation multiplicity, EMA, restriction, steps/epochs) builds, trains, accounts and
reports. When the real dataset is not on disk, the stand-in is random pixels with the real
dataset's shape, channels, classes and task - clearly labelled, never mistaken for a result.
"""

from __future__ import annotations

import time
from pathlib import Path

from reproduce.data.stand_in import stand_in
from reproduce.study import GridConfig, Study, dp_only, id_token

SMOKE_TRAINING = {
    "batch_size": 16,
    "physical_batch_size": 8,
    "epochs": None,
    "steps": 2,
    "max_train_samples": 64,
    "eval_batch_size": 64,
    "log_every": 1,
}
# An audited study's smoke cells audit with few canaries (mislabeled ones copy distinct training
# images, of which the stand-in has 64) and the default guesses (the study's may exceed them).
SMOKE_AUDIT = {"canaries": 16, "guesses": None}


def smoke_study(study: Study) -> Study:
    """The study with tiny training settings; model, privacy and grid unchanged."""
    training = study.training.model_copy(update=SMOKE_TRAINING)
    audit = None if study.audit is None else study.audit.model_copy(update=SMOKE_AUDIT)
    # Axes of the settings fixed here go: each of their cells would apply its value on top (an
    # epochs axis on top of the smoke's steps is invalid), and their cells would differ in nothing.
    fixed = {*(f"training.{k}" for k in SMOKE_TRAINING), *(f"audit.{k}" for k in SMOKE_AUDIT)}
    grid = study.grid
    if fixed & set(grid.axes):
        grid = GridConfig.model_validate({k: v for k, v in grid.model_dump().items() if k not in fixed})
    return study.model_copy(update={"training": training, "audit": audit, "grid": grid})


def smoke_cells(study: Study):
    """Every group once on its most demanding path (DP, largest multiplicity), plus one cell of each
    other (privacy, multiplicity) combination on the first group, and one of each other value of each
    dotted axis (first group, demanding path); first dataset and seed, other dotted axes at their first value."""
    g = study.grid
    dataset, seed = g.dataset[0], g.seed[0]
    dp_eps = next((e for e in g.epsilon if e != "non-private"), None)
    top = (dp_eps if dp_eps is not None else "non-private", max(g.multiplicity))
    first = {p: id_token(v[0]) for p, v in g.axes.items()}
    wanted = [(group, *top, first) for group in g.group]
    wanted += [
        (g.group[0], e, k, first)
        for e in dict.fromkeys([dp_eps or "non-private", *(["non-private"] if "non-private" in g.epsilon else [])])
        for k in g.multiplicity
    ]
    wanted += [
        (g.group[0], *top, {**first, p: id_token(v)})
        for p, values in g.axes.items()
        for v in values[1:]
        if top[0] != "non-private" or not dp_only(p)
    ]
    cells = [c for c in study.cells() if c.dataset == dataset and c.seed == seed]
    picked = [
        next(
            c
            for c in cells
            if (c.group, c.epsilon, c.multiplicity) == (group, eps, k)
            and all(id_token(v) == where[p] for p, v in c.axes)
        )
        for group, eps, k, where in wanted
    ]
    return list({c.id: c for c in picked}.values())


def run_smoke(study: Study, *, data_root: Path, max_cells: int | None = None) -> int:
    from reproduce.training.cell import run_cell, write_cell

    small = smoke_study(study)
    cells = smoke_cells(small)[:max_cells]
    out_root = Path("results") / f"{study.name}-smoke"
    print(
        f"smoke run of {study.name}: {len(cells)} of {len(study.cells())} cells, "
        f"{SMOKE_TRAINING['steps']} steps each, on stand-in data unless the dataset is already on disk"
    )
    for cell in cells:
        t0 = time.perf_counter()
        splits = stand_in(cell.dataset, size=study.data.size, seed=cell.seed)
        result = run_cell(cell, data_root=data_root, progress=False, splits=splits)
        write_cell(result, out_root / cell.id)
        print(
            f"  {cell.id:40s} ok  {time.perf_counter() - t0:5.1f} s  params {result.metrics['parameters']:>9,}"
            f"  {result.statement[:60]}"
        )
    print(f"smoke results (NOT real numbers): {out_root}/")
    return 0

"""Stand-in data: random pixels with a real dataset's shape, channels, classes and task.

What the smoke run, ``reproduce verify`` and the tests train on when the real dataset is not on disk;
its ``source`` says so in every result made from it, so it is never mistaken for real data.
"""

from __future__ import annotations

import numpy as np

from reproduce.data.base import DatasetInfo, Splits, from_npz_arrays
from reproduce.data.registry import dataset_source

SPLIT_SIZES = {"train": 64, "val": 16, "test": 16}


def dataset_shape(name: str, *, size: int) -> tuple[DatasetInfo, int]:
    """(metadata, image side) of a dataset without downloading it, from the dataset table."""
    source = dataset_source(name)
    return source.info(size), source.image_side(size)


def stand_in(name: str, *, size: int, seed: int = 0) -> Splits:
    info, side = dataset_shape(name, size=size)
    rng = np.random.default_rng(seed)
    n_labels = len(info.labels) if info.task.startswith("multi-label") else 1
    arrays = {}
    for split, n in SPLIT_SIZES.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, side, side, info.n_channels), dtype=np.uint8)
        high = 2 if n_labels > 1 else info.num_classes
        labels = rng.integers(0, high, (n, n_labels))
        labels[: min(n, high), 0] = np.arange(min(n, high))   # every class present at least once
        arrays[f"{split}_labels"] = labels
    info = DatasetInfo(info.name, info.task, info.n_channels, info.labels,
                       source=f"SMOKE STAND-IN: random pixels shaped like {name} (not real data)", sha256="")
    return from_npz_arrays(arrays, info)

"""The dataset table: every dataset a study may name, and what the suite needs to know about it.

One ``DatasetSource`` per name: its metadata without downloading (``info``), how its file is made
present and verified (``prepare``), how it is read (``load``), its image side and the family of its
augmented views. Each source module (``embedded``, ``cifar10``, ``medmnist_source``) registers its
datasets with ``register_dataset`` when ``reproduce.data`` is imported; the study schema takes its
allowed names from here, so adding a dataset is one source module and one registration.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from reproduce.data.base import DatasetInfo, Splits
from reproduce.errors import ReproduceError


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """One dataset of the table.

    Attributes:
        name: The name a study's ``grid.dataset`` uses.
        augmentation: View family of ``reproduce.data.augment`` ("medmnist" or "cifar").
        side: Image side in pixels; None when the study's ``data.size`` picks it (and the file).
        info: ``info(size)``, the metadata without reading the data.
        prepare: ``prepare(root, *, size, mirror, local_file, sha256)``, the verified file's path.
        load: ``load(path, *, size)``, the splits read from that file.
        downloaded: Fetched from a host (one fetch stage in ``pipelines/dvc.yaml``); False for a
            set generated here (DVC tracks it with its own ``.dvc`` file).
    """

    name: str
    augmentation: str
    side: int | None
    info: Callable[[int], DatasetInfo]
    prepare: Callable[..., Path]
    load: Callable[..., Splits]
    downloaded: bool = True

    @property
    def sized(self) -> bool:
        """Whether the study's ``data.size`` chooses which file is read (MedMNIST's sizes)."""
        return self.side is None

    def image_side(self, size: int) -> int:
        """The side of the images training sees, given the study's ``data.size``."""
        return size if self.side is None else self.side


DATASETS: dict[str, DatasetSource] = {}


def register_dataset(source: DatasetSource) -> DatasetSource:
    """Add ``source`` to :data:`DATASETS`; a name can be registered only once."""
    existing = DATASETS.get(source.name)
    if existing is not None and existing is not source:
        raise ValueError(f"dataset {source.name!r} is already registered")
    DATASETS[source.name] = source
    return source


def dataset_source(name: str) -> DatasetSource:
    """The table's entry for ``name``; ReproduceError naming the known datasets otherwise.

    A name comes from the user (``reproduce fetch NAME``, a study), so a wrong one is their error.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise ReproduceError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}. Use one of these "
                             "names (on the command line or in the study's grid.dataset).") from None

"""Data: a dataset name from the study -> verified arrays in the MedMNIST layout.

The dataset table (``reproduce.data.registry.DATASETS``) holds every name a study may use. One
module per source registers its datasets there: ``embedded`` (generated offline, the default),
``medmnist_source`` (every 2D flag, official URLs and MD5s from ``medmnist.INFO``) and ``cifar10``
(official archive). ``prepare_dataset`` and ``load_dataset`` go through the table.
"""

from __future__ import annotations

from pathlib import Path

from reproduce.data.base import DatasetInfo, Splits  # noqa: F401  (re-exported)
from reproduce.data.registry import DATASETS, DatasetSource, dataset_source  # noqa: F401  (re-exported)

# Importing a source registers its datasets in the table; below the table's import on purpose.
from reproduce.data import embedded, cifar10, medmnist_source  # noqa: E402,F401  isort: skip  (table order)

DEFAULT_ROOT = Path("data")


def prepare_dataset(name: str, *, root: Path = DEFAULT_ROOT, options) -> Path:
    """Make the dataset's file present and verified in ``root/<name>/``; return its path.

    One directory per dataset, so each is one DVC output (``data.dvc``, or its ``fetch`` stage in
    ``pipelines/dvc.yaml``, shared by every study).

    Args:
        name: A name of the dataset table.
        root: Directory holding one directory per dataset.
        options: The study's ``data`` section (``reproduce.study.DataConfig``): the MedMNIST size,
            a mirror (with the sha256 of what it serves, when that is not the official file) and
            local files.
    """
    source = dataset_source(name)
    local = options.local_files.get(name)
    return source.prepare(Path(root) / name, size=options.size, mirror=options.mirror,
                          local_file=Path(local.path) if local else None,
                          sha256=local.sha256 if local else options.mirror_sha256.get(name))


def load_dataset(name: str, *, root: Path = DEFAULT_ROOT, options) -> Splits:
    """Prepare (if needed), verify and load ``name``; ``options`` as for :func:`prepare_dataset`."""
    path = prepare_dataset(name, root=root, options=options)
    return dataset_source(name).load(path, size=options.size)

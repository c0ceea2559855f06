"""The fixed, seeded selection of test images whose attributions are computed and shown."""

from __future__ import annotations

import numpy as np


def select_per_class(labels: np.ndarray, *, per_class: int, seed: int = 0, classes: int | None = None) -> np.ndarray:
    """``per_class`` image indices of every class, drawn without replacement.

    Each class draws from its own stream (seed, class), so the picks of one class do not depend on
    the other classes' sizes; the same labels and seed always give the same indices.

    Args:
        labels: [N] or [N, 1] class labels (single-label tasks).
        per_class: images per class.
        seed: selection seed.
        classes: number of classes; default ``labels.max() + 1``. Every class must have
            ``per_class`` images.

    Returns:
        int64 indices, class by class (class 0 first), ascending within a class.

    Raises:
        ValueError: for multi-label labels or a class with fewer than ``per_class`` images.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"select_per_class needs one label per image, got labels of shape {labels.shape}")
    classes = int(labels.max()) + 1 if classes is None else int(classes)
    picks = []
    for c in range(classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} images, fewer than per_class={per_class}")
        rng = np.random.default_rng([int(seed), c])
        picks.append(np.sort(rng.choice(members, size=per_class, replace=False)))
    return np.concatenate(picks).astype(np.int64)

"""Seeded canaries for a one-run audit: which are included, what they are, and how each is scored.

Everything here is a pure function of its arguments and a seed. Each random choice draws from its
own stream of ``numpy.random.SeedSequence([seed, stream])``, so the inclusion mask is independent of
the canaries' content: the bound's proof needs each canary included with probability exactly 1/2,
independently of everything the auditor uses to guess.

Two kinds, as in Steinke, Nasr & Jagielski (2023):

- input canaries (black box): extra training records, mislabeled copies of real images or
  out-of-distribution noise images in the dataset's shape; scored by :func:`loss_scores` of the final
  model (lower loss = more likely included);
- gradient canaries (white box): canary i's per-sample gradient is replaced by ``norm * u_i`` for a
  fixed unit direction u_i in parameter space (Dirac: one coordinate, random sign; or Gaussian: a
  dense random direction); scored by ``-<u_i, theta_final - theta_initial>`` (descent moves theta
  against the gradient, so an included canary pushes its score up).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

# The probability the bound's proof assumes; not a knob.
INCLUSION_PROBABILITY = 0.5

# One stream per random choice (see the module docstring).
_STREAM_MASK, _STREAM_INPUT, _STREAM_DIRECTION = 1, 2, 3

INPUT_CANARY_KINDS = ("mislabeled", "ood")
GRADIENT_CANARY_KINDS = ("dirac", "gaussian")
# The audit's kinds (black box, white box), each with its canaries: the study schema's names.
CANARY_KINDS = {"input": INPUT_CANARY_KINDS, "gradient": GRADIENT_CANARY_KINDS}


def _rng(seed: int, *stream: int) -> np.random.Generator:
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), *stream]))


def _check_m(m: int) -> None:
    if isinstance(m, bool) or int(m) != m or m < 1:
        raise ValueError(f"the number of canaries m must be a positive integer, got {m!r}")


def inclusion_mask(m: int, *, seed: int) -> np.ndarray:
    """[m] bool: canary i is in the training set, each independently with probability 1/2."""
    _check_m(m)
    return _rng(seed, _STREAM_MASK).random(m) < INCLUSION_PROBABILITY


@dataclasses.dataclass(frozen=True)
class InputCanaries:
    """m candidate training records in the layout of ``reproduce.data.base.Splits``."""

    kind: str
    images: np.ndarray  # [m, H, W, C], the dtype of the dataset's images (uint8)
    labels: np.ndarray  # int64 [m, 1]
    source_index: np.ndarray  # int64 [m]: the pool row a mislabeled canary copies; -1 for ood

    def __len__(self) -> int:
        return len(self.images)


def input_canaries(
    kind: str, images: np.ndarray, labels: np.ndarray, *, m: int, num_classes: int, seed: int
) -> InputCanaries:
    """Build m input canaries from a pool of images in the dataset's layout.

    Args:
        kind: ``"mislabeled"``: m distinct pool images, each with a label drawn uniformly among the
            wrong ones; ``"ood"``: uniform noise images of the pool's shape and dtype, each with a
            uniform label (the pool gives only the shape).
        images: [N, H, W, C] pool, e.g. the training split; a mislabeled copy is a new record even
            if its image, correctly labeled, is also trained on.
        labels: [N, 1] int class labels of the pool (single-label tasks only).
        m: Number of canaries.
        num_classes: Classes of the task (>= 2).
        seed: The audit's seed.
    """
    _check_m(m)
    images, labels = np.asarray(images), np.asarray(labels)
    if kind not in INPUT_CANARY_KINDS:
        raise ValueError(f"unknown input canary kind {kind!r}; choose one of {', '.join(INPUT_CANARY_KINDS)}")
    if images.ndim != 4 or labels.shape != (len(images), 1):
        raise ValueError(
            f"expected a pool of images [N, H, W, C] and labels [N, 1] (single-label), got "
            f"shapes {images.shape} and {labels.shape}"
        )
    if num_classes < 2:
        raise ValueError(f"canaries need at least 2 classes, got num_classes={num_classes}")
    rng = _rng(seed, _STREAM_INPUT)
    if kind == "mislabeled":
        if m > len(images):
            raise ValueError(
                f"m = {m} mislabeled canaries need as many distinct pool images, the pool has {len(images)}"
            )
        rows = rng.choice(len(images), size=m, replace=False)
        # A shift in 1..num_classes-1 makes every label wrong and uniform among the wrong ones.
        wrong = (labels[rows, 0] + rng.integers(1, num_classes, size=m)) % num_classes
        return InputCanaries(kind, images[rows].copy(), wrong.astype(np.int64)[:, None], rows.astype(np.int64))
    info = np.iinfo(images.dtype) if np.issubdtype(images.dtype, np.integer) else None
    if info is not None:
        noise = rng.integers(info.min, int(info.max) + 1, size=(m, *images.shape[1:]), dtype=images.dtype)
    else:
        noise = rng.random(size=(m, *images.shape[1:])).astype(images.dtype)
    ood_labels = rng.integers(0, num_classes, size=(m, 1)).astype(np.int64)
    return InputCanaries(kind, noise, ood_labels, np.full(m, -1, dtype=np.int64))


def with_included_canaries(
    images: np.ndarray, labels: np.ndarray, canaries: InputCanaries, included: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training set of an audited run: the real records, then the included canaries.

    Returns:
        (images, labels, canary_rows): the arrays to train on, whose length is the N of the Poisson
        sampler and of the accountant, and [m] the row of each canary in them (-1 if excluded).
    """
    included = np.asarray(included)
    if included.dtype != np.bool_ or included.shape != (len(canaries),):
        raise ValueError(
            f"included must be a bool mask of the {len(canaries)} canaries, got {included.dtype} {included.shape}"
        )
    canary_rows = np.full(len(canaries), -1, dtype=np.int64)
    canary_rows[included] = len(images) + np.arange(int(included.sum()))
    return (
        np.concatenate([images, canaries.images[included]]),
        np.concatenate([labels, canaries.labels[included]]),
        canary_rows,
    )


def loss_scores(losses: np.ndarray) -> np.ndarray:
    """Black-box scores: the negated per-canary loss of the final model (higher = more likely in).

    Args:
        losses: [m] the training loss of each canary (included or not) under the final model,
            computed exactly as for a training record (same transform, no augmentation).
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 1:
        raise ValueError(f"losses must be one per canary, [m], got shape {losses.shape}")
    return -losses


@dataclasses.dataclass(frozen=True)
class GradientCanaries:
    """m fixed unit directions u_i in a model's flat parameter space (white-box canaries).

    The flat order is that of :func:`parameter_vector`: ``model.parameters()`` that require grad,
    each flattened, concatenated.
    """

    m: int
    num_params: int
    seed: int
    kind: str  # one of GRADIENT_CANARY_KINDS

    def __post_init__(self) -> None:
        _check_m(self.m)
        if self.kind not in GRADIENT_CANARY_KINDS:
            raise ValueError(
                f"unknown gradient canary kind {self.kind!r}; choose one of {', '.join(GRADIENT_CANARY_KINDS)}"
            )
        if self.kind == "dirac" and self.m > self.num_params:
            raise ValueError(
                f"{self.m} Dirac canaries need as many distinct coordinates; the model has {self.num_params} parameters"
            )

    @functools.cached_property
    def _dirac(self) -> tuple[np.ndarray, np.ndarray]:
        rng = _rng(self.seed, _STREAM_DIRECTION)
        coordinates = rng.choice(self.num_params, size=self.m, replace=False)
        return coordinates.astype(np.int64), rng.choice(np.array([-1.0, 1.0]), size=self.m)

    def direction(self, i: int) -> np.ndarray:
        """float64 [num_params], unit norm: canary i's direction."""
        if not 0 <= i < self.m:
            raise IndexError(f"canary {i} out of range 0..{self.m - 1}")
        if self.kind == "dirac":
            coordinates, signs = self._dirac
            u = np.zeros(self.num_params)
            u[coordinates[i]] = signs[i]
            return u
        u = _rng(self.seed, _STREAM_DIRECTION, i).standard_normal(self.num_params)
        return u / np.linalg.norm(u)

    def gradient(self, i: int, *, norm: float) -> np.ndarray:
        """float32 [num_params]: the per-sample gradient that replaces canary i's, ``norm * u_i``.

        ``norm = max_grad_norm`` passes clipping unchanged; a larger norm is clipped back to it by
        a correct implementation, so the bound is the same, while a missing clip shows up in it.
        """
        if not norm > 0:
            raise ValueError(f"the canary gradient's norm must be positive, got {norm!r}")
        return (norm * self.direction(i)).astype(np.float32)

    def scores(self, theta_initial: np.ndarray, theta_final: np.ndarray) -> np.ndarray:
        """[m] white-box scores ``-<u_i, theta_final - theta_initial>`` (higher = more likely in)."""
        change = np.asarray(theta_final, dtype=np.float64) - np.asarray(theta_initial, dtype=np.float64)
        if change.shape != (self.num_params,):
            raise ValueError(f"parameter vectors must be flat [{self.num_params}], got {change.shape}")
        if self.kind == "dirac":
            coordinates, signs = self._dirac
            return -signs * change[coordinates]
        return np.array([-self.direction(i) @ change for i in range(self.m)])


def parameter_vector(model) -> np.ndarray:
    """float64 [num_params]: a torch model's trainable parameters in the canaries' flat order."""
    import torch  # here, so that the pure numpy parts import without torch

    with torch.no_grad():
        flat = [p.detach().reshape(-1).to("cpu", torch.float64) for p in model.parameters() if p.requires_grad]
    return torch.cat(flat).numpy() if flat else np.zeros(0)


__all__ = [
    "CANARY_KINDS",
    "GRADIENT_CANARY_KINDS",
    "INCLUSION_PROBABILITY",
    "INPUT_CANARY_KINDS",
    "GradientCanaries",
    "InputCanaries",
    "inclusion_mask",
    "input_canaries",
    "loss_scores",
    "parameter_vector",
    "with_included_canaries",
]

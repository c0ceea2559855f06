"""Co-location of two saliency maps, and the share of a map inside a known object.

All functions are pure numpy on per-pixel maps [H, W] (or [N, H, W] for the batch helpers); an
attribution with colour channels is first reduced by ``pixel_saliency``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

#: share of pixels ``top_k_overlap`` compares by default (its chance level)
TOP_FRACTION = 0.1


def pixel_saliency(attribution: np.ndarray) -> np.ndarray:
    """Per-pixel magnitude of a [N, C, H, W] attribution: max |.| over channels (Simonyan et al. 2014)."""
    return np.abs(np.asarray(attribution)).max(axis=1)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps' pixels (average ranks for ties).

    NaN when either map is constant (e.g. an all-zero Grad-CAM): no ranking to compare.
    """
    ra, rb = rankdata(np.ravel(a)), rankdata(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _top(a: np.ndarray, k: int) -> np.ndarray:
    # stable descending order: ties at the threshold go to the lower pixel index, deterministically
    return np.argsort(-np.ravel(a), kind="stable")[:k]


def top_k_overlap(a: np.ndarray, b: np.ndarray, *, fraction: float = TOP_FRACTION) -> float:
    """Share of ``a``'s top ``fraction`` of pixels that are also among ``b``'s top ``fraction``.

    k = max(1, round(fraction * pixels)); two unrelated maps overlap by ``fraction`` on average.
    Ties at the threshold go to the lower pixel index. NaN when either map is constant.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = np.size(a)
    if np.size(b) != n:
        raise ValueError(f"maps differ in size: {np.shape(a)} vs {np.shape(b)}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan  # a constant map has no top pixels; any pick would be the tie-break's
    k = max(1, round(fraction * n))
    return len(np.intersect1d(_top(a, k), _top(b, k))) / k


def object_share(attribution: np.ndarray, mask: np.ndarray) -> float:
    """Share of the attribution's magnitude inside the object: ``sum |a| m / sum |a|``.

    Args:
        attribution: per-pixel map [H, W].
        mask: object coverage in [0, 1] per pixel (soft at anti-aliased edges), same shape.

    Returns:
        The share in [0, 1]; NaN for an all-zero attribution. A map spread uniformly scores the
        object's area share, ``mask.mean()``.
    """
    a, m = np.abs(np.asarray(attribution, dtype=np.float64)), np.asarray(mask, dtype=np.float64)
    if a.shape != m.shape:
        raise ValueError(f"attribution {a.shape} and mask {m.shape} differ in shape")
    total = a.sum()
    return math.nan if total == 0 else float((a * m).sum() / total)


def colocation_scores(
    response: np.ndarray,
    maps: dict[str, np.ndarray],
    *,
    masks: np.ndarray | None = None,
    fraction: float = TOP_FRACTION,
) -> dict[str, np.ndarray]:
    """Per-image co-location of the response map with each attribution map, and object shares.

    Args:
        response: [N, H, W] response maps (``response.response_map``).
        maps: name -> [N, H, W] per-pixel attribution maps.
        masks: optional [N, H, W] object coverage; adds ``object_share/<name>`` for every map and
            the response, and ``object_area`` (the share a uniform map gets).
        fraction: top share of pixels for ``top_k_overlap``.

    Returns:
        Score name -> float64 [N]: ``rank_correlation/<name>``, ``top_k_overlap/<name>`` and, with
        masks, the object scores.
    """
    scores: dict[str, np.ndarray] = {}
    for name, m in maps.items():
        scores[f"rank_correlation/{name}"] = np.array([rank_correlation(r, a) for r, a in zip(response, m)])
        scores[f"top_k_overlap/{name}"] = np.array(
            [top_k_overlap(r, a, fraction=fraction) for r, a in zip(response, m)]
        )
    if masks is not None:
        for name, m in {"response": response, **maps}.items():
            scores[f"object_share/{name}"] = np.array([object_share(a, k) for a, k in zip(m, masks)])
        scores["object_area"] = np.asarray(masks, dtype=np.float64).mean(axis=(1, 2))
    return scores


def summarise(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of each score over the selection, ignoring NaN (undefined) images.

    Adds ``<name>/undefined``, the number of NaN images, wherever there is one, so that a mean over
    fewer images is visible.
    """
    out: dict[str, float] = {}
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        defined = values[~np.isnan(values)]
        out[name] = float(defined.mean()) if len(defined) else math.nan
        if len(defined) < len(values):
            out[f"{name}/undefined"] = float(len(values) - len(defined))
    return out

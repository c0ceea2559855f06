"""Rotation-invariance gap: accuracy on rotated test images minus accuracy on the originals.

Rotations act on the last two axes (H, W) of a batch ``[N, C, H, W]`` (or any ``[..., H, W]``)
and are counter-clockwise as the image is displayed (row 0 at the top), the convention of
``torch.rot90(x, k, dims=(-2, -1))``:

- multiples of 90 deg: :func:`rotate90`, an exact permutation of pixels;
- any other angle (e.g. 45 deg): :func:`rotate_bilinear`, bilinear interpolation with
  ``torch.nn.functional.affine_grid`` + ``grid_sample`` (``align_corners=False``, zero padding:
  the corners that rotate in from outside the image are 0). The output pixel at normalised
  coordinates ``(x, y)`` samples the input at ``R(theta) (x, y)`` with
  ``R = [[cos t, -sin t], [sin t, cos t]]``; for t = 90 deg this reproduces :func:`rotate90`
  up to float rounding. Square images only (normalised coordinates would shear non-square ones).

``gap = acc(rotate(images)) - acc(images)``: 0 for an invariant classifier, negative when
rotation hurts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import register_metric


def rotate90(x: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Exact rotation by ``k * 90`` deg counter-clockwise over the last two axes (``torch.rot90``)."""
    if x.ndim < 2:
        raise ValueError(f"need at least 2 dims [..., H, W], got shape {tuple(x.shape)}")
    return torch.rot90(x, int(k) % 4, dims=(-2, -1))


def rotate_bilinear(x: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Rotate a batch ``[N, C, H, W]`` (H == W) by ``angle_deg`` counter-clockwise with bilinear
    interpolation: ``out(p) = in(R p)`` in ``affine_grid``'s normalised coordinates, R the rotation
    matrix ``[[cos t, -sin t], [sin t, cos t]]``, zero padding, ``align_corners=False``.
    Integer tensors are interpolated in float32 and returned as float32."""
    if x.ndim != 4:
        raise ValueError(f"rotate_bilinear needs a batch [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotate_bilinear needs square images, got H={x.shape[-2]}, W={x.shape[-1]}")
    if not torch.is_floating_point(x):
        x = x.float()
    t = math.radians(float(angle_deg))
    c, s = math.cos(t), math.sin(t)
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype, device=x.device)
    theta = theta.unsqueeze(0).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate_batch(x: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Rotate by ``angle_deg`` counter-clockwise: exactly (:func:`rotate90`) when the angle is a
    multiple of 90 deg, otherwise bilinearly (:func:`rotate_bilinear`)."""
    q = float(angle_deg) / 90.0
    if q == round(q):
        return rotate90(x, int(round(q)))
    return rotate_bilinear(x, angle_deg)


@dataclass(frozen=True)
class InvarianceGap:
    """``gap = acc_rotated - acc_original`` on ``n`` samples rotated by ``angle_deg``."""

    angle_deg: float
    acc_original: float
    acc_rotated: float
    gap: float
    n: int


def _predictions(out: Any) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().numpy()
    out = np.asarray(out)
    if out.ndim == 2:
        return np.argmax(out, axis=1)
    if out.ndim == 1 and np.issubdtype(out.dtype, np.integer):
        return out
    raise ValueError(
        f"predict must return scores [N, C] or integer predictions [N], got shape {out.shape}, dtype {out.dtype}"
    )


def _accuracy(predict: Callable[[torch.Tensor], Any], x: torch.Tensor, y: np.ndarray, batch_size: int | None) -> float:
    n = x.shape[0]
    step = n if batch_size is None else int(batch_size)
    preds = []
    with torch.no_grad():
        for start in range(0, n, step):
            p = _predictions(predict(x[start : start + step]))
            if p.shape[0] != min(step, n - start):
                raise ValueError(f"predict returned {p.shape[0]} predictions for {min(step, n - start)} images")
            preds.append(p)
    return float(np.mean(np.concatenate(preds) == y))


@register_metric("invariance_gap")
def invariance_gap(
    predict: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    labels: Any,
    angle_deg: float,
    *,
    batch_size: int | None = None,
) -> InvarianceGap:
    """Invariance gap ``acc(rotate_batch(images, angle_deg)) - acc(images)``.

    ``acc(X) = (1/N) sum_i 1[pred_i(X) == y_i]`` with ``pred = argmax`` of ``predict``'s scores
    ``[N, C]`` (logits or probabilities) or ``predict``'s integer predictions ``[N]``.
    ``predict`` is called under ``torch.no_grad()`` on chunks of ``batch_size`` images (all at once
    by default) and must be deterministic (a model in eval mode) for the gap to be meaningful.
    ``labels``: ints ``[N]`` or ``[N, 1]``.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty batch [N, C, H, W], got shape {tuple(images.shape)}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (images.shape[0],):
        raise ValueError(f"labels must be [N] or [N, 1] with N={images.shape[0]}, got {y.shape}")
    acc0 = _accuracy(predict, images, y, batch_size)
    acc1 = _accuracy(predict, rotate_batch(images, angle_deg), y, batch_size)
    return InvarianceGap(float(angle_deg), acc0, acc1, acc1 - acc0, int(images.shape[0]))

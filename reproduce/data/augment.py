"""Augmentation multiplicity (Hoffer et al. 2020; De et al. 2022): K random views per sample.

Each sample's gradient is the mean over its K views and is clipped after averaging
(``average_view_grad_samples``), so the accountant still counts samples, not views. The views are
drawn independently per sample and per view (the authors' code once made K identical copies).

Views for 28x28 medical images ("medmnist" kind, our choice, documented in docs/studies.md): a random
element of the dihedral group D4 (rotation by a multiple of 90 degrees, optional flip; these
images have no canonical orientation) followed by a random translation of up to 2 pixels with zero
padding (random crop after padding). For CIFAR-10 ("cifar" kind): random crop with 4-pixel padding
and horizontal flip, as in De et al.

On every device the views' integers are drawn on the trainer's CPU generator (so they do not depend
on micro-batching) and moved to the images' device (``host_to_device``: B*K integers per micro-batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from reproduce.data.registry import dataset_source
from reproduce.device import host_to_device

KINDS = ("medmnist", "cifar")


def _draws(n: int, radices: list[int], gen: torch.Generator) -> list[torch.Tensor]:
    """Independent uniform integers in ``range(r)`` for each radix, ONE generator draw per view.

    Decoding one mixed-radix integer per view keeps each view's draws a function of its position in
    the generator's stream (CPU ``randint`` draws one number per element, in order), so splitting a
    batch into micro-batches (``physical_batch_size``) gives every sample the same views as the whole
    batch would. This holds for a CPU generator only (a CUDA generator's offsets depend on the size
    of each draw), so the generator must be a CPU one on every device; the draws are moved.
    """
    if gen.device.type != "cpu":
        raise ValueError(f"the views' generator must be a CPU generator (got one on {gen.device}): CUDA "
                         "generators would make the views depend on the micro-batch size")
    u = torch.randint(0, math.prod(radices), (n,), generator=gen)
    out = []
    for r in radices:
        out.append(u % r)
        u = u // r
    return out


def _crop(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Per-sample crops of the zero-padded images at offsets (dy, dx) in [0, 2*pad] (host tensors)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = host_to_device(dy, x.device), host_to_device(dx, x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])            # [n, h]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])            # [n, w]
    idx = torch.arange(n, device=x.device)[:, None, None]
    crops = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    # The gather above is channels-last; hand the model NCHW like K = 1 batches, so the whole network
    # runs in one layout (the per-sample rules are exact for any layout, and verified to be).
    return crops.contiguous()


def _rows(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The rows a host mask selects, as an index on ``device``: selecting by a device mask would
    read its count back to the host (a stall); the same rows either way."""
    return host_to_device(mask.nonzero().squeeze(1), device)


def _flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """``x`` with the samples where ``flip`` (host, bool) mirrored left-right, in place."""
    rows = _rows(flip, x.device)
    x[rows] = x[rows].flip(3)
    return x


def _d4(x: torch.Tensor, k: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Rotate sample i by k[i] quarter turns, then mirror it where flip[i] (k, flip on the host)."""
    out = x.clone()
    for r in range(4):
        sel = k == r
        if sel.any():
            rows = _rows(sel, x.device)
            out[rows] = torch.rot90(x[rows], r, dims=(2, 3))
    return _flip(out, flip)


def augment_views(x: torch.Tensor, multiplicity: int, *, kind: str, generator: torch.Generator) -> torch.Tensor:
    """[B, C, H, W] -> [B * K, C, H, W], the K views of sample i at rows i*K .. i*K+K-1.

    K = 1 returns ``x`` unchanged (no augmentation).
    """
    if multiplicity == 1:
        return x
    rep = x.repeat_interleave(multiplicity, dim=0)
    if kind == "medmnist":
        pad = 2
        k, flip, dy, dx = _draws(len(rep), [4, 2, 2 * pad + 1, 2 * pad + 1], generator)
        return _crop(_d4(rep, k, flip.bool()), pad, dy, dx)
    if kind == "cifar":
        pad = 4
        flip, dy, dx = _draws(len(rep), [2, 2 * pad + 1, 2 * pad + 1], generator)
        return _crop(_flip(rep.clone(), flip.bool()), pad, dy, dx)
    raise ValueError(f"unknown augmentation kind {kind!r}; allowed: {KINDS}")


def augmentation_kind(dataset: str) -> str:
    """The view family of ``dataset`` in the dataset table: CIFAR-10's crops and flips, or the D4
    views of medical images."""
    return dataset_source(dataset).augmentation


def training_views(x: torch.Tensor, y: torch.Tensor, multiplicity: int, *, kind: str,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The (views, targets) one training step feeds the model: K views per sample, targets repeated.

    The trainer and ``reproduce verify`` both call this, so what is verified is what trains.
    """
    views = augment_views(x, multiplicity, kind=kind, generator=generator)
    return views, (y.repeat_interleave(multiplicity, dim=0) if multiplicity > 1 else y)


def average_view_grad_samples(params, multiplicity: int) -> None:
    """Replace each parameter's per-view gradients [B*K, ...] by their per-sample mean [B, ...].

    Called between backward and the DP optimizer's step so clipping sees one gradient per sample.
    """
    if multiplicity == 1:
        return
    for p in params:
        gs = getattr(p, "grad_sample", None)
        if isinstance(gs, list):
            raise ValueError("average_view_grad_samples needs one backward pass per optimizer step "
                             "(grad_sample is a list: gradients were accumulated over several backward calls)")
        if gs is not None:
            p.grad_sample = gs.reshape(-1, multiplicity, *gs.shape[1:]).mean(1)

"""Per-sample gradients of a 2D convolution's dense filter, exact for any memory layout.

Shared by the rules for ``nn.Conv2d`` (``conv2d.py``) and ``EquivariantConv2d`` (whose filter is
expanded from basis coefficients, ``equivariant_conv.py``). Two contractions, same arithmetic:

- ``conv``: the weight gradient of one grouped convolution with a group per sample (oneDNN's
  kernel; fastest for large feature maps with enough input channels);
- ``unfold``: im2col as one strided copy, then a batched matmul with the output gradient.

Layout: training feeds these rules channels-last and otherwise strided tensors (the K-view crops are
built by advanced indexing + permute, and oneDNN returns channels-last outputs for some layers).
``as_strided`` reads memory, not logical indices, so ``unfold`` first makes its input NCHW-contiguous
(a no-op when it already is); everything else goes through logical ``reshape``. opacus 1.6's own
``unfold2d`` lacks that step and is wrong on channels-last inputs (measured: relative error 1.28).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Feature maps with at least this many output positions get the filter gradient from a grouped
# convolution; smaller ones from unfold + bmm (measured on CPU: grouped conv wins 2-5x at 28x28 and
# 14x14, and loses 1.3-3x at 3x3; at 7x7, once freed memory is reused (reproduce.privacy.heap), it
# wins 1.1-1.2x on the C4 ResNet-9s' 7x7 layers with 64 and 128 channels, batches 64 to 256, where
# unfold's im2col copy had been cheap next to mapping fresh pages).
GROUPED_CONV_MIN_POSITIONS = 49
GROUPED_CONV_MIN_CHANNELS = 16  # oneDNN's grouped weight gradient is slow for few input channels
# Chunks of samples whose largest intermediate has about this many elements stay in cache.
CHUNK_ELEMENTS = 2**20
MAX_CHUNK = 64
METHODS = ("unfold", "conv")


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel, stride, zero padding and dilation of a 2D convolution, each as (height, width)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def of(cls, layer) -> ConvGeometry:
        """The geometry of ``nn.Conv2d`` or ``EquivariantConv2d`` (numeric zero padding only)."""
        return cls(_pair(layer.kernel_size), _pair(layer.stride), _pair(layer.padding), _pair(layer.dilation))

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def unfold(x: torch.Tensor, layer) -> torch.Tensor:
    """``F.unfold`` for ``layer``'s geometry, ``[n, C_in*kh*kw, H'*W']``, as one strided copy (2-6x faster).

    Exact for any layout of ``x``: the strides below are those of an NCHW-contiguous tensor, so the
    padded input is made contiguous first (``F.pad`` keeps channels-last; no copy when contiguous).
    """
    geo = ConvGeometry.of(layer)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geo.kernel, geo.stride, geo.padding, geo.dilation
    xp = (F.pad(x, (pw, pw, ph, ph)) if ph or pw else x).contiguous()
    hp, wp = h + 2 * ph, w + 2 * pw
    ho, wo = geo.output_size(h, w)
    windows = xp.as_strided((n, c, kh, kw, ho, wo), (c * hp * wp, hp * wp, dh * wp, dw, sh * wp, sw))
    return windows.reshape(n, c * kh * kw, ho * wo)


def choose_filter_method(positions: int, in_channels: int) -> str:
    """``conv`` for large feature maps with enough input channels, else ``unfold`` (measured on CPU)."""
    large = positions >= GROUPED_CONV_MIN_POSITIONS and in_channels >= GROUPED_CONV_MIN_CHANNELS
    return "conv" if large else "unfold"


def filter_grad_sample(
    layer, x: torch.Tensor, grad_out: torch.Tensor, *, method: str = "unfold", out: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample gradients ``[n, C_out, C_in, kh*kw]`` of the dense filter of ``layer`` (not chunked).

    Args:
        layer: ``nn.Conv2d`` or ``EquivariantConv2d`` with groups 1 and numeric zero padding.
        x: the layer's input ``[n, C_in, H, W]``, any layout.
        grad_out: gradient of the loss with respect to its output ``[n, C_out, H', W']``, any layout.
        method: "unfold" or "conv"; both exact.
        out: optional contiguous ``[n, C_out, C_in, kh*kw]`` tensor to write into.
    """
    geo = ConvGeometry.of(layer)
    n, c_in = x.shape[:2]
    c_out = grad_out.shape[1]
    if method == "unfold":
        g_out = grad_out.reshape(n, c_out, -1)
        cols = unfold(x, layer).transpose(1, 2)
        if out is None:
            return torch.bmm(g_out, cols).view(n, c_out, c_in, geo.taps)
        torch.bmm(g_out, cols, out=out.view(n, c_out, c_in * geo.taps))
        return out
    if method == "conv":
        weight = x.new_empty(n * c_out, c_in, *geo.kernel)  # only its shape is read (uninitialised, no fill)
        _, g, _ = torch.ops.aten.convolution_backward(
            grad_out.reshape(1, n * c_out, *grad_out.shape[2:]),
            x.reshape(1, n * c_in, *x.shape[2:]),
            weight,
            None,
            list(geo.stride),
            list(geo.padding),
            list(geo.dilation),
            False,
            [0, 0],
            n,
            [False, True, False],
        )
        g = g.view(n, c_out, c_in, geo.taps)
        if out is None:
            return g
        out.copy_(g)
        return out
    raise ValueError(f"unknown method {method!r}; allowed: {METHODS}")


def chunk_size(per_sample_elements: int) -> int:
    """Samples per chunk so that the largest intermediate stays about ``CHUNK_ELEMENTS``."""
    return max(1, min(MAX_CHUNK, CHUNK_ELEMENTS // max(1, per_sample_elements)))


@contextlib.contextmanager
def chunks_of_at_most(samples: int):
    """Temporarily cap the chunk size (``reproduce verify`` checks small batches across chunk boundaries)."""
    global MAX_CHUNK
    saved, MAX_CHUNK = MAX_CHUNK, samples
    try:
        yield
    finally:
        MAX_CHUNK = saved

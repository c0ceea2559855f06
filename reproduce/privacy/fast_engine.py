"""Per-sample gradients from one backward pass to the layer outputs ("book-keeping").

In opacus's hooks mode the ordinary backward still computes every batch weight gradient and the
backward of escnn's basis expansion, and DP-SGD then throws both away. This engine captures each
trainable layer's input and output in the forward pass, takes one ``torch.autograd.grad`` of the
loss with respect to the layer OUTPUTS only (autograd then skips all weight gradients), and hands
each layer's (input, output gradient) to the same opacus-registered rule hooks mode would call. It
fills ``p.grad_sample`` exactly as opacus's ``GradSampleModule`` does, so clipping, noise and
accounting stay opacus's own ``DPOptimizer`` and accountant.

Usage::

    model, optimizer, loader = PrivacyEngine().make_private(..., grad_sample_mode="no_op")
    engine = OutputGradientEngine(model)          # refuses models without exact rules
    loss = criterion(model(x), y)                 # reduction must match loss_reduction ("mean")
    engine.backward(loss)                         # instead of loss.backward()
    # or, as the trainer does, with the batch padded to a shape oneDNN has seen (ROW_MULTIPLE):
    loss = criterion(engine.forward(model, x), y); engine.backward(loss)
    optimizer.step(); optimizer.zero_grad()

With a ``DPOptimizer`` built directly (as ``reproduce.privacy.dp_sgd`` does for the trainer), use
the engine on the plain model in place of ``GradSampleModule``. Same clipped sum as hooks mode
(tested). Measured (C4 ResNet-9 8-16-32, 2 CPU threads, bench/bench_per_sample_grads.py, three
runs): DP step / non-private step 1.15-1.41 at batch 64 and 1.08-1.24 at batch 256; opacus hooks
mode with the same rule 1.37-1.64 and 1.28-1.41.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from reproduce.errors import ReproduceError
from reproduce.privacy.exactness import check_exact_per_sample_gradients
from reproduce.privacy.grad_samplers import rule_for
from reproduce.privacy.heap import keep_freed_memory

# ``forward`` pads a micro-batch with zero samples up to a multiple of this many rows. Poisson batches
# have a new size nearly every step, and oneDNN builds (JIT-compiles) new convolution primitives for
# every new batch size - forward, input gradient and the rules' grouped weight gradient of every
# layer, ~8 ms per new size for the conventional ResNet-9. Measured (default study, 150 Poisson
# batches of mean 256 split at 256, engine forward+backward over a non-private fixed-size step,
# interleaved, 2 threads): e 1.29-1.30 unpadded, 1.22 padded to 4 or 8 (1.14-1.16 for one fixed
# size); C4 1.19 -> 1.17-1.18. The padded rows cost at most 7 samples' compute per micro-batch.
ROW_MULTIPLE = 8


def padded_rows(rows: int) -> int:
    """``rows`` rounded up to a multiple of ``ROW_MULTIPLE``."""
    return rows + (-rows) % ROW_MULTIPLE


class Capture(NamedTuple):
    """One training-mode call of a trainable layer, with the tensor versions it saw."""

    name: str
    module: nn.Module
    input: torch.Tensor  # detached; shares the version counter with the layer's real input
    output: torch.Tensor
    input_version: int
    output_version: int


class OutputGradientEngine:
    """Fills ``p.grad_sample`` for every trainable parameter of ``model`` from one backward pass.

    Args:
        model: the model (plain or wrapped by opacus's ``GradSampleModuleNoOp``). Every trainable
            layer must have a registered opacus rule (checked).
        loss_reduction: "mean" or "sum", how the loss passed to ``backward`` reduced the batch;
            must equal the ``DPOptimizer``'s.
    """

    def __init__(self, model: nn.Module, *, loss_reduction: str = "mean"):
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        check_exact_per_sample_gradients(model)
        # The per-sample gradients are large and freed every step: without this glibc maps and
        # zeroes them afresh each time (reproduce.privacy.heap; process-wide, numbers unchanged).
        keep_freed_memory()
        self.loss_reduction = loss_reduction
        self.layers: list[tuple[str, nn.Module]] = [
            (name, m) for name, m in model.named_modules() if any(p.requires_grad for p in m.parameters(recurse=False))
        ]
        self._captured: list[Capture] = []
        self._rows: int | None = None  # the real samples of the batch ``forward`` padded (None: not padded)
        self._handles = [m.register_forward_hook(self._capture(name)) for name, m in self.layers]

    def _capture(self, name: str):
        def hook(module: nn.Module, inputs, output):
            if not (module.training and torch.is_grad_enabled()):
                return
            if not isinstance(output, torch.Tensor):
                raise ReproduceError(
                    f"layer '{name}' returns {type(output).__name__}, not a tensor; "
                    "the output-gradient engine supports single-tensor layers only"
                )
            if output.requires_grad:
                x = inputs[0]
                self._captured.append(Capture(name, module, x.detach(), output, x._version, output._version))

        return hook

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``model(x)`` computed on ``x`` padded with zero samples to ``padded_rows(len(x))`` rows; the
        padded rows' outputs are cut off, and the next ``backward`` drops their per-sample gradients.

        Exact: the loss never reads the padded rows, and every layer of a model the engine accepts
        treats each sample on its own (batch norm is refused), so the real samples' outputs and
        per-sample gradients are those of ``model(x)`` (up to the float rounding of other kernel
        shapes); the padded rows' output gradients are zero.
        """
        rows = x.shape[0]
        pad = padded_rows(rows) - rows
        self._rows = rows if pad else None
        if not pad:
            return model(x)
        # zero rows after the last sample; F.pad keeps the layout (K-view crops stay channels-last)
        return model(F.pad(x, (0, 0) * (x.dim() - 1) + (0, pad)))[:rows]

    def remove(self) -> None:
        """Detach the engine's hooks from the model."""
        for h in self._handles:
            h.remove()
        self._handles, self._captured = [], []

    def backward(self, loss: torch.Tensor) -> None:
        """Replace ``loss.backward()``: set ``p.grad_sample`` (per-sample gradients of the per-sample losses).

        Uses every layer call captured since the last ``backward`` whose output the loss depends on
        (calls that did not lead to this loss are dropped). Like opacus, a second call before
        ``optimizer.step()`` (gradient accumulation) turns ``p.grad_sample`` into a list.
        """
        captured, self._captured = self._captured, []
        keep, self._rows = self._rows, None  # the real rows of a batch ``forward`` padded, else None
        if not captured:
            raise ReproduceError(
                "no trainable layer ran in training mode with gradients enabled "
                "since the last backward; call model.train() and run the forward first"
            )
        for name, _, x, out, x_version, out_version in captured:
            # The rules read the captured tensors after the whole forward: an in-place change since the
            # layer ran would give silently wrong (e.g. all-zero) per-sample gradients. detach() shares
            # the version counter, so both are checked (autograd would not: no weight gradient is taken).
            for what, t, version in (("input", x, x_version), ("output", out, out_version)):
                if t._version != version:
                    raise ReproduceError(
                        f"the {what} of layer '{name}' was modified in place after the layer "
                        "ran (e.g. ReLU(inplace=True) or x.add_()); use the out-of-place operation"
                    )
        # A mean over n samples: the per-sample losses' gradients are n times the loss's. Scaling the
        # loss once (one scalar) replaces opacus's rescaling of every layer's output gradient, a full
        # read and write of every activation-sized gradient (measured ~15% of the conventional model's
        # DP step); layers that saw another batch size keep the per-layer rescaling.
        sizes = {c.input.shape[0] for c in captured}
        if keep is not None and sizes != {padded_rows(keep)}:
            raise ReproduceError(
                f"the engine padded a batch of {keep} samples to {padded_rows(keep)} rows, but "
                f"layers saw batches of {sorted(sizes)} rows; a model that changes the batch "
                "dimension cannot be padded: call the model directly, not engine.forward"
            )
        scale_loss = self.loss_reduction == "mean" and len(sizes) == 1 and 0 not in sizes
        if scale_loss:
            loss = loss * (keep or sizes.pop())
        grads = torch.autograd.grad(loss, [c.output for c in captured], allow_unused=True)
        per_sample: dict[nn.Parameter, torch.Tensor] = {}
        for (_name, module, x, *_), g in zip(captured, grads):
            if g is None:
                continue  # not on the loss's graph (e.g. an earlier forward without backward), as in opacus
            if x.shape[0] == 0:
                # An empty Poisson batch: no samples, so no per-sample gradients (some opacus rules,
                # e.g. nn.Conv2d's, return one sample for zero); DPOptimizer then adds noise only.
                result = {p: p.new_zeros((0, *p.shape)) for p in module.parameters(recurse=False) if p.requires_grad}
            else:
                if self.loss_reduction == "mean" and not scale_loss:
                    g = g * x.shape[0]
                # layout-safe: the rule sees NCHW-contiguous tensors (no copy when they already are)
                result = rule_for(type(module))(module, [x], g.detach())
            for p, gs in result.items():
                if keep is not None:
                    gs = gs[:keep]  # the padded rows' (zero) gradients
                # a layer that ran twice (shared weights) contributes the sum of its uses, as in opacus
                per_sample[p] = per_sample[p] + gs if p in per_sample else gs
        for p, gs in per_sample.items():
            if getattr(p, "grad_sample", None) is None:
                p.grad_sample = gs
            elif isinstance(p.grad_sample, list):
                p.grad_sample.append(gs)
            else:
                p.grad_sample = [p.grad_sample, gs]

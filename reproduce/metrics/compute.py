"""Training compute as a deterministic estimate: the dense multiply-adds of the model, times samples.

The follow-up paper's claim "more than 85% less computation time" is about compute; wall-clock time
(``run.json``) changes on every rerun and with the machine, so the versioned results carry this
estimate instead, and the measured seconds stay in each cell's ``run.json``:

    train_flops = 6 x (multiply-adds of one sample's forward pass) x samples seen

with 2 FLOPs per multiply-add and a backward pass costing twice the forward (the usual 3x). The
multiply-adds are those of every convolution (``nn.Conv2d``, and any layer that declares
``counts_as_convolution``: the expanded ``EquivariantConv2d`` filter) and linear layer, read off one forward pass; normalisation, activations, escnn's filter
expansion and DP-SGD's per-sample gradients are not counted. Samples seen = steps x the logical
batch size x the augmentation multiplicity: the expected batch under Poisson sampling, so the
estimate does not read the training data.
"""

from __future__ import annotations

import torch
from torch import nn

FLOPS_PER_MAC = 2
FORWARD_AND_BACKWARD = 3


def _macs_hook(totals: list[int]):
    def hook(module, inputs, output):
        if isinstance(module, nn.Linear):
            totals.append(module.in_features * module.out_features * (output.numel() // module.out_features))
        else:  # a 2D convolution: every output element is C_in/groups x kh x kw multiply-adds
            c_in = inputs[0].shape[1]
            kh, kw = (
                (module.kernel_size, module.kernel_size) if isinstance(module.kernel_size, int) else module.kernel_size
            )
            totals.append(output.numel() * (c_in // getattr(module, "groups", 1)) * kh * kw)

    return hook


def forward_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of convolutions and linear layers in one forward pass of one sample.

    Args:
        model: The model (its mode and weights are left as they were).
        input_shape: One sample's shape (C, H, W).
    """
    totals: list[int] = []
    handles = [
        m.register_forward_hook(_macs_hook(totals))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) or getattr(m, "counts_as_convolution", False)
    ]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return int(sum(totals))


def training_flops(
    model: nn.Module, *, input_shape: tuple[int, ...], steps: int, batch_size: int, multiplicity: int = 1
) -> float:
    """``6 x forward_macs x steps x batch_size x multiplicity`` (see the module docstring)."""
    return float(
        FLOPS_PER_MAC * FORWARD_AND_BACKWARD * forward_macs(model, input_shape) * steps * batch_size * multiplicity
    )

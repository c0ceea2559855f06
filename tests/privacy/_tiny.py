"""A 3-coordinate model (nn.Linear(2, 1)) whose per-sample gradients the tests set by hand.

Each sample's gradient is one row (w1, w2, b); ``run_logical_batch`` feeds a DP optimizer the
micro-batches of one logical batch as the trainer does under opacus's batch splitting (skip signal,
zero_grad, per-sample gradients, step), so ``p.grad`` holds the private gradient after the batch.
"""

from __future__ import annotations

import torch
from torch import nn

# Three samples with norms 5, 1 and 3.
G = torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.6, 0.8], [1.0, 2.0, 2.0]])


def tiny_model(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(2, 1)


def set_grad_samples(model: nn.Linear, rows: torch.Tensor) -> None:
    """Per-sample gradients ``rows`` [n, 3] into ``p.grad_sample`` (what the engine would fill)."""
    model.weight.grad_sample = rows[:, :2].reshape(len(rows), 1, 2).clone()
    model.bias.grad_sample = rows[:, 2:].reshape(len(rows), 1).clone()


def run_logical_batch(optimizer, model: nn.Linear, micro_batches: list[torch.Tensor]) -> None:
    """One logical batch split into ``micro_batches`` (each [n_k, 3]); the last one steps."""
    for k, rows in enumerate(micro_batches):
        optimizer.signal_skip_step(do_skip=k < len(micro_batches) - 1)
        optimizer.zero_grad(set_to_none=True)
        set_grad_samples(model, rows)
        optimizer.step()


def flat_grad(model: nn.Linear) -> torch.Tensor:
    return torch.cat([model.weight.grad.reshape(-1), model.bias.grad.reshape(-1)])


def flat_params(model: nn.Linear) -> torch.Tensor:
    return torch.cat([model.weight.detach().reshape(-1), model.bias.detach().reshape(-1)])

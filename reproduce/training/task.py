"""What a dataset's task means for training: input tensors, targets, loss and probabilities.

Tasks are MedMNIST's (``reproduce.data.base.Task``): multi-label tasks train one sigmoid per label
with binary cross-entropy, every other task one softmax with cross-entropy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def multi_label(task: str) -> bool:
    """Whether ``task`` has several binary labels per image (one sigmoid each)."""
    return task.startswith("multi-label")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float [N, C, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_targets(labels: np.ndarray, task: str) -> torch.Tensor:
    """Labels [N, L] -> class indices [N] (multi-class) or float targets [N, L] (multi-label)."""
    if multi_label(task):
        return torch.from_numpy(labels).float()
    return torch.from_numpy(labels[:, 0]).long()


def loss_fn(logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """The mean training loss of a batch: binary cross-entropy per label, or cross-entropy."""
    if multi_label(task):
        return F.binary_cross_entropy_with_logits(logits, y)
    return F.cross_entropy(logits, y)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor, *, task: str, batch_size: int) -> np.ndarray:
    """The model's probabilities on ``x`` in eval mode (sigmoids or softmax rows), float64 [N, C].

    Computed on the model's device (``x`` is moved there if it is not); read back once, at the end.
    """
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device))
        out.append(torch.sigmoid(logits) if multi_label(task) else logits.softmax(-1))
    model.train()
    return torch.cat(out).cpu().numpy().astype(np.float64)

"""Randomness of ``privacy.secure_mode``: the operating system's CSPRNG, never a seeded generator.

Opacus's secure mode draws from torchcsprng's ``/dev/urandom`` generator, which does not build for
the pinned torch; opacus's DPOptimizer given no generator draws from torch's default one, which the
trainer seeds with the cell's seed. Here every random bit of the DP mechanism (the Poisson sample and the Gaussian
noise) is read from ``os.urandom`` (Linux: getrandom(2)) and transformed in numpy: 53-bit uniform
doubles, Box-Muller Gaussians, and opacus's defence against floating-point attacks on the Gaussian
(each noise entry is the sum of four draws divided by 2; Holohan & Braghin 2021, section 5.1).
Nothing here has a state to save or a seed to set: a resumed secure run continues with fresh bytes.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader

# opacus's secure-mode noise: 2n Gaussians summed and scaled by 1/sqrt(2n), n = 2 (attack cost 2^159).
GAUSSIANS_PER_ENTRY = 4


def os_uniform(n: int) -> np.ndarray:
    """``n`` independent uniform doubles on [0, 1), each with 53 random bits from the OS.

    Args:
        n: How many to draw.

    Returns:
        float64 array of shape (n,), multiples of 2**-53.
    """
    raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    # The top 53 bits make every double k / 2**53 exactly and equally likely.
    return (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53


def os_standard_normal(n: int) -> np.ndarray:
    """``n`` independent N(0, 1) draws by Box-Muller from OS uniforms.

    Args:
        n: How many to draw.

    Returns:
        float64 array of shape (n,).
    """
    m = (n + 1) // 2
    u = os_uniform(2 * m)
    radius = np.sqrt(-2.0 * np.log1p(-u[:m]))  # 1 - u lies in (0, 1]: the log is finite
    angle = 2.0 * math.pi * u[m:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]


def os_gaussian_noise(std: float, reference: torch.Tensor) -> torch.Tensor:
    """Noise N(0, std^2) shaped like ``reference``, hardened as opacus's secure mode hardens it.

    The sum of four N(0, std^2) draws divided by 2 is N(0, std^2); summing makes the set of values
    the noise can take dense enough that an output no longer reveals the value it was added to.

    Args:
        std: Standard deviation of each entry (noise_multiplier * max_grad_norm).
        reference: Tensor whose shape, dtype and device the noise takes.

    Returns:
        A new tensor like ``reference``.
    """
    if std == 0:
        return torch.zeros_like(reference)
    n = reference.numel()
    total = os_standard_normal(n)
    for _ in range(GAUSSIANS_PER_ENTRY - 1):
        total += os_standard_normal(n)
    total *= std / math.sqrt(GAUSSIANS_PER_ENTRY)
    return torch.from_numpy(total).reshape(reference.shape).to(device=reference.device, dtype=reference.dtype)


def os_bernoulli_mask(n: int, p: float) -> np.ndarray:
    """``n`` independent Bernoulli(p) draws from the OS (exact to 2**-53, as opposed to float32's 2**-24).

    Args:
        n: How many to draw.
        p: Probability of True.

    Returns:
        bool array of shape (n,).
    """
    return os_uniform(n) < p


class SecurePoissonSampler(UniformWithReplacementSampler):
    """Opacus's Poisson sampler (each sample in each batch with probability q) drawing from the OS.

    A subclass so that opacus's ``BatchMemoryManager`` sizes and splits its batches as it does for
    the seeded sampler; ``generator`` stays None, there is none.
    """

    def __init__(self, *, num_samples: int, sample_rate: float, steps: int | None = None):
        super().__init__(num_samples=num_samples, sample_rate=sample_rate, generator=None, steps=steps)

    def __iter__(self):
        for _ in range(self.steps):
            yield np.flatnonzero(os_bernoulli_mask(self.num_samples, self.sample_rate)).tolist()


def secure_poisson_loader(loader: DataLoader, *, sample_rate: float) -> DataLoader:
    """``loader`` (an opacus ``DPDataLoader``) with its batches drawn by ``SecurePoissonSampler``.

    Keeps the loader's collate function, i.e. opacus's handling of empty batches.

    Args:
        loader: The Poisson loader to take the dataset and collate function from.
        sample_rate: q, the probability of each sample in each batch.

    Returns:
        A new DataLoader over the same dataset.
    """
    sampler = SecurePoissonSampler(num_samples=len(loader.dataset), sample_rate=sample_rate)
    return DataLoader(loader.dataset, batch_sampler=sampler, collate_fn=loader.collate_fn)


class SecureDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer with its Gaussian noise from ``os_gaussian_noise`` instead of a torch generator."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, generator=None, **kwargs):
        if generator is not None:
            raise ValueError("SecureDPOptimizer draws its noise from the OS and takes no generator")
        super().__init__(optimizer, generator=None, secure_mode=True, **kwargs)

    def add_noise(self) -> None:
        # opacus's add_noise with only the noise source replaced (opacus 1.6).
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = os_gaussian_noise(self.noise_multiplier * self.max_grad_norm, p.summed_grad)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)

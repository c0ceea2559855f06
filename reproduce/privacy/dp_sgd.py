"""DP-SGD from opacus's own parts, wired so that what is accounted is exactly what runs.

``PrivacyEngine.make_private`` derives q from ``1/len(loader)``, which differs from B/N whenever N
is not a multiple of B. We assemble the same components (GradSampleModule, DPOptimizer, the Poisson
DPDataLoader, an accountant hooked to every optimizer step) with one q = B/N throughout.

Per-sample gradients come from ``OutputGradientEngine`` (one backward pass to the layer outputs,
then opacus's registered rule per layer), not from ``GradSampleModule``'s hooks: the same rules and
the same clipped sum (tested), without the batch weight gradients and escnn basis-expansion
backward that hooks mode computes and throws away (bench/bench_per_sample_grads.py). Callers use
``engine.backward(loss)`` in place of ``loss.backward()``.
"""

from __future__ import annotations

import dataclasses

import torch
from opacus.accountants import create_accountant
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch import nn

from reproduce.privacy.accounting import calibrate_noise, poisson_steps_per_epoch
from reproduce.privacy.fast_engine import OutputGradientEngine


@dataclasses.dataclass
class PrivateTraining:
    model: nn.Module  # the caller's model, unwrapped; per-sample gradients through ``engine``
    engine: OutputGradientEngine
    optimizer: DPOptimizer
    loader: DPDataLoader
    accountant: object
    noise_multiplier: float
    sample_rate: float
    steps: int


def make_private(model: nn.Module, optimizer: torch.optim.Optimizer, dataset, *, batch_size: int,
                 epochs: int | None = None, steps: int | None = None, target_epsilon: float, delta: float, max_grad_norm: float,
                 accountant: str, seed: int, secure_mode: bool = False) -> PrivateTraining:
    """Wrap model/optimizer for DP-SGD with Poisson sampling at q = batch_size / len(dataset).

    Noise is calibrated for exactly ``steps`` optimizer steps (default: ``epochs`` full epochs of
    int(1/q) steps each); the caller must run exactly that many.
    """
    from reproduce.privacy.exactness import check_exact_per_sample_gradients
    check_exact_per_sample_gradients(model)

    n = len(dataset)
    sample_rate = batch_size / n
    if steps is None:
        steps = epochs * poisson_steps_per_epoch(sample_rate)
    sigma = calibrate_noise(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate,
                            steps=steps, accountant=accountant)
    # Separate generators: data order and noise each reproducible on their own.
    sampler_gen = torch.Generator().manual_seed(seed * 1_000_003 + 1)
    noise_gen = None if secure_mode else torch.Generator().manual_seed(seed * 1_000_003 + 2)
    loader = DPDataLoader(dataset, sample_rate=sample_rate, generator=sampler_gen)
    engine = OutputGradientEngine(model, loss_reduction="mean")  # also refuses layers without exact rules
    dp_optimizer = DPOptimizer(optimizer, noise_multiplier=sigma, max_grad_norm=max_grad_norm,
                               expected_batch_size=batch_size, loss_reduction="mean",
                               generator=noise_gen, secure_mode=secure_mode)
    acc = create_accountant(accountant)
    dp_optimizer.attach_step_hook(acc.get_optimizer_hook_fn(sample_rate=sample_rate))
    return PrivateTraining(model, engine, dp_optimizer, loader, acc, sigma, sample_rate, steps)

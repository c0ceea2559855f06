"""DP-SGD from opacus's own parts, wired so that what is accounted is exactly what runs.

``PrivacyEngine.make_private`` derives q from ``1/len(loader)``, which differs from B/N whenever N
is not a multiple of B. We assemble the same components (GradSampleModule, a DPOptimizer, the Poisson
DPDataLoader, an accountant hooked to every optimizer step) with one q = B/N throughout. The
DPOptimizer is ``ClippingDPOptimizer``: opacus's, with the clipping rule a parameter (flat clipping
is opacus's own, bit for bit).

Per-sample gradients come from ``OutputGradientEngine`` (one backward pass to the layer outputs,
then opacus's registered rule per layer), not from ``GradSampleModule``'s hooks: the same rules and
the same clipped sum (tested), without the batch weight gradients and escnn basis-expansion
backward that hooks mode computes and throws away (bench/bench_per_sample_grads.py). Callers use
``PrivateTraining.backward(loss)`` in place of ``loss.backward()``; ``per_sample_gradients="hooks"``
gives opacus's own ``GradSampleModule`` instead (same rules, same update; for cross-checks).

``make_private`` also returns the resolved ``Mechanism`` (``reproduce.records.privacy``), each value
read from the optimizer, sampler or accountant that uses it: what the privacy statement states.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from opacus import GradSampleModule
from opacus.accountants import create_accountant
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader

from reproduce.privacy.accounting import calibrate_noise, poisson_steps_per_epoch
from reproduce.privacy.clipped_optimizer import ClippingDPOptimizer
from reproduce.privacy.clipping import ClippingRule, FlatClipping
from reproduce.privacy.fast_engine import OutputGradientEngine
from reproduce.privacy.grad_samplers import make_registry_layout_safe
from reproduce.privacy.secure_rng import secure_poisson_loader
from reproduce.records.privacy import POISSON, Mechanism


@dataclasses.dataclass
class PrivateTraining:
    model: nn.Module  # what to call forward on: the caller's model, or opacus's GradSampleModule ("hooks")
    engine: OutputGradientEngine | None  # None in "hooks" mode
    optimizer: ClippingDPOptimizer
    loader: DataLoader  # opacus's seeded DPDataLoader, or secure_poisson_loader's in secure mode
    accountant: object
    mechanism: Mechanism  # what the optimizer, loader and accountant above were built with

    @property
    def sample_rate(self) -> float:
        """q of the Poisson sampler and the accountant."""
        return self.mechanism.sample_rate

    @property
    def steps(self) -> int:
        """The optimizer steps the noise is calibrated for."""
        return self.mechanism.steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output on a micro-batch; the engine runs it padded to a shape oneDNN has seen
        (``OutputGradientEngine.forward``), hooks mode as it is."""
        return self.model(x) if self.engine is None else self.engine.forward(self.model, x)

    def backward(self, loss: torch.Tensor) -> None:
        """Per-sample gradients of the per-sample losses into ``p.grad_sample`` (what DPOptimizer clips)."""
        if self.engine is not None:
            self.engine.backward(loss)
        else:
            loss.backward()


PER_SAMPLE_GRADIENTS = ("engine", "hooks")


def _parameters_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset,
    *,
    batch_size: int,
    epochs: int | None = None,
    steps: int | None = None,
    target_epsilon: float,
    delta: float,
    max_grad_norm: float,
    accountant: str,
    seed: int,
    secure_mode: bool = False,
    per_sample_gradients: str = "engine",
    clipping: ClippingRule | None = None,
    rescale_to_unit_norm: bool = False,
) -> PrivateTraining:
    """Wrap model/optimizer for DP-SGD with Poisson sampling at q = batch_size / len(dataset).

    Noise is calibrated for exactly ``steps`` optimizer steps (default: ``epochs`` full epochs of
    int(1/q) steps each); the caller must run exactly that many. ``per_sample_gradients``: "engine"
    (``OutputGradientEngine``) or "hooks" (opacus's ``GradSampleModule``); both refuse, by name, any
    layer without an exact rule and any batch norm, before anything else happens. ``secure_mode``
    draws the Poisson sample and the noise from the OS (``reproduce.privacy.secure_rng``), never
    from generators seeded with ``seed``. ``clipping``: the per-sample clipping rule
    (``reproduce.privacy.clipping``; default flat, opacus's). The noise multiplier calibrated for the
    target is the accounted one; under adaptive clipping the optimizer raises the gradient noise so
    that gradient and count together are accounted at it (Andrew et al., Theorem 1).
    ``rescale_to_unit_norm``: the optimizer sees the noised mean divided by C (post-processing).
    The returned ``PrivateTraining.mechanism`` holds what was resolved (``resolved_mechanism``).

    Device: the model's. The seeded noise is drawn by a generator on that device (on CUDA, Philox:
    other numbers than the CPU's, reproducible on the same GPU and versions); secure-mode noise is
    drawn on the host from ``os.urandom`` and copied to the device, one parameter-sized copy per
    parameter per step (there is no CUDA CSPRNG to draw it where it is used).
    """
    from reproduce.privacy.exactness import check_exact_per_sample_gradients

    if per_sample_gradients not in PER_SAMPLE_GRADIENTS:
        raise ValueError(f"per_sample_gradients must be one of {PER_SAMPLE_GRADIENTS}, got {per_sample_gradients!r}")
    check_exact_per_sample_gradients(model)

    n = len(dataset)
    sample_rate = batch_size / n
    if steps is None:
        steps = epochs * poisson_steps_per_epoch(sample_rate)
    sigma = calibrate_noise(
        target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
    )
    if secure_mode:
        # Poisson sample and noise from the OS CSPRNG: nothing derived from the seed.
        loader = secure_poisson_loader(DPDataLoader(dataset, sample_rate=sample_rate), sample_rate=sample_rate)
        noise_gen = None
    else:
        # Separate generators: data order and noise each reproducible on their own. The sampler's on
        # the CPU (it draws indices; the batch is gathered where the data is); the noise's where the
        # parameters are (opacus draws with ``reference.device``; a CPU one fails for CUDA tensors).
        sampler_gen = torch.Generator().manual_seed(seed * 1_000_003 + 1)
        noise_gen = torch.Generator(device=_parameters_device(model)).manual_seed(seed * 1_000_003 + 2)
        loader = DPDataLoader(dataset, sample_rate=sample_rate, generator=sampler_gen)
    if per_sample_gradients == "engine":
        engine, forward = OutputGradientEngine(model, loss_reduction="mean"), model
    else:
        make_registry_layout_safe()  # rules registered after import see contiguous tensors too
        engine, forward = None, GradSampleModule(model, batch_first=True, loss_reduction="mean")
    dp_optimizer = ClippingDPOptimizer(
        optimizer,
        clipping=clipping or FlatClipping(),
        noise_multiplier=sigma,
        max_grad_norm=max_grad_norm,
        expected_batch_size=batch_size,
        loss_reduction="mean",
        generator=noise_gen,
        secure_mode=secure_mode,
        rescale_to_unit_norm=rescale_to_unit_norm,
    )
    acc = create_accountant(accountant)
    dp_optimizer.attach_step_hook(acc.get_optimizer_hook_fn(sample_rate=sample_rate))
    mechanism = resolved_mechanism(dp_optimizer, loader, acc, target_epsilon=target_epsilon, delta=delta, steps=steps)
    return PrivateTraining(
        model=forward, engine=engine, optimizer=dp_optimizer, loader=loader, accountant=acc, mechanism=mechanism
    )


def resolved_mechanism(
    optimizer: ClippingDPOptimizer, loader: DataLoader, accountant, *, target_epsilon: float, delta: float, steps: int
) -> Mechanism:
    """The mechanism that ``optimizer``, ``loader`` and ``accountant`` run, read from them.

    Args:
        optimizer: The DP optimizer (noise multipliers, C, clipping rule, secure mode, rescaling).
        loader: The Poisson loader (q and N from its sampler).
        accountant: The opacus accountant hooked to ``optimizer`` (its name).
        target_epsilon: The epsilon the noise was calibrated for.
        delta: The delta of that calibration.
        steps: The steps it was calibrated for.

    Returns:
        The frozen ``Mechanism``; read at construction, so that a later change to the optimizer (a
        noiseless check, an adaptive C) does not move it.
    """
    sampler, rule = loader.batch_sampler, optimizer.clipping
    return Mechanism(
        accountant=accountant.mechanism(),
        target_epsilon=target_epsilon,
        delta=delta,
        noise_multiplier=optimizer.noise_multiplier,
        gradient_noise_multiplier=optimizer.gradient_noise_multiplier,
        sample_rate=sampler.sample_rate,
        steps=steps,
        max_grad_norm=optimizer.max_grad_norm,
        clipping=rule.name,
        clipping_parameters=rule_parameters(rule),
        rescale_to_unit_norm=optimizer.rescale_to_unit_norm,
        sampling=POISSON,
        secure_mode=optimizer.secure_mode,
        training_set_size=sampler.num_samples,
    )


def rule_parameters(rule: ClippingRule) -> tuple[tuple[str, float], ...]:
    """A clipping rule's keyword arguments, ``(name, value)`` in its signature's order, as the rule
    holds them (each rule of ``reproduce.privacy.clipping`` keeps its arguments under their names)."""
    names = [n for n, p in inspect.signature(type(rule)).parameters.items() if p.kind is p.KEYWORD_ONLY]
    return tuple((name, getattr(rule, name)) for name in names)

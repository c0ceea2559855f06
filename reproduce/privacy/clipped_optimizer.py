"""opacus's DPOptimizer with a pluggable clipping rule, the noise it really adds, and a step record.

``ClippingDPOptimizer`` is a drop-in for the ``DPOptimizer`` that ``reproduce.privacy.dp_sgd``
builds: same constructor keywords plus ``clipping`` (a ``reproduce.privacy.clipping`` rule), same
micro-batch protocol (``signal_skip_step``, ``p.summed_grad``, ``_is_last_step_skipped``, opacus's
``BatchMemoryManager``/``wrap_data_loader``), same accountant hook. It overrides only

- ``clip_and_accumulate``: the rule's factors instead of opacus's flat ones (the ``flat`` rule gives
  opacus's numbers bit for bit), and the rule sees every micro-batch's norms;
- ``add_noise``: gradient noise ``gradient_noise_multiplier * C`` and, for adaptive clipping, the
  count's noise ``N(0, sigma_b^2)``, from one source (the seeded generator, the OS in secure mode);
- ``scale_grad``: with ``rescale_to_unit_norm``, the noised mean is also divided by C (jax_privacy's
  option of that name; post-processing), so that the step size of SGD does not grow with an adaptive C;
- ``pre_step``: once per logical batch, after the noise and the accountant hook, hands DP-AdamBC
  the variance of the noise just added and lets the rule pick the next C.

``noise_multiplier`` is what the accountant hook reads, as in opacus: the accounted sigma. For
adaptive clipping it is sigma_eff of Andrew et al.'s Theorem 1, and the gradient noise is raised to
``gradient_noise_multiplier = (sigma_eff^-2 - (2 sigma_b)^-2)^(-1/2)``
(``reproduce.privacy.adaptive_accounting``); for the other rules the two are equal. So a trainer
calibrates sigma for its target epsilon exactly as today and passes it as ``noise_multiplier``.

Wiring (what ``make_private`` and the trainer would do)::

    rule = make_clipping_rule(name, **params)                  # study field: clipping rule + params
    inner = make_optimizer(opt_name, model.parameters(), ...)  # reproduce.privacy.optimizers
    opt = ClippingDPOptimizer(inner, clipping=rule, noise_multiplier=sigma, max_grad_norm=C0,
                              expected_batch_size=B, generator=noise_gen, secure_mode=secure)
    opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=q))   # accounts sigma
    # per micro-batch, unchanged: backward into p.grad_sample; opt.step(); opt.zero_grad()
    # before a logical batch whose diagnostics are logged: opt.record_diagnostics = True
    # after its last micro-batch: clipping_diagnostics(opt.last_step_record).as_row()
    # checkpoint: opt.clipping_state_dict() / opt.load_clipping_state_dict(...) beside the
    # inner optimizer's state_dict (adaptive C lives here, not in the inner optimizer)

The step record (``reproduce.metrics.clipping.StepRecord``) costs, on recorded steps only, one sum
of each micro-batch's per-sample gradients and copies of the noise and of the parameters.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _generate_noise, _mark_as_processed

from reproduce.errors import ReproduceError
from reproduce.metrics.clipping import StepRecord, flatten
from reproduce.privacy.adaptive_accounting import gradient_noise_multiplier
from reproduce.privacy.clipping import ClippingRule
from reproduce.privacy.optimizers import dp_noise_variance

NoiseSource = Callable[[float, torch.Tensor], torch.Tensor]


class _Accumulator:
    """What a recorded logical step gathers across its micro-batches before the noise."""

    def __init__(self):
        self.norms: list[torch.Tensor] = []
        self.unclipped: list[torch.Tensor] | None = None
        self.noise: list[torch.Tensor] = []

    def add_micro_batch(self, norms: torch.Tensor, grad_samples: list[torch.Tensor]) -> None:
        self.norms.append(norms.detach().double().cpu())
        sums = [g.sum(dim=0) for g in grad_samples]
        self.unclipped = sums if self.unclipped is None else [a + b for a, b in zip(self.unclipped, sums)]


class ClippingDPOptimizer(DPOptimizer):
    """DPOptimizer clipping by ``clipping`` (see the module docstring).

    Args:
        optimizer: The inner optimizer (sees the noised average; DP-AdamBC also gets its noise variance).
        clipping: The clipping rule.
        noise_multiplier: The accounted noise multiplier (sigma_eff for adaptive clipping).
        max_grad_norm: C (adaptive clipping: its initial value).
        expected_batch_size: B = q N, the divisor of the noised sum.
        loss_reduction: opacus's; the suite uses "mean".
        generator: Seeded torch generator of the noise (None: torch's default one).
        secure_mode: Draw all noise from the OS (``reproduce.privacy.secure_rng``); no generator then.
        noise_source: ``(std, reference) -> noise like reference``, replacing both of the above.
        record_diagnostics: Record a ``StepRecord`` of each logical step that starts while it is True.
        rescale_to_unit_norm: Divide the noised mean by C before the inner optimizer sees it.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        clipping: ClippingRule,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        loss_reduction: str = "mean",
        generator=None,
        secure_mode: bool = False,
        noise_source: NoiseSource | None = None,
        record_diagnostics: bool = False,
        rescale_to_unit_norm: bool = False,
    ):
        if secure_mode and (generator is not None or noise_source is not None):
            raise ReproduceError("secure mode draws its noise from the OS and takes no generator or noise source")
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction=loss_reduction,
            generator=generator,
            secure_mode=False,
        )
        self.clipping = clipping
        self.secure_mode = secure_mode
        self.rescale_to_unit_norm = rescale_to_unit_norm
        self.gradient_noise_multiplier  # noqa: B018 - the property refuses a count noise too small for the budget, now
        if noise_source is None and secure_mode:
            from reproduce.privacy.secure_rng import os_gaussian_noise

            noise_source = os_gaussian_noise
        self._noise_source = noise_source
        self.record_diagnostics = record_diagnostics
        self.last_step_record: StepRecord | None = None
        self.applied_max_grad_norm: float | None = None  # the C of the last completed logical step
        self._acc: _Accumulator | None = None
        self._count_noise = 0.0

    @property
    def gradient_noise_multiplier(self) -> float:
        """sigma_grad: ``noise_multiplier`` itself, or under a noised count the Theorem 1 split of it.

        Derived on every read, so that setting ``noise_multiplier`` (e.g. to 0, for a noiseless
        check) sets the gradient noise too."""
        sigma_b = self.clipping.count_noise_std
        if sigma_b > 0 and self.noise_multiplier > 0:
            return gradient_noise_multiplier(effective_noise_multiplier=self.noise_multiplier, count_noise_std=sigma_b)
        return self.noise_multiplier

    def _noise(self, std: float, reference: torch.Tensor) -> torch.Tensor:
        if self._noise_source is not None:
            return self._noise_source(std, reference)
        # opacus's own draw, so that the flat rule reproduces DPOptimizer's noise exactly.
        return _generate_noise(std=std, reference=reference, generator=self.generator, secure_mode=False)

    def clip_and_accumulate(self) -> None:
        grad_samples = self.grad_samples
        if len(grad_samples[0]) == 0:
            norms = torch.zeros((0,), device=grad_samples[0].device)  # an empty Poisson batch
        else:
            per_param = [g.reshape(len(g), -1).norm(2, dim=-1) for g in grad_samples]
            per_param = [n.to(per_param[0].device) for n in per_param]
            norms = torch.stack(per_param, dim=1).norm(2, dim=1)
        factors = self.clipping.clip_factors(norms, self.max_grad_norm)
        self.clipping.observe(norms, self.max_grad_norm)
        if self._acc is None and self.record_diagnostics:
            self._acc = _Accumulator()
        if self._acc is not None:
            self._acc.add_micro_batch(norms, [g.to(p.dtype) for p, g in zip(self.params, grad_samples)])
        for p, grad_sample in zip(self.params, grad_samples):
            _check_processed_flag(p.grad_sample)
            grad_sample = grad_sample.to(p.dtype)
            grad = torch.einsum("i,i...", factors.to(grad_sample.device).to(p.dtype), grad_sample)
            if p.summed_grad is not None:
                p.summed_grad += grad
            else:
                p.summed_grad = grad
            _mark_as_processed(p.grad_sample)

    def add_noise(self) -> None:
        std = self.gradient_noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = self._noise(std, p.summed_grad)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)
            if self._acc is not None:
                self._acc.noise.append(noise.detach().clone())
        # The count's noise after the gradients' (opacus's AdaClip order); none is drawn for other rules.
        sigma_b = self.clipping.count_noise_std
        if sigma_b > 0:
            count = torch.zeros((), dtype=torch.float64, device=self.params[0].device)
            self._count_noise = float(self._noise(sigma_b, count))

    def scale_grad(self) -> None:
        # opacus's division, with its divisor read once: opacus reads ``accumulated_iterations`` (a
        # pass over every parameter) once per parameter, O(P^2) Python per step (~0.5 ms for the
        # conventional ResNet-9's 30 tensors); the same numbers bit for bit.
        if self.loss_reduction == "mean":
            divisor = self.expected_batch_size * self.accumulated_iterations
            for p in self.params:
                p.grad /= divisor
        if self.rescale_to_unit_norm:
            for p in self.params:
                p.grad /= self.max_grad_norm

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool:
        stepped = super().pre_step(closure)
        if stepped and self.params:  # (no parameters: opacus steps as a plain optimizer)
            # The noise just added, per coordinate of the average the inner optimizer sees.
            divisor = self.expected_batch_size * self.accumulated_iterations
            if hasattr(self.original_optimizer, "set_noise_variance"):
                # (rescaled by 1 / C, the noise's std in the mean is sigma / B)
                self.original_optimizer.set_noise_variance(
                    dp_noise_variance(
                        noise_multiplier=self.gradient_noise_multiplier,
                        max_grad_norm=1.0 if self.rescale_to_unit_norm else self.max_grad_norm,
                        expected_batch_size=divisor,
                    )
                )
            self.applied_max_grad_norm = self.max_grad_norm
            self.max_grad_norm = self.clipping.next_max_grad_norm(
                self.max_grad_norm, count_noise=self._count_noise, expected_batch_size=self.expected_batch_size
            )
        return stepped

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if closure is not None:
            with torch.enable_grad():
                closure()
        if not self.pre_step():
            return None
        acc, self._acc = self._acc, None
        before = [p.detach().clone() for p in self.params] if acc is not None else None
        out = self.original_optimizer.step()
        self.last_step_record = None  # never a stale record of an earlier step
        if acc is not None:
            self.last_step_record = StepRecord(
                norms=torch.cat(acc.norms),
                unclipped_sum=flatten(acc.unclipped),
                clipped_sum=flatten([p.summed_grad for p in self.params]),
                noise=flatten(acc.noise),
                descent=flatten([b - p.detach() for b, p in zip(before, self.params)]),
                max_grad_norm=self.applied_max_grad_norm,
            )
        return out

    def clipping_state_dict(self) -> dict[str, Any]:
        """C and the rule's state: what a checkpoint needs beyond the inner optimizer's state_dict."""
        return {"rule": self.clipping.name, "max_grad_norm": self.max_grad_norm, "state": self.clipping.state_dict()}

    def load_clipping_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``clipping_state_dict``'s output (refuses another rule's)."""
        if state["rule"] != self.clipping.name:
            raise ReproduceError(
                f"checkpoint was written with clipping rule {state['rule']!r}, this run uses {self.clipping.name!r}"
            )
        self.max_grad_norm = float(state["max_grad_norm"])
        self.clipping.load_state_dict(state["state"])

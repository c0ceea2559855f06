"""Optimisers and clipping rules as study settings, wired through the trainers: what the study
names is what runs, is accounted, is stated, is diagnosed and is checkpointed."""

from __future__ import annotations

import copy

import pytest
import torch

from reproduce.data.stand_in import stand_in
from reproduce.metrics.clipping import DIAGNOSTIC_KEYS
from reproduce.models import build_cell_model
from reproduce.privacy.accounting import epsilon_for
from reproduce.privacy.adaptive_accounting import adaptive_epsilon, effective_noise_multiplier
from reproduce.privacy.clipping import AdaptiveQuantileClipping, AutomaticClipping, FlatClipping
from reproduce.privacy.optimizers import DPAdamBC, dp_noise_variance
from reproduce.training.cell import run_cell, training_set
from reproduce.training.plain import PlainTrainer
from reproduce.training.private import PrivateTrainer
from tests.conftest import tiny_study

FLAT, SGD = {"rule": "flat"}, {"name": "sgd", "lr": 0.1}


def _study(*, epsilon=8, clipping=FLAT, optimizer=SGD, C=1.0, length=None):
    """One cell on bloodmnist's stand-in: ``clipping`` and ``optimizer`` as the study names them, 5 steps
    unless ``length`` says otherwise (``{"epochs": 2}``)."""
    return tiny_study(
        name="optimisers",
        model={"widths": [2, 2, 4]},
        privacy={"max_grad_norm": C, "clipping": clipping},
        training={
            "optimizer": {"momentum": None, **optimizer},
            "batch_size": 8,
            "physical_batch_size": 4,
            "epochs": None,
            **(length or {"steps": 5}),
            "max_train_samples": 64,
            "log_every": 2,
        },
        dataset="bloodmnist",
        epsilon=epsilon,
    )


def _cell(**kw):
    (cell,) = _study(**kw).cells()
    return cell


def _trainer(cell):
    splits = stand_in(cell.dataset, size=28, seed=0)
    model = build_cell_model(cell, in_channels=splits.info.n_channels, num_classes=splits.info.num_classes)
    train_set = training_set(splits, max_samples=cell.study.training.max_train_samples, task=splits.info.task)
    kind = PrivateTrainer if cell.private else PlainTrainer
    return kind.for_cell(cell, model, train_set, task=splits.info.task), model


def _run(cell):
    return run_cell(cell, data_root=None, progress=False, splits=stand_in(cell.dataset, size=28, seed=0))


@pytest.mark.parametrize(
    "clipping,rule",
    [
        (FLAT, FlatClipping),
        ({"rule": "automatic", "gamma": 0.05}, AutomaticClipping),
        ({"rule": "adaptive"}, AdaptiveQuantileClipping),
    ],
    ids=["flat", "automatic", "adaptive"],
)
@pytest.mark.parametrize(
    "optimizer,inner",
    [
        ({"name": "sgd", "lr": 0.1, "momentum": 0.9}, torch.optim.SGD),
        ({"name": "adam", "lr": 0.01}, torch.optim.Adam),
        ({"name": "dp_adambc", "lr": 0.01, "gamma_prime": 1.0e-7}, DPAdamBC),
    ],
    ids=["sgd", "adam", "dp_adambc"],
)
def test_the_study_chooses_the_clipping_rule_and_the_optimizer(clipping, rule, optimizer, inner):
    trainer, _ = _trainer(_cell(clipping=clipping, optimizer=optimizer))
    assert type(trainer.optimizer.clipping) is rule
    assert type(trainer.optimizer.original_optimizer) is inner


def test_rule_parameters_reach_the_rule():
    automatic, _ = _trainer(_cell(clipping={"rule": "automatic", "gamma": 0.05}))
    assert automatic.optimizer.clipping.gamma == 0.05
    adaptive, _ = _trainer(_cell(clipping={"rule": "adaptive", "target_quantile": 0.7, "clip_learning_rate": 0.3}))
    rule = adaptive.optimizer.clipping
    # count noise std defaults to the expected batch size / 20 (Andrew et al.)
    assert (rule.target_quantile, rule.learning_rate, rule.count_noise_std) == (0.7, 0.3, 8 / 20)


def test_adaptive_cell_is_accounted_at_theorem_1s_joint_noise_and_says_so():
    cell = _cell(clipping={"rule": "adaptive", "count_noise_std": 0.8}, C=0.05, length={"epochs": 2})
    result = _run(cell)
    p = result.privacy
    # independent of the optimizer's accountant: the RDP accountant at sigma_eff for the steps that ran
    want = adaptive_epsilon(
        gradient_noise_multiplier=p.gradient_noise_multiplier,
        count_noise_std=0.8,
        delta=1e-5,
        sample_rate=8 / 64,
        steps=result.metrics["steps"],
        accountant="rdp",
    )
    assert result.metrics["epsilon"] == pytest.approx(want, rel=1e-9)
    assert result.metrics["epsilon"] <= 8
    assert p.noise_multiplier == pytest.approx(
        effective_noise_multiplier(gradient_noise_multiplier=p.gradient_noise_multiplier, count_noise_std=0.8),
        rel=1e-12,
    )
    # the count costs budget: accounting the gradient noise alone would claim a smaller epsilon
    alone = epsilon_for(
        noise_multiplier=p.gradient_noise_multiplier,
        delta=1e-5,
        sample_rate=8 / 64,
        steps=result.metrics["steps"],
        accountant="rdp",
    )
    assert alone < result.metrics["epsilon"] - 0.1
    assert "adaptive norm C_t" in result.statement and "Theorem 1" in result.statement
    assert "noised with std 0.8" in result.statement
    # C started at 0.05, far below the per-sample norms: it grows, step after step
    norms = [s.diagnostics["max_grad_norm"] for s in result.steps]
    assert norms[0] == 0.05 and all(b > a for a, b in zip(norms, norms[1:]))


def test_automatic_and_flat_statements_name_their_rule():
    automatic = _run(_cell(clipping={"rule": "automatic", "gamma": 0.05}))
    assert "automatic per-sample clipping g C / (||g|| + 0.05) with C=1" in automatic.statement
    flat = _run(_cell())
    assert "per-sample clipping to 1, Gaussian noise multiplier" in flat.statement
    assert flat.privacy.clipping is None and automatic.privacy.clipping == "automatic"


def test_dp_adambc_is_told_the_variance_of_the_noise_each_step_adds():
    trainer, _ = _trainer(_cell(clipping={"rule": "adaptive"}, optimizer={"name": "dp_adambc", "lr": 0.01}, C=0.1))
    opt = trainer.optimizer
    seen = []
    for x, y in trainer.batches():
        trainer.forward_backward(x, y)
        C = opt.max_grad_norm
        if trainer.step():
            seen.append((C, opt.original_optimizer.param_groups[0]["noise_variance"]))
        if len(seen) == 3:
            break
    for C, phi in seen:  # (sigma_grad C_t / B)^2 with the C that step clipped to
        assert phi == pytest.approx(
            dp_noise_variance(noise_multiplier=opt.gradient_noise_multiplier, max_grad_norm=C, expected_batch_size=8),
            rel=1e-12,
        )
    assert len({C for C, _ in seen}) == 3  # C moved between the steps


def test_logged_steps_carry_the_diagnostics_private_all_non_private_the_update_cosine():
    private = _run(_cell(length={"steps": 5}))
    assert [s.step for s in private.steps] == [1, 2, 4]
    for s in private.steps:
        assert tuple(s.diagnostics) == DIAGNOSTIC_KEYS
        assert s.diagnostics["max_grad_norm"] == 1.0
    plain = _run(_cell(epsilon="non-private", optimizer=SGD))
    # plain SGD without momentum steps along the gradient: cosine 1 (float64 rounding aside)
    assert [tuple(s.diagnostics) for s in plain.steps] == [("update_cosine",)] * len(plain.steps)
    assert all(s.diagnostics["update_cosine"] == pytest.approx(1.0, abs=1e-9) for s in plain.steps)
    momentum = _run(_cell(epsilon="non-private", optimizer={**SGD, "momentum": 0.9}))
    cosines = [s.diagnostics["update_cosine"] for s in momentum.steps]
    # the first momentum step is the gradient itself; later ones carry earlier gradients
    assert cosines[0] == pytest.approx(1.0, abs=1e-9) and all(c < 0.999 for c in cosines[1:])


def test_only_the_logged_steps_are_recorded():
    trainer, _ = _trainer(_cell())
    recorded = []
    trainer.record_next_step(False)
    for x, y in trainer.batches():
        trainer.forward_backward(x, y)
        if trainer.step():
            recorded.append(trainer.step_diagnostics() is not None)
            trainer.record_next_step(len(recorded) % 2 == 1)  # record every second step
    assert recorded == [False, True, False, True, False, True, False, True][: len(recorded)]


def test_adaptive_dp_adambc_resumes_bit_identically():
    cell = _cell(
        clipping={"rule": "adaptive"}, optimizer={"name": "dp_adambc", "lr": 0.01}, C=0.1, length={"epochs": 2}
    )

    def epoch(trainer):
        for x, y in trainer.batches():
            trainer.forward_backward(x, y)
            trainer.step()

    trainer, model = _trainer(cell)
    epoch(trainer)
    saved = copy.deepcopy((model.state_dict(), trainer.state()))
    assert trainer.optimizer.max_grad_norm != 0.1  # C has moved: its state matters
    epoch(trainer)
    other, other_model = _trainer(cell)
    other_model.load_state_dict(saved[0])
    other.load_state(saved[1])
    epoch(other)
    assert other.optimizer.max_grad_norm == trainer.optimizer.max_grad_norm
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other_model.parameters()))


def test_rescaling_to_unit_norm_divides_the_noised_mean_by_C_and_tells_dp_adambc():
    def first_update(clipping, optimizer=None):
        optimizer = optimizer or {"name": "sgd", "lr": 1.0}
        trainer, model = _trainer(_cell(clipping=clipping, optimizer=optimizer, C=0.5))
        trainer.optimizer.noise_multiplier = 0.0  # compare the clipped means themselves
        before = [p.detach().clone() for p in model.parameters()]
        for x, y in trainer.batches():
            trainer.forward_backward(x, y)
            if trainer.step():
                break
        return trainer, [b - p.detach() for b, p in zip(before, model.parameters())]

    _, plain = first_update(FLAT)
    _, rescaled = first_update({**FLAT, "rescale_to_unit_norm": True})
    assert any(float(d.abs().max()) > 0 for d in plain)
    for a, b in zip(plain, rescaled):
        torch.testing.assert_close(b, a / 0.5, rtol=1e-4, atol=1e-7)  # float32 weights
    trainer, _ = _trainer(
        _cell(clipping={**FLAT, "rescale_to_unit_norm": True}, optimizer={"name": "dp_adambc", "lr": 0.01}, C=0.5)
    )
    for x, y in trainer.batches():
        trainer.forward_backward(x, y)
        if trainer.step():
            break
    sigma = trainer.optimizer.gradient_noise_multiplier
    assert trainer.optimizer.original_optimizer.param_groups[0]["noise_variance"] == pytest.approx((sigma / 8) ** 2)

"""Audited cells through the real trainer: canaries join the training set and its N, gradient
canaries reach the clipped sum as samples of their own, and the measured bound tells a correct
mechanism from a broken one.

The broken mechanisms are test-only patches (monkeypatch on the optimizer's noise and the flat
clipping rule), never study options. One tiny study: the conventional model at 4-8-8 channels on
256 embedded images plus 256 canaries, 8 epochs of about 6 Poisson steps, epsilon 1.
Measured: the correct mechanism's bound 0 (seeds 0-3), without noise 3.29 (128 of 128 guesses right), without
clipping 1.78 (canaries of norm 100).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reproduce.models import build_cell_model
from reproduce.privacy.clipped_optimizer import ClippingDPOptimizer
from reproduce.privacy.clipping import FlatClipping
from reproduce.training.audit import CellAudit
from reproduce.training.cell import run_cell, training_records, training_set, write_cell
from reproduce.training.plain import PlainTrainer
from reproduce.training.private import PrivateTrainer
from tests.conftest import REPO, tiny_study

EPSILON = 1


def tiny(kind="gradient", epsilon=EPSILON, seeds=(0,), gradient_norm=10.0, *, audited=True):
    """The tiny study at 8 epochs with studies/ci.yaml's learning rates, audited with 256 ``kind`` canaries."""
    audit = {"canaries": 256, "kind": kind, "gradient_norm": gradient_norm} if audited else None
    return tiny_study(
        name="audit_tiny",
        audit=audit,
        epsilon=epsilon,
        seed=seeds,
        training={"optimizer": {"lr": 0.05}, "dp_optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9}, "epochs": 8},
    )


def audited(cell, data_root):
    result = run_cell(cell, data_root=data_root, progress=False)
    return result, result.audit


@pytest.fixture(scope="module")
def data_root():
    return REPO / "data"


def test_audited_cells_have_their_own_ids_and_config():
    cell = tiny().cells()[0]
    assert cell.audited and cell.id == "embedded-e-1-1-0-audit"
    assert cell.config()["audit"]["canaries"] == 256
    plain = tiny(audited=False)
    assert not plain.cells()[0].audited and plain.cells()[0].id == "embedded-e-1-1-0"


def _trainer(cell, data_root, kind, trainer_class=PrivateTrainer):
    from reproduce.data import load_dataset

    splits = load_dataset(cell.dataset, root=data_root, options=cell.study.data)
    torch.manual_seed(cell.seed)
    model = build_cell_model(cell, in_channels=3, num_classes=splits.info.num_classes)
    audit = CellAudit.prepare(
        cell,
        *training_records(splits, max_samples=256),
        task=splits.info.task,
        num_classes=splits.info.num_classes,
        num_params=sum(p.numel() for p in model.parameters()),
    )
    train_set = training_set(splits, max_samples=256, task=splits.info.task, audit=audit)
    params = [p for p in model.parameters() if p.requires_grad]
    trainer = trainer_class.for_cell(cell, model, train_set, task=splits.info.task, canaries=audit.gradients(params))
    return audit, train_set, trainer


def test_included_canaries_are_training_records_counted_in_n(data_root):
    for kind in ("input", "gradient"):
        cell = tiny(kind).cells()[0]
        audit, train_set, trainer = _trainer(cell, data_root, kind)
        k = int(audit.included.sum())
        assert 0 < k < 256 and len(train_set) == 256 + k
        # q = B / N with the canaries in N: the sampler and the accountant see them as records.
        assert trainer.dp.sample_rate == pytest.approx(64 / (256 + k))
        if kind == "input":  # the included canaries' records, exactly, after the real ones
            x = train_set.tensors[0][256:]
            from reproduce.training.task import to_tensor

            assert torch.equal(x, to_tensor(audit.input.images[audit.included]))
            assert len(train_set.tensors) == 2
        else:  # placeholders naming their canary; real rows -1
            ids = train_set.tensors[2]
            assert (ids[:256] == -1).all() and ids[256:].tolist() == np.flatnonzero(audit.included).tolist()


def test_gradient_canaries_are_the_last_per_sample_gradients_before_clipping(data_root):
    cell = tiny().cells()[0]
    audit, _, trainer = _trainer(cell, data_root, "gradient")
    for x, y in trainer.batches():
        pending = list(trainer.canaries._pending)
        trainer.forward_backward(x, y)
        rows = {p.grad_sample.shape[0] for p in trainer.params}
        assert rows == {len(x) + len(pending)}, "every parameter has one row per real sample and canary"
        if pending:
            break
        trainer.step()
    assert pending, "no micro-batch drew a canary"
    flat = torch.cat([p.grad_sample.reshape(p.grad_sample.shape[0], -1) for p in trainer.params], dim=1)
    expected = np.stack([audit.gradient.gradient(i, norm=10.0) for i in pending])
    # The model never saw the placeholders: their rows are exactly the canaries' gradients.
    np.testing.assert_array_equal(flat[len(x) :].numpy(), expected)
    assert np.allclose(np.linalg.norm(expected, axis=1), 10.0)


def test_non_private_control_adds_canary_gradients_to_the_batch_mean(data_root):
    cell = tiny(epsilon="non-private").cells()[0]
    audit, _, trainer = _trainer(cell, data_root, "gradient", PlainTrainer)
    params = trainer.params
    x, y = next(iter(trainer.batches()))
    pending = list(trainer.canaries._pending)
    assert pending and len(x) + len(pending) == 64
    trainer.forward_backward(x, y)
    with_canaries = torch.cat([p.grad.reshape(-1) for p in params])
    trainer.canaries._pending = []
    trainer.forward_backward(x, y)
    real_only = torch.cat([p.grad.reshape(-1) for p in params])
    canary_sum = torch.from_numpy(np.stack([audit.gradient.gradient(i, norm=10.0) for i in pending]).sum(0))
    expected = (real_only * len(x) + canary_sum) / 64
    torch.testing.assert_close(with_canaries, expected, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def honest(data_root):
    """The correct mechanism's (result, audit) for seeds 0, 1, 2."""
    return [audited(cell, data_root) for cell in tiny(seeds=range(3)).cells()]


@pytest.mark.slow
def test_correct_mechanism_never_exceeds_the_accountant(honest):
    bounds = []
    for result, audit in honest:
        assert result.privacy.training_set_size == 256 + audit.included
        assert result.privacy.audit_included == audit.included and "Audited run" in result.statement
        assert not audit.violates(result.metrics["epsilon"])
        bounds.append(audit.epsilon_lower)
    assert max(bounds) <= EPSILON, bounds


@pytest.mark.slow
def test_without_noise_the_bound_breaks_the_claim(data_root, honest, monkeypatch):
    cell, (_, honest) = tiny().cells()[0], honest[0]
    monkeypatch.setattr(ClippingDPOptimizer, "_noise", lambda self, std, reference: torch.zeros_like(reference))
    result, broken = audited(cell, data_root)
    # 256 canaries can show at most ~4.4; without noise the audit gets near it, far above epsilon 1.
    assert broken.violates(result.metrics["epsilon"]) and broken.epsilon_lower > 3 * EPSILON, broken
    assert broken.epsilon_lower > honest.epsilon_lower + 2


@pytest.mark.slow
def test_without_clipping_the_bound_rises(data_root, honest, monkeypatch):
    _, honest = honest[0]
    # Canaries of norm 100 (the honest run's 10 clip to the same unit gradient): unclipped real
    # gradients swamp norm-10 canaries, whose bound without clipping is 0.24-1.45 over seeds 0-3 and
    # moves with the last bits of training (seed 0: 1.45 before the engine padded micro-batches, 0.51
    # after); norm 100 gives 1.78, 1.93, 0.90, 1.26.
    cell = tiny(gradient_norm=100.0).cells()[0]
    monkeypatch.setattr(FlatClipping, "clip_factors", lambda self, norms, max_grad_norm: torch.ones_like(norms))
    result, broken = audited(cell, data_root)
    # The canaries' norm 100 passes unclipped against noise calibrated for norm 1.
    assert broken.epsilon_lower > honest.epsilon_lower + 1 and broken.violates(result.metrics["epsilon"]), broken


@pytest.mark.slow
def test_audit_is_written_and_read_back(data_root, tmp_path):
    cell = tiny("input").cells()[0]
    result, audit = audited(cell, data_root)
    write_cell(result, tmp_path)
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["audit"]["kind"] == "input" and record["audit"]["canary"] == "mislabeled"
    assert set(record["audit"]) >= {"canaries", "included", "guesses", "correct", "epsilon_lower", "confidence"}
    assert json.loads((tmp_path / "metrics.json").read_text())["audit_epsilon_lower"] == audit.epsilon_lower
    assert "audit.*" in record["privacy"]["unnoised_releases"]
    from reproduce.records.result import read_result

    assert read_result(tmp_path / "result.json").audit == audit


@pytest.mark.slow
def test_a_resumed_audited_cell_audits_from_the_initial_weights(data_root, tmp_path, honest):
    """The white-box scores measure the move from the initial weights, also when the run resumed."""
    cell, (first, _) = tiny().cells()[0], honest[0]
    checkpoint = tmp_path / "checkpoint.pt"
    run_cell(cell, data_root=data_root, progress=False, checkpoint=checkpoint)
    # Resumes after the last epoch: trains nothing, restores the final weights, audits again.
    again = run_cell(cell, data_root=data_root, progress=False, checkpoint=checkpoint)
    assert again.audit == first.audit and again.metrics == first.metrics

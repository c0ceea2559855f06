"""Train one grid cell (DP-SGD or non-private); write its metrics, privacy statement and provenance.

``reproduce train STUDY --cell ID`` (``python -m reproduce train ...``, the DVC stage command) runs
``run_cell`` and ``write_cell``; tests call ``run_cell`` directly. ``run_cell`` composes
``reproduce.training``: the cell's model, its trainer (private or plain: the only place that asks),
the one loop, evaluation and the typed result.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from reproduce.atomic import write_json_atomic
from reproduce.audit import parameter_vector
from reproduce.data import load_dataset
from reproduce.data.base import Splits
from reproduce.device import configure_determinism, device_facts, requested_device, resident, resolve_device
from reproduce.metrics.compute import training_flops
from reproduce.models import build_cell_model, count_parameters
from reproduce.privacy.heap import keep_freed_memory
from reproduce.records.privacy import PrivacyStatement
from reproduce.records.provenance import DataProvenance, Provenance, run_record, versions
from reproduce.records.result import CellResult, KeptWeights
from reproduce.study import Cell, study_hash
from reproduce.study.files import study_file
from reproduce.training.audit import CellAudit
from reproduce.training.checkpoint import load_checkpoint, save_checkpoint
from reproduce.training.ema import EMA
from reproduce.training.evaluate import evaluate
from reproduce.training.loop import train
from reproduce.training.plain import PlainTrainer
from reproduce.training.private import PrivateTrainer
from reproduce.training.state import TrainingState, checkpoint_key
from reproduce.training.task import loss_fn, predict_proba, to_targets, to_tensor
from reproduce.training.tracker import StepTracker
from reproduce.training.weights import WEIGHTS_FILE, cpu_state, save_weights, weights_checksum

# Imported from here by reproduce.checks.gradients and the tests.
__all__ = ["run_cell", "write_cell", "checkpoint_key", "loss_fn", "predict_proba", "to_targets", "to_tensor"]


def provenance(*, cell: Cell, data, device: torch.device | None = None) -> Provenance:
    """Everything needed to trace a number back: study file hash, cell, commit, data, seed, versions."""
    path = Path(study_file(cell.study))
    return Provenance(
        study=cell.study.name,
        study_sha256=study_hash(path) if path.exists() else None,
        cell=cell.id,
        seed=cell.seed,
        data=DataProvenance(name=data.name, sha256=data.sha256, source=data.source),
        versions=versions(),
        device=device_facts(device if device is not None else torch.device("cpu")),
    )


def training_records(splits: Splits, *, max_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The training split's (images, labels), cut to the first ``max_samples`` when the study says so."""
    x, y = splits.images("train"), splits.labels("train")
    if max_samples:
        x, y = x[:max_samples], y[:max_samples]
    return x, y


def training_set(
    splits: Splits,
    *,
    max_samples: int | None,
    task: str,
    device: torch.device = torch.device("cpu"),
    audit: CellAudit | None = None,
) -> TensorDataset:
    """The training split as tensors, cut to its first ``max_samples`` when the study says so; held
    on ``device`` when it fits there (``reproduce.device.resident``). With ``audit``, its included
    canaries join it (``CellAudit.training_arrays``; gradient canaries' ids as a third tensor)."""
    x, y = training_records(splits, max_samples=max_samples)
    ids = None
    if audit is not None:
        x, y, ids = audit.training_arrays(x, y)
    tensors = (to_tensor(x), to_targets(y, task), *(() if ids is None else (torch.from_numpy(ids),)))
    return TensorDataset(*resident(tensors, device))


def run_cell(
    cell: Cell,
    *,
    data_root: Path,
    progress: bool = True,
    checkpoint: Path | None = None,
    splits: Splits | None = None,
    device: str | torch.device | None = None,
) -> CellResult:
    """Train ``cell`` and return its result (metrics, privacy statement, provenance).

    With ``checkpoint``, state is saved atomically after every epoch and a valid checkpoint is
    resumed from; results are bit-identical to an uninterrupted run on CPU. ``splits`` replaces
    the dataset (smoke runs on stand-in data). ``device``: a torch device, or a spec for
    ``reproduce.device.requested_device`` (None: $REPRODUCE_DEVICE, the user config, else auto).
    """
    device = device if isinstance(device, torch.device) else resolve_device(requested_device(device))
    configure_determinism(device)
    # Both trainers alike (the DP engine asks for it anyway): their throughputs compare one allocator.
    keep_freed_memory()
    tr = cell.study.training
    torch.manual_seed(cell.seed)
    np.random.seed(cell.seed)
    if splits is None:
        splits = load_dataset(cell.dataset, root=data_root, options=cell.study.data)
    info = splits.info
    # Built on the CPU (same initial weights on every device), then moved with escnn's hidden bases.
    model = build_cell_model(cell, in_channels=info.n_channels, num_classes=info.num_classes).to(device)
    audit = theta_initial = None
    if cell.audited:
        audit = CellAudit.prepare(
            cell,
            *training_records(splits, max_samples=tr.max_train_samples),
            task=info.task,
            num_classes=info.num_classes,
            num_params=count_parameters(model),
        )
        theta_initial = parameter_vector(model)  # the initial weights, also on a resumed run
    train_set = training_set(splits, max_samples=tr.max_train_samples, task=info.task, device=device, audit=audit)
    trainer = (PrivateTrainer if cell.private else PlainTrainer).for_cell(
        cell,
        model,
        train_set,
        task=info.task,
        canaries=None if audit is None else audit.gradients([p for p in model.parameters() if p.requires_grad]),
    )
    tracker = StepTracker(model, task=info.task, every=tr.log_every)
    ema = EMA(trainer.params, decay=tr.ema_decay) if tr.ema_decay else None

    key = checkpoint_key(cell)
    saved = load_checkpoint(checkpoint, expect_key=key) if checkpoint else None
    resume = TrainingState.from_dict(saved) if saved is not None else None
    if resume is not None and progress:
        print(f"{cell.id}: resuming after epoch {resume.epoch_done} (step {resume.step}) from {checkpoint}")
    run = train(
        trainer,
        model=model,
        tracker=tracker,
        ema=ema,
        key=key,
        label=cell.id,
        resume=resume,
        save=(lambda state: save_checkpoint(checkpoint, state.to_dict())) if checkpoint else None,
        progress=progress,
    )

    evaluation = evaluate(model, splits, task=info.task, batch_size=tr.eval_batch_size, ema=ema)
    metrics = {
        **evaluation.metrics,
        "parameters": count_parameters(model),
        "train_loss_last": run.epochs[-1].loss,
        "steps": run.steps,
        # deterministic compute estimate (the measured seconds are in run.json)
        "train_flops": training_flops(
            model,
            input_shape=tuple(train_set.tensors[0].shape[1:]),
            steps=run.steps,
            batch_size=tr.batch_size,
            multiplicity=cell.multiplicity,
        ),
    }
    if run.epochs[-1].gwa is not None:
        metrics["train_gwa_last_epoch"] = run.epochs[-1].gwa  # gradient-weight alignment, last epoch
    epsilon = trainer.epsilon_spent()
    if epsilon is not None:
        metrics["epsilon"] = epsilon
    # The audit reads the weights the metrics describe (post-processing), before the statement that lists it.
    audited = (
        None
        if audit is None
        else audit.record(
            audit.scores(model, theta_initial=theta_initial, task=info.task, batch_size=tr.eval_batch_size)
        )
    )
    # The weights the metrics describe (evaluate left the EMA weights in the model), kept as model.pt.
    state = cpu_state(model)
    weights = KeptWeights(file=WEIGHTS_FILE, sha256=weights_checksum(state), ema=ema is not None)
    draft = CellResult(
        cell=cell.id,
        config=cell.config(),
        metrics=metrics,
        privacy=PrivacyStatement(private=False),
        statement="",
        provenance=provenance(cell=cell, data=info, device=device),
        epochs=run.epochs,
        run=run_record(seconds=run.seconds, seen=run.seen),
        steps=run.step_records,
        reliability_test=evaluation.reliability_test,
        weights=weights,
        audit=audited,
        state=state,
    )
    # The statement lists what the rest of the result releases without noise.
    statement = trainer.privacy_statement(draft)
    return dataclasses.replace(draft, privacy=statement, statement=statement.sentence())


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_cell(result: CellResult, out_dir: Path) -> None:
    """The cell's outputs: model.pt (the kept weights), result.json (everything an identical rerun reproduces byte for byte: DVC's
    cached output), metrics.json (its flat numbers) and steps.json (per-step series for `dvc plots`),
    both small and committed with git; and run.json, this run's timings and host (ignored by git and
    DVC, so a rerun that reproduces every number leaves `dvc.lock` unchanged)."""
    if result.state is not None:  # first, so a result.json never names weights that are not there
        save_weights(result.state, out_dir / result.weights.file)
    write_json_atomic(out_dir / "result.json", result.to_json(), default=_json_default)
    if result.run is not None:
        write_json_atomic(out_dir / "run.json", result.run.to_json(), default=_json_default)
    write_json_atomic(out_dir / "metrics.json", result.numbers(), default=_json_default)
    # Per-step series (loss, l0 sparsity, gradient-weight alignment) for `dvc plots show`.
    write_json_atomic(out_dir / "steps.json", [s.to_json() for s in result.steps], default=_json_default)

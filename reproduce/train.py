"""Train one grid cell (DP-SGD or non-private) and write its metrics, privacy statement and provenance.

``python -m reproduce.train STUDY --cell ID`` is the DVC stage command; ``run_cell`` is the pure-ish
core that tests call directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from reproduce.data import load_dataset
from reproduce.data.augment import augmentation_kind, average_view_grad_samples, training_views
from reproduce.atomic import write_json_atomic
from reproduce.checkpoint import load_checkpoint, save_checkpoint
from reproduce.errors import ReproduceError
from reproduce.models import build_cell_model, count_parameters
from reproduce.privacy.accounting import PrivacyStatement
from reproduce.privacy.released import unnoised_releases
from reproduce.provenance import provenance
from reproduce.study import Cell


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float [N, C, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_targets(labels: np.ndarray, task: str) -> torch.Tensor:
    """Labels [N, L] -> class indices [N] (multi-class) or float targets [N, L] (multi-label)."""
    if task.startswith("multi-label"):
        return torch.from_numpy(labels).float()
    return torch.from_numpy(labels[:, 0]).long()


def loss_fn(logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    if task.startswith("multi-label"):
        return F.binary_cross_entropy_with_logits(logits, y)
    return F.cross_entropy(logits, y)


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor, *, task: str, batch_size: int) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        out.append(torch.sigmoid(logits) if task.startswith("multi-label") else logits.softmax(-1))
    model.train()
    return torch.cat(out).numpy().astype(np.float64)


def _finite(loss: torch.Tensor) -> float | None:
    """The loss as a float, None for the NaN mean loss of an empty Poisson batch (JSON has no NaN)."""
    value = float(loss.item())
    return value if math.isfinite(value) else None


class StepTracker:
    """Per-step series for Figure 1 (right) and gradient-weight alignment.

    Every ``every`` optimizer steps: l0_update, the share of entries with |g| < 1e-5 of the gradient
    the optimizer applied (private: clipped + noised; non-private: plain), and l0_clipped (DP only),
    the clipped sum before noise. Gradient-weight alignment (``reproduce.metrics.alignment``): the
    cosine between each sample's final-layer update direction and the weights, taken in every
    training forward pass (every micro-batch, at the weights the gradient is taken at), summarised
    per logged step (``gwa``, ``gwa_mean``) and per epoch (``end_epoch``, as the authors do).
    """

    def __init__(self, model: torch.nn.Module, *, task: str, every: int):
        self.every, self.task, self.rows = every, task, []
        self.fc = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._io = None
        self._step_cosines: list = []
        self._epoch_cosines: list = []
        self.fc.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if module.training:
            self._io = (inputs[0].detach(), output.detach())

    def record_batch(self, targets: torch.Tensor) -> None:
        """Alignment cosines of the (micro-)batch whose forward pass just ran, with its targets."""
        if self._io is None or self.task.startswith("multi-label") or len(targets) == 0:
            self._io = None
            return
        from reproduce.metrics.alignment import final_layer_cosines
        h, z = self._io
        self._io = None
        cosines = final_layer_cosines(h, z, targets.reshape(-1), self.fc.weight)
        self._step_cosines.append(cosines)
        self._epoch_cosines.append(cosines)

    def after_step(self, step: int, epoch: int, loss, dp_optimizer) -> None:
        cosines, self._step_cosines = self._step_cosines, []
        if step % self.every and step != 1:
            return
        from reproduce.metrics.alignment import alignment_summary
        from reproduce.metrics.sparsity import l0_eps
        row = {"step": step, "epoch": epoch, "loss": _finite(loss),
               "l0_update": l0_eps([p.grad for p in self.params if p.grad is not None])}
        if dp_optimizer is not None:
            B = dp_optimizer.expected_batch_size
            row["l0_clipped"] = l0_eps([p.summed_grad / B for p in self.params if getattr(p, "summed_grad", None) is not None])
        if cosines:
            summary = alignment_summary(np.concatenate(cosines))
            row["gwa"], row["gwa_mean"] = summary.kurtosis_corrected_mean, summary.mean
        self.rows.append(row)

    def end_epoch(self) -> dict:
        """Gradient-weight alignment over every training sample (view) of the epoch; {} if not tracked."""
        cosines, self._epoch_cosines = self._epoch_cosines, []
        if not cosines:
            return {}
        from reproduce.metrics.alignment import alignment_summary
        summary = alignment_summary(np.concatenate(cosines))
        return {"gwa": summary.kurtosis_corrected_mean, "gwa_mean": summary.mean,
                "gwa_excess_kurtosis": summary.excess_kurtosis}


def checkpoint_key(cell: Cell) -> str:
    """Identifies what a checkpoint was trained for; any config change invalidates it."""
    return hashlib.sha256(json.dumps(cell.config(), sort_keys=True).encode()).hexdigest()


def run_cell(cell: Cell, *, data_root: Path, progress: bool = True, checkpoint: Path | None = None,
             splits=None) -> dict:
    """Train ``cell`` and return its result record (metrics, privacy statement, provenance).

    With ``checkpoint``, state is saved atomically after every epoch and a valid checkpoint is
    resumed from; results are bit-identical to an uninterrupted run on CPU. ``splits`` replaces
    the dataset (smoke runs on stand-in data).
    """
    study, tr = cell.study, cell.study.training
    torch.manual_seed(cell.seed)
    np.random.seed(cell.seed)
    if splits is None:
        splits = load_dataset(cell.dataset, root=data_root, options=study.data)
    info = splits.info
    task = info.task
    x_train, y_train = splits.images("train"), splits.labels("train")
    if tr.max_train_samples:
        x_train, y_train = x_train[:tr.max_train_samples], y_train[:tr.max_train_samples]
    train_set = TensorDataset(to_tensor(x_train), to_targets(y_train, task))
    num_classes = info.num_classes
    model = build_cell_model(cell, in_channels=info.n_channels, num_classes=num_classes)
    n_params = count_parameters(model)
    optimizer = make_optimizer(model.parameters(), (tr.dp_optimizer or tr.optimizer) if cell.private else tr.optimizer)

    if cell.private:
        from reproduce.privacy.dp_sgd import make_private
        p = study.privacy
        dp = make_private(model, optimizer, train_set, batch_size=tr.batch_size, epochs=tr.epochs, steps=tr.steps,
                          target_epsilon=float(cell.epsilon), delta=p.delta, max_grad_norm=p.max_grad_norm,
                          accountant=p.accountant, seed=cell.seed, secure_mode=p.secure_mode)
        net, opt, steps_total = dp.model, dp.optimizer, dp.steps
        steps_per_epoch = len(dp.loader)
    else:
        gen = torch.Generator().manual_seed(cell.seed * 1_000_003 + 1)
        loader = DataLoader(train_set, batch_size=tr.batch_size, shuffle=True, generator=gen)
        net, opt, steps_total = model, optimizer, tr.steps or tr.epochs * len(loader)
        steps_per_epoch = len(loader)

    kind = augmentation_kind(cell.dataset)
    aug_gen = torch.Generator().manual_seed(cell.seed * 1_000_003 + 3)
    K = cell.multiplicity
    tracker = StepTracker(model, task=task, every=tr.log_every)
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params] if tr.ema_decay else None

    def forward_backward(x, y):
        if cell.private and len(x) == 0:
            # An empty Poisson batch: a noise-only DP step with zero per-sample gradients, in either
            # per-sample-gradient mode (opacus's own nn.Conv2d rule mis-shapes a batch of zero).
            for p in params:
                p.grad_sample = p.new_zeros((0, *p.shape))
            return torch.tensor(float("nan")), y
        views, targets = training_views(x, y, K, kind=kind, generator=aug_gen)
        loss = loss_fn(net(views), targets, task)
        if cell.private:
            dp.backward(loss)                      # per-sample gradients only, no batch gradient
            average_view_grad_samples(params, K)   # clip the view-average, per sample
        else:
            loss.backward()
        return loss, targets

    # Everything that evolves during training, so a resumed run continues bit-identically. In secure
    # mode the sampler and the noise read the OS and have no state: a resumed run draws fresh bytes.
    sampler_gen = dp.loader.batch_sampler.generator if cell.private else gen
    noise_gen = opt.generator if cell.private else None

    def snapshot(epoch_done: int, step: int, seen: int, log: list) -> dict:
        return {"key": checkpoint_key(cell), "epoch_done": epoch_done, "step": step, "seen": seen, "log": log,
                "elapsed": elapsed + time.perf_counter() - t0,
                "tracker_rows": tracker.rows, "model": model.state_dict(),
                "optimizer": (opt.original_optimizer if cell.private else opt).state_dict(),
                "ema": ema, "accountant_history": list(dp.accountant.history) if cell.private else None,
                "sampler_gen": sampler_gen.get_state() if sampler_gen is not None else None,
                "aug_gen": aug_gen.get_state(),
                "noise_gen": noise_gen.get_state() if noise_gen is not None else None,
                "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state()}

    start_epoch, seen, step, log, elapsed = 0, 0, 0, [], 0.0
    state = load_checkpoint(checkpoint, expect_key=checkpoint_key(cell)) if checkpoint else None
    if state is not None:
        model.load_state_dict(state["model"])
        (opt.original_optimizer if cell.private else opt).load_state_dict(state["optimizer"])
        if ema is not None:
            ema = state["ema"]
        if cell.private:
            dp.accountant.history = list(state["accountant_history"])
        if sampler_gen is not None:
            sampler_gen.set_state(state["sampler_gen"])
        aug_gen.set_state(state["aug_gen"])
        if noise_gen is not None:
            noise_gen.set_state(state["noise_gen"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        start_epoch, seen, step, log = state["epoch_done"], state["seen"], state["step"], state["log"]
        elapsed = state["elapsed"]
        tracker.rows = state["tracker_rows"]
        if progress:
            print(f"{cell.id}: resuming after epoch {start_epoch} (step {step}) from {checkpoint}")

    t0 = time.perf_counter()
    bar = tqdm(total=steps_total, initial=step, desc=cell.id, unit="step", disable=not progress, dynamic_ncols=True)
    n_epochs = tr.epochs or math.ceil(steps_total / steps_per_epoch)
    for epoch in range(start_epoch, n_epochs):
        if cell.private:
            # Poisson batches of random size, split into bounded micro-batches; the optimizer only
            # takes a (noised) step at the end of each logical batch.
            batches_cm = BatchMemoryManager(data_loader=dp.loader, max_physical_batch_size=tr.physical_batch_size,
                                            optimizer=opt)
        else:
            batches_cm = contextlib.nullcontext(loader)
        with batches_cm as batches:
            for x, y in batches:
                if step == steps_total:
                    break
                opt.zero_grad(set_to_none=True)
                loss, targets = forward_backward(x, y)
                # An empty Poisson batch has a NaN mean loss but is a valid noise-only DP step.
                if len(x) and not torch.isfinite(loss):
                    raise ReproduceError(f"cell {cell.id}: training diverged (loss {loss.item()}) at step {step + 1}, "
                                         f"epoch {epoch}; lower the learning rate in the study's training.optimizer")
                tracker.record_batch(targets)
                opt.step()
                seen += len(x)
                if cell.private and opt._is_last_step_skipped:
                    continue
                step += 1
                if ema is not None:
                    with torch.no_grad():
                        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - tr.ema_decay)
                tracker.after_step(step, epoch, loss, opt if cell.private else None)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        log.append({"epoch": epoch, "loss": _finite(loss), **tracker.end_epoch()})
        if checkpoint:
            save_checkpoint(checkpoint, snapshot(epoch + 1, step, seen, log))
    bar.close()
    train_time = elapsed + time.perf_counter() - t0
    if ema is not None:
        # Evaluate (and report) the EMA weights, as the follow-up paper does.
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)

    from reproduce.metrics import compute_eval_metrics
    from reproduce.metrics.calibration import reliability_bins
    metrics, detail = {}, {}
    for split in ("val", "test"):
        probs = predict_proba(model, to_tensor(splits.images(split)), task=task, batch_size=tr.eval_batch_size)
        for name, value in compute_eval_metrics(probs, splits.labels(split), task=task).items():
            metrics[f"{split}_{name}"] = value
        if split == "test" and not task.startswith("multi-label"):
            detail["reliability_test"] = [dataclasses.asdict(b) for b in reliability_bins(probs, splits.labels(split))]
    if not task.startswith("multi-label"):
        # Rotation-invariance gap: accuracy on the rotated test set minus accuracy on the test set
        # (90 degrees exact; 45 degrees bilinear, corners filled with zeros = mid-grey).
        from reproduce.metrics.invariance import invariance_gap
        model.eval()
        x_test, y_test = to_tensor(splits.images("test")), splits.labels("test")[:, 0]
        for angle in (90, 45):
            gap = invariance_gap(model, x_test, y_test, angle, batch_size=tr.eval_batch_size)
            metrics[f"test_acc_rot{angle}"], metrics[f"rot{angle}_gap"] = gap.acc_rotated, gap.gap
        model.train()
    metrics.update(parameters=n_params, train_seconds=round(train_time, 3),
                   samples_per_second=round(seen / train_time, 1), train_loss_last=log[-1]["loss"], steps=step)
    if log[-1].get("gwa") is not None:
        metrics["train_gwa_last_epoch"] = log[-1]["gwa"]  # gradient-weight alignment, last epoch

    record = {"cell": cell.id, "config": cell.config(), "metrics": metrics, "epochs": log, "steps": tracker.rows,
              "metrics_detail": detail, "privacy": None, "provenance": provenance(cell=cell, data=info)}
    if cell.private:
        p = study.privacy
        eps = float(dp.accountant.get_epsilon(p.delta))
        metrics["epsilon"] = eps
        statement = PrivacyStatement(
            private=True, accountant=p.accountant, target_epsilon=float(cell.epsilon), epsilon_spent=eps,
            delta=p.delta, noise_multiplier=dp.noise_multiplier, sample_rate=dp.sample_rate,
            steps=sum(s for _, _, s in dp.accountant.history), max_grad_norm=p.max_grad_norm,
            sampling="Poisson", secure_mode=p.secure_mode, training_set_size=len(train_set), seed=cell.seed,
            hyperparameter_selection=p.hyperparameter_selection,
            unnoised_releases=tuple(unnoised_releases({k: v for k, v in record.items() if k != "privacy"})))
        if statement.steps != dp.steps:
            raise ReproduceError(f"cell {cell.id}: ran {statement.steps} private steps but calibrated for {dp.steps}")
    else:
        statement = PrivacyStatement(private=False)
    record["privacy"] = {**statement.__dict__, "statement": statement.sentence()}
    return record


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_cell(result: dict, out_dir: Path) -> None:
    """The cell's outputs: result.json (everything), metrics.json (flat numbers for `dvc metrics`)
    and steps.json (per-step series for `dvc plots`)."""
    flat = {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}
    write_json_atomic(out_dir / "result.json", result, default=_json_default)
    write_json_atomic(out_dir / "metrics.json", flat, default=_json_default)
    # Per-step series (loss, l0 sparsity, gradient-weight alignment) for `dvc plots show`.
    write_json_atomic(out_dir / "steps.json", result["steps"], default=_json_default)

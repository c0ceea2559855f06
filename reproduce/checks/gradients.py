"""``reproduce verify``: per-sample gradients and the clipped DP update against per-sample autograd.

Ground truth is independent of every per-sample rule: one ``torch.autograd.grad`` per sample of
that sample's own loss (the mean over its K views), through an unmodified copy of the model. The
checked step is the trainer's own: the study's model (``build_cell_model``), the trainer's tensors
(``to_tensor``), and ``PrivateTrainer`` itself - its Poisson loader and micro-batches, its K views,
its backward and view averaging, its DP optimizer's step (the study's clipping rule) - for a copy of the cell with one small
Poisson batch (noise off, so the clipped mean is compared). Since a rule must not depend on memory
layout, the same step is also run with every trainable layer's input forced channels-last and as a
non-contiguous slice. Both per-sample paths are checked: the output-gradient engine the trainer uses
and opacus's hooks mode.

Data: the stand-in training split of ``reproduce.checks.smoke`` (random pixels with the dataset's shape,
channels and classes, through the trainer's ``to_tensor``): layout and arithmetic are what is
checked, not accuracy, so no dataset needs to be downloaded.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import torch
from torch import nn
from torch.utils.data import TensorDataset

from reproduce.device import resolve_device
from reproduce.errors import ReproduceError
from reproduce.models import build_cell_model
from reproduce.privacy.dp_sgd import PER_SAMPLE_GRADIENTS
from reproduce.privacy.exactness import exactness_problems
from reproduce.privacy.grad_samplers.conv_filter import chunks_of_at_most
from reproduce.study import Cell, Study
from reproduce.training.private import PrivateTrainer
from reproduce.training.task import loss_fn, to_targets, to_tensor

#: Relative error allowed against per-sample autograd (float32 and float64 arithmetic).
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


def _strided(x: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous view: every other column of a twice-as-wide tensor."""
    wide = torch.stack([x, torch.full_like(x, float("nan"))], dim=-1).flatten(-2)
    return wide[..., ::2]


#: How the views reach the model: as the trainer makes them, forced channels-last, a strided slice.
LAYOUTS = {
    "trainer": lambda x: x,
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "strided": _strided,
}


@dataclasses.dataclass
class CaseReport:
    """One verified case: a group and multiplicity of the study, one input layout, one per-sample path."""

    group: str
    multiplicity: int
    layout: str
    mode: str
    samples: int  # samples of the logical Poisson batch
    layer_errors: dict[str, float]  # parameter name -> worst per-sample relative error of its gradient
    update_error: float  # error of the clipped, averaged DP update (noise off), relative to its terms' size
    input_strides: tuple[int, ...]

    def worst(self) -> tuple[str, float]:
        nan = [k for k, e in self.layer_errors.items() if math.isnan(e)]
        name = nan[0] if nan else max(self.layer_errors, key=self.layer_errors.get)
        return name, self.layer_errors[name]

    def ok(self, tolerance: float) -> bool:
        # written so that NaN fails (max() would skip a NaN that is not its first argument)
        return all(e <= tolerance for e in (self.update_error, *self.layer_errors.values()))


@dataclasses.dataclass
class StudyReport:
    study: str
    dtype: torch.dtype
    cases: list[CaseReport]
    refusals: dict[str, list[str]]  # group -> why its model cannot get exact per-sample gradients

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.dtype]

    @property
    def ok(self) -> bool:
        return not self.refusals and all(c.ok(self.tolerance) for c in self.cases)


def _relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample ||a_i - b_i|| / ||b_i|| for [n, m] tensors."""
    return (a - b).norm(dim=1) / b.norm(dim=1).clamp_min(torch.finfo(b.dtype).tiny)


def _force_layout(model: nn.Module, layout: str) -> list:
    """Hand every trainable layer its input in ``layout`` (not only the first: a conv on a strided input
    returns a contiguous output, so forcing the model input alone would test one layer)."""
    relayout = LAYOUTS[layout]

    def pre_hook(module, args):
        x = args[0]
        return (relayout(x), *args[1:]) if isinstance(x, torch.Tensor) and x.dim() == 4 else None

    return [
        m.register_forward_pre_hook(pre_hook)
        for m in model.modules()
        if any(p.requires_grad for p in m.parameters(recurse=False))
    ]


def _brute_force(
    model: nn.Module, views: torch.Tensor, targets: torch.Tensor, multiplicity: int, task: str
) -> list[torch.Tensor]:
    """Per-sample gradients [n, ...] per parameter: one autograd call per sample on its own K views."""
    params = [p for p in model.parameters() if p.requires_grad]
    per_sample = [[] for _ in params]
    for i in range(views.shape[0] // multiplicity):
        rows = slice(i * multiplicity, (i + 1) * multiplicity)
        grads = torch.autograd.grad(loss_fn(model(views[rows]), targets[rows], task), params)
        for acc, g in zip(per_sample, grads):
            acc.append(g)
    return [torch.stack(g) if g else p.new_zeros((0, *p.shape)) for g, p in zip(per_sample, params)]


def _small(cell: Cell, *, batch_size: int, physical_batch_size: int) -> Cell:
    """``cell`` with one small Poisson batch: everything else (model, privacy, K, seed) is the study's."""
    training = cell.study.training.model_copy(
        update={
            "batch_size": batch_size,
            "physical_batch_size": physical_batch_size,
            "epochs": None,
            "steps": 1,
            "max_train_samples": None,
        }
    )
    return dataclasses.replace(cell, study=cell.study.model_copy(update={"training": training}))


def verify_case(
    cell: Cell,
    model: nn.Module,
    train_set: TensorDataset,
    *,
    task: str,
    layout: str,
    mode: str,
    batch_size: int,
    physical_batch_size: int,
    device: torch.device,
) -> CaseReport:
    """Check one logical DP batch of ``cell`` through the trainer's own ``PrivateTrainer`` against
    per-sample autograd on the views it fed the model."""
    dp_model, reference = copy.deepcopy(model), copy.deepcopy(model)
    named = [(name, p) for name, p in dp_model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    small = _small(cell, batch_size=batch_size, physical_batch_size=physical_batch_size)
    trainer = PrivateTrainer.for_cell(small, dp_model, train_set, task=task, per_sample_gradients=mode)
    trainer.optimizer.noise_multiplier = 0.0  # the clipped mean itself is compared
    fed: list[torch.Tensor] = []  # the views the trainer handed the model, per micro-batch
    hooks = [dp_model.register_forward_pre_hook(lambda m, args: fed.append(args[0].detach()))]
    if layout != "trainer":
        # The reference runs the same layouts: oneDNN picks other conv algorithms for channels-last
        # tensors (float32 per-sample gradients then differ by up to 3e-3 from an NCHW forward, measured
        # on the CIFAR-10 D4 model; float64 agrees to 1e-14), and the rules are checked, not oneDNN.
        hooks += _force_layout(dp_model, layout) + _force_layout(reference, layout)
    strides: list[tuple[int, ...]] = []
    first = next(m for m in dp_model.modules() if any(p.requires_grad for p in m.parameters(recurse=False)))
    hooks.append(first.register_forward_pre_hook(lambda m, args: strides.append(tuple(args[0].stride()))))
    ours, truth = [[] for _ in params], [[] for _ in params]
    K = cell.multiplicity
    # Chunks of at most 2 samples: the verified micro-batches are small, training's are many chunks long.
    with chunks_of_at_most(2):
        for x, y in trainer.batches():
            fed.clear()
            _, targets = trainer.forward_backward(x, y)
            if len(x):
                for acc, p in zip(ours, params):
                    acc.append(p.grad_sample.detach().clone())
                # the trainer's engine pads the micro-batch with zero samples (dropped from its gradients)
                for acc, g in zip(truth, _brute_force(reference, fed[0][: len(targets)], targets, K, task)):
                    acc.append(g)
            if trainer.step():
                break
    for h in hooks:
        h.remove()
    ours = [torch.cat(g).flatten(1) if g else p.new_zeros(0, p.numel()) for g, p in zip(ours, params)]
    truth = [torch.cat(g).flatten(1) if g else p.new_zeros(0, p.numel()) for g, p in zip(truth, params)]
    n = ours[0].shape[0]
    # per parameter tensor (a wrong bias must not hide behind its layer's larger weight gradient)
    errors = {
        name: float(_relative(a.double(), b.double()).max()) if n else 0.0
        for (name, _), a, b in zip(named, ours, truth)
    }
    # The study's clipping rule on the norm over all parameters (flat: opacus's min(1, C / (||g_i|| +
    # 1e-6)); an adaptive rule's first step clips at its initial C). The reference arithmetic is
    # float64: torch's float32 norm of one 2.4M-entry row is off by ~1e-4 (measured on the CIFAR-10
    # ResNet-9), more than the tolerance.
    privacy = cell.study.privacy
    full = torch.cat(truth, 1).double()
    factor = trainer.optimizer.clipping.clip_factors(full.norm(dim=1), privacy.max_grad_norm)
    expected = (factor[:, None] * full).sum(0) / batch_size
    applied = torch.cat([p.grad.flatten() for p in params]).double()
    # Relative to the size of the terms (sum of clipped norms / B), not of their mean: a few clipped
    # gradients can cancel far below their own size, and float32 rounding scales with the terms.
    scale = (factor * full.norm(dim=1)).sum() / batch_size
    update_error = float((applied - expected).norm() / scale.clamp_min(torch.finfo(expected.dtype).tiny)) if n else 0.0
    return CaseReport(cell.group, K, layout, mode, n, errors, update_error, strides[0] if strides else ())


def _verified_cells(study: Study) -> list[Cell]:
    """One DP cell per (group, multiplicity) of the study: the first dataset, epsilon and seed."""
    seen, cells = set(), []
    for cell in study.cells():
        key = (cell.group, cell.multiplicity)
        if cell.private and key not in seen:
            seen.add(key)
            cells.append(cell)
    return cells


def _training_set(cell: Cell, *, dtype: torch.dtype) -> tuple[TensorDataset, object]:
    """The stand-in training split of the cell's dataset, as the trainer turns a split into tensors."""
    from reproduce.data.stand_in import stand_in

    splits = stand_in(cell.dataset, size=cell.study.data.size, seed=cell.seed)
    x, y = splits.images("train"), splits.labels("train")
    return TensorDataset(to_tensor(x).to(dtype), to_targets(y, splits.info.task)), splits.info


def verify_study(
    study: Study,
    *,
    batch_size: int = 6,
    physical_batch_size: int = 4,
    layouts: tuple[str, ...] = tuple(LAYOUTS),
    modes: tuple[str, ...] = PER_SAMPLE_GRADIENTS,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    groups: tuple[str, ...] | None = None,
) -> StudyReport:
    """Verify every (group, multiplicity) of ``study``'s DP cells; see the module docstring.

    Args:
        study: the study.
        batch_size: expected Poisson batch size of the checked step (q = batch_size / N).
        physical_batch_size: micro-batch bound, smaller than the batch so micro-batching is exercised.
        layouts: input layouts to check (keys of ``LAYOUTS``).
        modes: per-sample gradient paths ("engine": the trainer's; "hooks": opacus's).
        dtype: float32 (tolerance 1e-4) or float64 (1e-10).
        device: where model and batches live.
        groups: restrict to these groups (default: all of the grid).
    """
    device = resolve_device(str(device))  # DeviceError (exit 2) for a device that is unknown or not here
    cases, refusals, sets = [], {}, {}
    for cell in _verified_cells(study):
        if groups and cell.group not in groups:
            continue
        if cell.dataset not in sets:
            sets[cell.dataset] = _training_set(cell, dtype=dtype)
        train_set, info = sets[cell.dataset]
        model = build_cell_model(cell, in_channels=info.n_channels, num_classes=info.num_classes).to(device, dtype)
        problems = exactness_problems(model)
        if problems:
            refusals[cell.group] = problems
            continue
        for layout in layouts:
            for mode in modes:
                with warnings.catch_warnings():
                    # opacus's hooks warn that the first layer's input needs no gradient; expected
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    warnings.filterwarnings("ignore", message="Secure RNG turned off")
                    cases.append(
                        verify_case(
                            cell,
                            model,
                            train_set,
                            task=info.task,
                            layout=layout,
                            mode=mode,
                            batch_size=batch_size,
                            physical_batch_size=physical_batch_size,
                            device=device,
                        )
                    )
    if not cases and not refusals:
        raise ReproduceError(f"study {study.name!r} has no DP cell: nothing to verify")
    return StudyReport(study.name, dtype, cases, refusals)


def format_report(report: StudyReport, *, per_layer: bool = False) -> str:
    """The table ``reproduce verify`` prints: one row per case, worst layer and update error."""
    tol = report.tolerance
    lines = [
        f"{report.study}: per-sample gradients vs per-sample autograd ({str(report.dtype).removeprefix('torch.')}, "
        f"tolerance {tol:g} relative)",
        f"  {'group':6s} {'K':>2s} {'input':14s} {'path':6s} {'n':>3s}  {'worst parameter':28s} {'error':>9s}  "
        f"{'update':>9s}",
    ]
    for c in report.cases:
        name, err = c.worst()
        flag = "ok" if c.ok(tol) else "MISMATCH"
        lines.append(
            f"  {c.group:6s} {c.multiplicity:2d} {c.layout:14s} {c.mode:6s} {c.samples:3d}  {name:28s} "
            f"{err:9.2e}  {c.update_error:9.2e}  {flag}"
        )
        if per_layer or not c.ok(tol):
            lines += [
                f"      {name:34s} {e:9.2e}{'' if e <= tol else '  MISMATCH'}" for name, e in c.layer_errors.items()
            ]
    for group, problems in report.refusals.items():
        lines.append(f"  {group:6s} REFUSED: " + "; ".join(problems))
    bad = sum(not c.ok(tol) for c in report.cases)
    lines.append(
        f"  {len(report.cases)} cases, {bad} mismatched, {len(report.refusals)} group(s) refused"
        + ("" if report.ok else "  -> FAILED")
    )
    return "\n".join(lines)

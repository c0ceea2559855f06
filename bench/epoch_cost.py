"""Cost of one epoch per group of a study, DP and non-private, and the projected cost of its full grid.

Times a few steps of the trainer's own path (the study's model from ``build_cell_model``, K views from
``training_views``; DP: OutputGradientEngine + the exact rules + opacus's DPOptimizer, views averaged
before clipping) on stand-in data of the dataset's shape, per group, then extrapolates: epoch =
N_train x seconds per sample; full grid = sum over cells of training samples x seconds per sample.
Prints per group: ms per sample, the epoch time, DP/non-private ratio and peak memory (GPU memory on
CUDA, the process's peak RSS on the CPU). On CUDA, ``--cells-per-gpu`` cells share one GPU (the
projection assumes they run concurrently at the measured speed each, which is optimistic when one cell
already saturates the GPU). A row that runs out of device memory is printed as OOM and leaves the
projection incomplete. A layout (group and ``model.*`` axes) is built once for its DP and non-private
rows. ``--batch physical``: each study's ``physical_batch_size`` (the trainer's micro-batch).
``--groups``: only those groups (the projection then covers their cells only). ``--json FILE``: every
figure, per study. Asserts nothing; run it on the machine you want the projection for.

    python bench/epoch_cost.py studies/bridging_the_gap.yaml [MORE_STUDIES ...] [--device cpu|cuda]
        [--threads 2] [--batch 32|physical] [--steps 3] [--cells-per-gpu 1] [--groups e C4] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import resource
import time
import warnings

import torch
import torch.nn.functional as F

from reproduce.data.augment import augmentation_kind, average_view_grad_samples, training_views
from reproduce.data.stand_in import dataset_shape
from reproduce.device import configure_determinism, resolve_device
from reproduce.models import build_cell_model, count_parameters
from reproduce.privacy.accounting import poisson_steps_per_epoch
from reproduce.study import load_study

TRAIN_SIZES = {"cifar10": 45000, "embedded": 4000}


def n_train(name: str, size: int) -> int:
    if name in TRAIN_SIZES:
        return TRAIN_SIZES[name]
    from medmnist.info import INFO

    return INFO[name]["n_samples"]["train"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layout_key(cell) -> tuple:
    """What the model of ``cell`` depends on beyond the study: its group and ``model.*`` axes."""
    return (cell.group, *((p, v) for p, v in cell.axes if p.startswith("model.")))


def seconds_per_sample(
    cell,
    *,
    batch: int,
    steps: int,
    side: int,
    channels: int,
    classes: int,
    device: torch.device,
    built: dict | None = None,
) -> tuple[float, int, float]:
    """(median seconds per sample of a training step, parameters, peak memory in MiB).

    ``built``: models already built, by ``layout_key`` (a model is built once, on the CPU, and copied)."""
    built = {} if built is None else built
    key = layout_key(cell)
    if key not in built:
        built[key] = build_cell_model(cell, in_channels=channels, num_classes=classes)
    model = copy.deepcopy(built[key]).to(device)
    params = count_parameters(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if cell.private:
        from opacus.optimizers import DPOptimizer

        from reproduce.privacy.fast_engine import OutputGradientEngine

        engine = OutputGradientEngine(model)  # refuses layers without exact rules
        opt = DPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch)
    gen = torch.Generator().manual_seed(0)
    K, kind = cell.multiplicity, augmentation_kind(cell.dataset)
    x = torch.randn(batch, channels, side, side)
    y = torch.randint(0, classes, (batch,))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps + 1):  # the first step warms up
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        views, targets = training_views(x, y, K, kind=kind, generator=gen)
        loss = F.cross_entropy(model(views.to(device)), targets.to(device))
        if cell.private:
            engine.backward(loss)
            average_view_grad_samples(model.parameters(), K)
        else:
            loss.backward()
        opt.step()
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; monotone per process
    return sorted(times)[len(times) // 2] / batch, params, peak


def _measure(cell, built: dict, **kw) -> tuple[float | None, int | None, float | None]:
    """``seconds_per_sample``, or (None, None, None) when the device runs out of memory."""
    try:
        return seconds_per_sample(cell, built=built, **kw)
    except torch.OutOfMemoryError:  # reported as OOM; the other rows still run
        pass  # leaving this block drops the traceback, and with it the failed step's tensors
    gc.collect()
    torch.cuda.empty_cache()
    return None, None, None


def _fmt(value: float | None, spec: str, missing: str = "OOM") -> str:
    return format(value, spec) if value is not None else format(missing, f">{spec.split('.')[0]}")


def study_cost(path: str, args, device: torch.device) -> dict:
    """Print one study's table and projection; return its figures."""
    study = load_study(path)
    tr = study.training
    dataset0 = study.grid.dataset[0]
    info, side = dataset_shape(dataset0, size=study.data.size)
    batch = tr.physical_batch_size if args.batch == "physical" else int(args.batch)
    groups = [g for g in study.grid.group if not args.groups or g in args.groups]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"{study.name}: {where}, timed on {batch} samples x K views of {side}x{side}x{info.n_channels}")
    print(
        f"{'group':6} {'K':>2} {'widths':>11} {'params':>10} {'DP ms/sample':>13} {'non-DP':>8} {'DP/non-DP':>9} "
        f"{'DP epoch of ' + dataset0:>24} {'peak MiB':>9}"
    )
    cost: dict[tuple, float | None] = {}  # (layout, private, K) -> seconds per sample; None: OOM
    rows, built = [], {}
    for group in groups:
        for K in study.grid.multiplicity:
            for layout in dict.fromkeys(layout_key(c) for c in study.cells() if c.group == group):
                row, params = {}, None  # private -> (seconds per sample, peak MiB)
                for cell in study.cells():
                    if layout_key(cell) == layout and cell.multiplicity == K and cell.private not in row:
                        s, p, peak = _measure(
                            cell,
                            built,
                            batch=batch,
                            steps=args.steps,
                            side=side,
                            channels=info.n_channels,
                            classes=info.num_classes,
                            device=device,
                        )
                        row[cell.private], params = (s, peak), params or p
                        cost[layout, cell.private, K] = s
                (dp, dp_peak), (plain, plain_peak) = row.get(True, (None, None)), row.get(False, (None, None))
                ratio = dp / plain if dp and plain else None
                either = dp or plain
                epoch = n_train(dataset0, study.data.size) * either / 60 if either else None
                widths = "-".join(map(str, dict(layout[1:]).get("model.widths", study.model.widths_for(group))))
                peaks = [v for v in (dp_peak, plain_peak) if v is not None]
                print(
                    f"{group:6} {K:>2} {widths:>11} {params or 0:>10,} "
                    f"{_fmt(dp and 1000 * dp, '13.2f', 'OOM' if True in row else '-')} "
                    f"{_fmt(plain and 1000 * plain, '8.2f', 'OOM' if False in row else '-')} "
                    f"{_fmt(ratio, '9.2f', '-')} {_fmt(epoch, '20.1f', '-')} min "
                    f"{_fmt(max(peaks, default=None), '9.0f', '-')}"
                )
                rows.append(
                    {
                        "group": group,
                        "multiplicity": K,
                        "widths": widths,
                        "parameters": params,
                        "dp_s_per_sample": dp,
                        "nonprivate_s_per_sample": plain,
                        "dp_over_nonprivate": ratio,
                        "dp_peak_mib": dp_peak,
                        "nonprivate_peak_mib": plain_peak,
                        "epoch_minutes": epoch,
                        "oom": [
                            k
                            for k, private, v in (("dp", True, dp), ("nonprivate", False, plain))
                            if private in row and v is None
                        ],
                    }
                )
    projected = [c for c in study.cells() if c.group in groups]
    per_cell, missing = [], 0
    for cell in projected:
        samples = tr.steps * tr.batch_size if tr.steps else tr.epochs * n_train(cell.dataset, study.data.size)
        s = cost.get((layout_key(cell), cell.private, cell.multiplicity))
        if s is None:
            missing += 1
        else:
            per_cell.append(samples * s)
    total = sum(per_cell)
    spec = f"{tr.steps:d} steps x {tr.batch_size:d}" if tr.steps else f"{tr.epochs:d} epochs"
    scope = (
        f"{len(projected)} of {len(study.cells())} cells"
        if len(projected) < len(study.cells())
        else f"{len(projected)} cells"
    )
    gap = f"; {missing} cell(s) not projected (OOM)" if missing else ""
    if device.type == "cuda":
        print(
            f"projected full grid ({scope}, {spec} each): {total / 3600:.1f} GPU-hours of compute; with "
            f"{args.cells_per_gpu} cell(s) per GPU: {total / 3600 / args.cells_per_gpu:.1f} GPU-hours{gap}"
        )
    else:
        print(
            f"projected full grid ({scope}, {spec} each): {total / 3600:.1f} CPU-hours at "
            f"{args.threads} threads (= {math.ceil(total / 86400)} days on one such machine){gap}"
        )
    # steps per cell as the trainer takes them: Poisson steps per epoch = int(1/q)
    steps = tr.steps or tr.epochs * poisson_steps_per_epoch(tr.batch_size / n_train(dataset0, study.data.size))
    return {
        "study": study.name,
        "device": where,
        "timed_batch": batch,
        "rows": rows,
        "batch_size": tr.batch_size,
        "steps_per_cell": steps,
        "cells": len(study.cells()),
        "cells_projected": len(projected) - missing,
        "cells_not_projected": missing,
        "groups": groups,
        # complete only when every cell of the study was projected
        "projected_hours": total / 3600 if not missing and len(projected) == len(study.cells()) else None,
        "projected_hours_of_measured_cells": total / 3600,
        "max_cell_hours": max(per_cell) / 3600 if per_cell else None,
        "mean_cell_hours": total / len(per_cell) / 3600 if per_cell else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("studies", nargs="+")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--batch",
        default="32",
        help="samples per timed step (x K views), or 'physical': each study's physical_batch_size",
    )
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--cells-per-gpu", type=int, default=1)
    ap.add_argument("--groups", nargs="+", help="only these groups (default: every group of each study)")
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args()
    if args.batch != "physical" and not args.batch.isdigit():
        ap.error("--batch is a number of samples or 'physical'")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    configure_determinism(device)
    out = []
    for i, path in enumerate(args.studies):
        if i:
            print()
        out.append(study_cost(path, args, device))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": device.type, "threads": args.threads, "steps": args.steps, "studies": out}, f, indent=1
            )


if __name__ == "__main__":
    from reproduce.errors import ReproduceError

    try:
        main()
    except ReproduceError as e:
        raise SystemExit(f"error: {e}") from None

"""Cost of one epoch per group of a study, DP and non-private, and the projected cost of its full grid.

Times a few steps of the trainer's own path (the study's model from ``build_cell_model``, K views from
``training_views``; DP: OutputGradientEngine + the exact rules + opacus's DPOptimizer, views averaged
before clipping) on stand-in data of the dataset's shape, per group, then extrapolates: epoch =
N_train x seconds per sample; full grid = sum over cells of training samples x seconds per sample.
Prints per group: ms per sample, the epoch time, DP/non-private ratio and peak memory (GPU memory on
CUDA, the process's peak RSS on the CPU). On CUDA, ``--cells-per-gpu`` cells share one GPU (the
projection assumes they run concurrently at the measured speed each, which is optimistic when one cell
already saturates the GPU). Asserts nothing; run it on the machine you want the projection for.

    python bench/epoch_cost.py studies/bridging_the_gap.yaml [--device cpu|cuda] [--threads 2]
        [--batch 32] [--steps 3] [--cells-per-gpu 1]
"""

from __future__ import annotations

import argparse
import math
import resource
import time
import warnings

import torch
import torch.nn.functional as F

from reproduce.data.augment import augmentation_kind, average_view_grad_samples, training_views
from reproduce.device import configure_determinism, resolve_device
from reproduce.models import build_cell_model, count_parameters
from reproduce.smoke import dataset_shape
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


def seconds_per_sample(cell, *, batch: int, steps: int, side: int, channels: int, classes: int,
                       device: torch.device) -> tuple[float, int, float]:
    """(median seconds per sample of a training step, parameters, peak memory in MiB)."""
    model = build_cell_model(cell, in_channels=channels, num_classes=classes).to(device)
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
    for i in range(steps + 1):   # the first step warms up
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
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; monotone per process
    return sorted(times)[len(times) // 2] / batch, params, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("study")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="samples per timed step (x K views)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--cells-per-gpu", type=int, default=1)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    configure_determinism(device)
    study = load_study(args.study)
    tr = study.training
    dataset0 = study.grid.dataset[0]
    info, side = dataset_shape(dataset0, size=study.data.size)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"{study.name}: {where}, timed on {args.batch} samples x K views of {side}x{side}x{info.n_channels}")
    print(f"{'group':6} {'K':>2} {'params':>10} {'DP ms/sample':>13} {'non-DP':>8} {'DP/non-DP':>9} "
          f"{'DP epoch of ' + dataset0:>24} {'peak MiB':>9}")
    cost: dict[tuple, float] = {}
    for group in study.grid.group:
        for K in study.grid.multiplicity:
            row = {}
            for cell in study.cells():
                if cell.group == group and cell.multiplicity == K and cell.private not in row:
                    s, params, peak = seconds_per_sample(cell, batch=args.batch, steps=args.steps, side=side,
                                                         channels=info.n_channels, classes=info.num_classes,
                                                         device=device)
                    row[cell.private] = (s, peak)
                    cost[group, cell.private, K] = s
            dp, plain = row.get(True), row.get(False)
            ratio = f"{dp[0] / plain[0]:9.2f}" if dp and plain else f"{'-':>9}"
            epoch = n_train(dataset0, study.data.size) * (dp or plain)[0]
            print(f"{group:6} {K:>2} {params:>10,} {1000 * dp[0] if dp else float('nan'):13.2f} "
                  f"{1000 * plain[0] if plain else float('nan'):8.2f} {ratio} {epoch / 60:20.1f} min "
                  f"{max(r[1] for r in row.values()):9.0f}")
    total = 0.0
    for cell in study.cells():
        n = n_train(cell.dataset, study.data.size)
        samples = tr.steps * tr.batch_size if tr.steps else tr.epochs * n
        total += samples * cost[cell.group, cell.private, cell.multiplicity]
    spec = '%d steps x %d' % (tr.steps, tr.batch_size) if tr.steps else '%d epochs' % tr.epochs
    if device.type == "cuda":
        print(f"projected full grid ({len(study.cells())} cells, {spec} each): {total / 3600:.1f} GPU-hours of "
              f"compute; with {args.cells_per_gpu} cell(s) per GPU: {total / 3600 / args.cells_per_gpu:.1f} GPU-hours")
    else:
        print(f"projected full grid ({len(study.cells())} cells, {spec} each): {total / 3600:.1f} CPU-hours at "
              f"{args.threads} threads (= {math.ceil(total / 86400)} days on one such machine)")


if __name__ == "__main__":
    from reproduce.errors import ReproduceError
    try:
        main()
    except ReproduceError as e:
        raise SystemExit(f"error: {e}") from None

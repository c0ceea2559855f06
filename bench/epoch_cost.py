"""Cost of one DP epoch per group of a paper study, and the projected cost of its full grid.

Times a few DP-SGD steps (the trainer's own path: OutputGradientEngine + exact escnn rules, K augmented views
per sample, view-averaged before clipping) on stand-in data of the dataset's shape, per group, then
extrapolates: epoch = N_train x seconds per sample; full grid = sum over cells of training samples
x seconds per sample (non-DP cells timed the same way without per-sample gradients).
Prints; asserts nothing. Run on the machine you want the projection for (2 CPU threads by default).

    python bench/epoch_cost.py studies/bridging_the_gap.yaml [--threads 2] [--batch 32] [--steps 3]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch
import torch.nn.functional as F

from reproduce.data.augment import augment_views, average_view_grad_samples
from reproduce.models import build_model, count_parameters
from reproduce.smoke import dataset_shape
from reproduce.study import load_study

TRAIN_SIZES = {"cifar10": 45000}


def n_train(name: str, size: int) -> int:
    if name in TRAIN_SIZES:
        return TRAIN_SIZES[name]
    from medmnist.info import INFO
    return INFO[name]["n_samples"]["train"]


def seconds_per_sample(study, group: str, *, private: bool, K: int, batch: int, steps: int, side: int,
                       channels: int, classes: int) -> tuple[float, int]:
    model = build_model(group=group, widths=study.model.widths_for(group), in_channels=channels,
                        num_classes=classes, restrict=study.model.restrict_for(group),
                        fix_params=study.model.fix_params, basis=study.model.basis,
                        weight_standardisation=study.model.weight_standardisation)
    params = count_parameters(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if private:
        from opacus.optimizers import DPOptimizer
        from reproduce.privacy.fast_engine import OutputGradientEngine
        engine = OutputGradientEngine(model)  # refuses layers without exact rules
        opt = DPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, side, side)
    y = torch.randint(0, classes, (batch,))
    times = []
    for i in range(steps + 1):   # the first step warms up
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        views = augment_views(x, K, kind="cifar" if side == 32 else "medmnist", generator=gen)
        loss = F.cross_entropy(model(views), y.repeat_interleave(K) if K > 1 else y)
        if private:
            engine.backward(loss)
            average_view_grad_samples(model.parameters(), K)
        else:
            loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] / batch, params


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("study")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="samples per timed step (x K views)")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    study = load_study(args.study)
    tr = study.training
    cost: dict[tuple, float] = {}
    dataset0 = study.grid.dataset[0]
    info, side = dataset_shape(dataset0, size=study.data.size)
    print(f"{study.name}: {args.threads} threads, timed on {args.batch} samples x K views of {side}x{side}x{info.n_channels}")
    print(f"{'group':6} {'DP':>3} {'K':>2} {'params':>10} {'ms/sample':>10} {'DP epoch of ' + dataset0:>24}")
    for group in study.grid.group:
        for private in sorted({c.private for c in study.cells()}, reverse=True):
            for K in study.grid.multiplicity:
                s, params = seconds_per_sample(study, group, private=private, K=K, batch=args.batch, steps=args.steps,
                                               side=side, channels=info.n_channels, classes=info.num_classes)
                cost[group, private, K] = s
                epoch = n_train(dataset0, study.data.size) * s
                print(f"{group:6} {'yes' if private else 'no':>3} {K:>2} {params:>10,} {1000 * s:10.2f} {epoch / 60:20.1f} min")
    total = 0.0
    for cell in study.cells():
        n = n_train(cell.dataset, study.data.size)
        samples = tr.steps * tr.batch_size if tr.steps else tr.epochs * n
        total += samples * cost[cell.group, cell.private, cell.multiplicity]
    print(f"projected full grid ({len(study.cells())} cells, "
          f"{'%d steps x %d' % (tr.steps, tr.batch_size) if tr.steps else '%d epochs' % tr.epochs} each): "
          f"{total / 3600:.1f} CPU-hours at {args.threads} threads (= {math.ceil(total / 86400)} days on one such machine)")


if __name__ == "__main__":
    main()

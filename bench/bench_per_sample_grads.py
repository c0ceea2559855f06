"""Cost of exact per-sample gradients for the suite's ResNet-9s (CPU): ratios measured in one run.

Rows: the C4 ResNet-9 (8-16-32 fields) and the conventional one (8-16-32 channels), 28x28x3 input,
at each batch size with K = 1 and, at the first batch size, with K = 4 augmented views per sample
(the trainer's ``training_views``; DP steps average a sample's view gradients before clipping).
Steps compared, all on the same model and batch:
  (a) non-private step: loss.backward() + SGD
  (b) the suite's DP step: OutputGradientEngine (one backward to the layer outputs + the exact
      EquivariantConv2d rule) + opacus DPOptimizer (flat clipping over all parameters, noise)
  (b') opacus hooks mode with the suite's rule (GradSampleModule) + DPOptimizer
  (c) opacus hooks mode with its automatic functorch fallback for EquivariantConv2d (rule removed)
  (d) whole-model torch.func vmap(grad) per-sample gradients + DPOptimizer
  (e) conventional model only: (b) with opacus's own nn.Conv2d rule (made layout-safe) instead of the suite's
(c) and (d) run for C4 at K = 1 only; memory and the time breakdown for the C4 K = 1 rows.
Timing (wall clock and process CPU time): methods interleaved round-robin so that changing machine
load hits all alike; in each round every method runs one untimed step and then one timed step (so
each timed step finds the heap as its own previous step left it, as in training); median of --steps
timed steps after --warmup rounds, plus the median over rounds of each round's paired ratio. Peak
memory: (a) and (b) each in a fresh process, peak RSS during its steps (VmHWM reset after set-up).
Then where the time goes: the parts of (a) and (b), and every layer's rule against opacus'
functorch fallback on the same captured inputs and output gradients.

On a shared machine the step times drift by up to 10x between quiet and busy periods; compare
ratios from one run (and the paired ratios), never absolute times across runs.

Usage: python bench/bench_per_sample_grads.py [--batches 64 256] [--steps 10] [--threads 2]
       [--models C4 e] [--multiplicities 1 4] [--device cpu|cuda] [--methods ...] [--no-memory]
       [--profile-steps 5] [--json FILE]   (FILE: every row's medians, ratios and peak GPU memory)
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import statistics
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

warnings.filterwarnings("ignore")

WIDTHS = (8, 16, 32)
NUM_CLASSES = 9
METHODS = ["nonprivate", "dp_engine", "dp_hooks", "functorch_fallback", "vmap_model", "dp_engine_opacus_conv"]
#: methods that make sense for the conventional model (no EquivariantConv2d rule to hide) and for K > 1
CONVENTIONAL_METHODS = ["nonprivate", "dp_engine", "dp_hooks", "dp_engine_opacus_conv"]
VIEW_METHODS = ["nonprivate", "dp_engine", "dp_hooks"]


def build_model(group: str = "C4") -> tuple[nn.Module, str]:
    """The suite's ResNet-9 for ``group`` ("C4" or the conventional "e"), widths 8-16-32; for C4 a
    simple stand-in of the same layout if the models do not build."""
    try:
        from reproduce.models import build_model as build

        return build(
            group=group, widths=WIDTHS, in_channels=3, num_classes=NUM_CLASSES
        ), f"reproduce.models.build_model(group={group!r}, widths=(8, 16, 32))"
    except Exception as e:  # noqa: BLE001 - the bench must run while the models are in progress
        if group != "C4":
            raise
        return _StandIn(), f"bench stand-in ResNet-9 (reproduce.models failed: {type(e).__name__}: {e})"


class _StandIn(nn.Module):
    def __init__(self):
        super().__init__()
        from escnn import gspaces
        from escnn import nn as enn

        from reproduce.models.escnn_conv import EquivariantConv2d

        np.random.seed(0)
        torch.manual_seed(0)
        gs = gspaces.rot2dOnR2(4)
        t = [enn.FieldType(gs, [gs.trivial_repr] * 3)] + [enn.FieldType(gs, [gs.regular_repr] * w) for w in WIDTHS]
        conv = lambda a, b: EquivariantConv2d(a, b, 3, padding=1)  # noqa: E731
        self.convs = nn.ModuleList(
            [
                conv(t[0], t[1]),
                conv(t[1], t[2]),
                conv(t[2], t[2]),
                conv(t[2], t[2]),
                conv(t[2], t[3]),
                conv(t[3], t[3]),
                conv(t[3], t[3]),
                conv(t[3], t[3]),
            ]
        )
        self.head = nn.Linear(WIDTHS[2], NUM_CLASSES)

    def forward(self, x):
        block = lambda i, x, pool=False: F.group_norm(  # noqa: E731
            F.max_pool2d(F.mish(self.convs[i](x)), 2) if pool else F.mish(self.convs[i](x)), 8
        )
        x = block(1, block(0, x), pool=True)
        x = x + block(3, block(2, x))
        x = block(5, block(4, x, pool=True), pool=True)
        x = x + block(7, block(6, x))
        x = x.view(x.shape[0], WIDTHS[2], 4, *x.shape[2:]).amax(2).mean((2, 3))
        return self.head(x)


def make_step(method: str, model: nn.Module, n: int, multiplicity: int = 1):
    """A closure running one full training step of ``method`` on a batch of size ``n``.

    With ``multiplicity`` K > 1 the step takes K augmented views per sample (the trainer's
    ``training_views``), and the DP steps average each sample's view gradients before clipping.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from reproduce.data.augment import average_view_grad_samples, training_views
    from reproduce.models.escnn_conv import EquivariantConv2d
    from reproduce.privacy.fast_engine import OutputGradientEngine

    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)

    device = next(model.parameters()).device

    def views(x, y):
        v, t = training_views(x, y, multiplicity, kind="medmnist", generator=gen)
        return v.to(device), t.to(device)

    if method == "nonprivate":

        def step(x, y):
            sgd.zero_grad()
            v, t = views(x, y)
            F.cross_entropy(model(v), t).backward()
            sgd.step()

        return step
    opt = DPOptimizer(sgd, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=n)
    if method in ("dp_engine", "dp_engine_opacus_conv"):
        engine = OutputGradientEngine(model)
        registry = GradSampleModule.GRAD_SAMPLERS
        if method == "dp_engine_opacus_conv":  # opacus's own nn.Conv2d rule, on contiguous tensors
            from opacus.grad_sample.conv import compute_conv_grad_sample

            from reproduce.privacy.grad_samplers.layout import layout_safe

            swap = {nn.Conv2d: layout_safe(compute_conv_grad_sample)}
        else:
            swap = {}

        def step(x, y):
            v, t = views(x, y)
            loss = F.cross_entropy(model(v), t)
            saved = {k: registry[k] for k in swap}
            registry.update(swap)
            try:
                engine.backward(loss)
            finally:
                registry.update(saved)
            average_view_grad_samples(params, multiplicity)
            opt.step()
            opt.zero_grad()

        return step
    if method in ("dp_hooks", "functorch_fallback"):
        registry = GradSampleModule.GRAD_SAMPLERS
        # opacus looks the rule up when the hooks are added and again in every backward
        hide_rule = method == "functorch_fallback"

        def without_rule(f):
            rule = registry.pop(EquivariantConv2d) if hide_rule else None
            try:
                return f()
            finally:
                if rule is not None:
                    registry[EquivariantConv2d] = rule

        gsm = without_rule(lambda: GradSampleModule(model))

        def step(x, y):
            v, t = views(x, y)
            without_rule(lambda: F.cross_entropy(gsm(v), t).backward())
            average_view_grad_samples(params, multiplicity)
            opt.step()
            opt.zero_grad()

        return step
    if method == "vmap_model":
        from torch.func import functional_call, grad, vmap

        def sample_loss(params, x, y):
            return F.cross_entropy(functional_call(model, params, (x[None],)), y[None])

        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))

        def step(x, y):
            params = {k: p.detach() for k, p in model.named_parameters()}
            grads = per_sample(params, x, y)
            for k, p in model.named_parameters():
                p.grad_sample = grads[k]
            opt.step()
            opt.zero_grad()

        return step
    raise ValueError(method)


def batch(n: int):
    g = torch.Generator().manual_seed(n)
    return torch.randn(n, 3, 28, 28, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(model, n, methods, warmup, steps, multiplicity=1):
    """Wall-clock and process-CPU seconds of every timed step, per method (the batch starts on the CPU,
    as the trainer's loader gives it; the views go to the model's device)."""
    x, y = batch(n)
    device = next(model.parameters()).device
    fns = {m: make_step(m, model, n, multiplicity) for m in methods}
    wall, cpu = {m: [] for m in methods}, {m: [] for m in methods}
    for i in range(warmup + steps):
        for m in methods:
            fns[m](x, y)  # untimed: leaves the heap as this method's own previous step does
            _sync(device)
            t, c = time.perf_counter(), time.process_time()
            fns[m](x, y)
            _sync(device)
            if i >= warmup:
                wall[m].append(time.perf_counter() - t)
                cpu[m].append(time.process_time() - c)
    return wall, cpu


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _memory_child(method, n, threads, queue):
    torch.set_num_threads(threads)
    model, _ = build_model()
    step = make_step(method, model, n)
    x, y = batch(n)
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    for _ in range(3):
        step(x, y)
    peak = _status_mib("VmHWM")
    queue.put((peak, peak - before))


def peak_memory(method, n, threads):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_memory_child, args=(method, n, threads, queue))
    p.start()
    result = queue.get()
    p.join()
    return result


def where_time_goes(model, n, rounds, fallback_step=None):
    """Median wall ms of the parts of (a) and (b), and of each layer's rule: suite vs functorch.

    ``fallback_step``: median wall seconds of (c), to print the bound on (c)/(b) that the shared
    parts (forward, backward to the layer inputs, optimizer) set even if the rules cost nothing."""
    from opacus import GradSampleModule
    from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
    from opacus.optimizers import DPOptimizer

    from reproduce.privacy.fast_engine import OutputGradientEngine

    x, y = batch(n)
    plain, private = copy.deepcopy(model), copy.deepcopy(model)
    sgd = torch.optim.SGD(plain.parameters(), lr=1e-3)
    engine = OutputGradientEngine(private)
    opt = DPOptimizer(
        torch.optim.SGD(private.parameters(), lr=1e-3), noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=n
    )
    registry = GradSampleModule.GRAD_SAMPLERS
    rules = dict(registry)
    rule_time = {"t": 0.0}

    def timed(f):
        def rule(layer, a, b):
            t = time.perf_counter()
            r = f(layer, a, b)
            rule_time["t"] += time.perf_counter() - t
            return r

        return rule

    parts = {
        k: []
        for k in (
            "(a) forward",
            "(a) backward",
            "(a) SGD step",
            "(b) forward",
            "(b) backward to the layer outputs",
            "(b) per-sample rules, all layers",
            "(b) DPOptimizer (norms, clip, noise, SGD)",
        )
    }
    registry.update({cls: timed(f) for cls, f in rules.items()})
    try:
        for i in range(rounds + 1):
            for timed_round in (False, True):
                t0 = time.perf_counter()
                loss = F.cross_entropy(plain(x), y)
                t1 = time.perf_counter()
                loss.backward()
                t2 = time.perf_counter()
                sgd.step()
                sgd.zero_grad()
                t3 = time.perf_counter()
                rule_time["t"] = 0.0
                loss = F.cross_entropy(private(x), y)
                t4 = time.perf_counter()
                engine.backward(loss)
                t5 = time.perf_counter()
                opt.step()
                opt.zero_grad()
                t6 = time.perf_counter()
                if timed_round and i > 0:
                    for k, v in zip(
                        parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4 - rule_time["t"], rule_time["t"], t6 - t5)
                    ):
                        parts[k].append(v)
    finally:
        registry.update(rules)
    print(f"  where the time goes (median ms of {rounds} steps; backward to the outputs = engine.backward - rules):")
    med = {k: statistics.median(v) for k, v in parts.items()}
    for k, v in med.items():
        print(f"    {k:45s} {1e3 * v:7.0f}")
    # (a)'s backward minus (b)'s backward to the outputs = the batch weight gradients and the basis-
    # expansion backward, which (b) skips. The rules cannot beat it by much: a per-sample filter
    # gradient has the same multiply-adds as the batch one (it only omits the sum over samples).
    skipped = med["(a) backward"] - med["(b) backward to the layer outputs"]
    rules_s = med["(b) per-sample rules, all layers"]
    print(
        f"    batch weight gradients that (b) skips ~{1e3 * skipped:.0f} ms; (b)'s rules cost "
        f"{rules_s / skipped:.1f}x that"
        if skipped > 0
        else "    (b) skips no measurable batch-gradient time"
    )
    if fallback_step is not None:
        shared = (
            med["(b) forward"]
            + med["(b) backward to the layer outputs"]
            + med["(b) DPOptimizer (norms, clip, noise, SGD)"]
        )
        print(
            f"    bound on (c)/(b) if the suite's rules cost nothing: {fallback_step / shared:.2f}; "
            f"if they cost just the skipped batch weight gradients: {fallback_step / (shared + max(skipped, 0)):.2f}"
        )

    # Each layer's per-sample gradients from the same captured inputs and output gradients.
    loss = F.cross_entropy(private(x), y)
    captured = engine._captured
    engine._captured = []
    grads = torch.autograd.grad(loss, [c.output for c in captured])
    print("  per-sample gradient rule per layer, median ms: suite rule vs opacus' functorch fallback")
    total = {"suite": 0.0, "functorch": 0.0}
    for (name, layer, a, *_), g in zip(captured, grads):
        g = g * n
        fns = {
            "suite": lambda layer=layer, a=a, g=g: rules[type(layer)](layer, [a], g),
            "functorch": lambda layer=layer, a=a, g=g: ft_compute_per_sample_gradient(layer, [a], g),
        }
        times = {k: [] for k in fns}
        for i in range(rounds + 1):
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                if i > 0:
                    times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k in total:
            total[k] += med[k]
        print(
            f"    {name:14s} {type(layer).__name__:18s} out {str(tuple(g.shape[1:])):15s} "
            f"suite {1e3 * med['suite']:6.1f}  functorch {1e3 * med['functorch']:6.1f}  "
            f"ratio {med['functorch'] / med['suite']:5.1f}"
        )
    print(
        f"    {'all layers':72s} suite {1e3 * total['suite']:6.0f}  functorch {1e3 * total['functorch']:6.0f}"
        f"  ratio {total['functorch'] / total['suite']:5.1f}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--profile-steps", type=int, default=5, help="steps for the time breakdown (0: skip)")
    ap.add_argument("--models", nargs="+", default=["C4", "e"], choices=["C4", "e"])
    ap.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda (TF32 off, as in training); on CUDA the "
        "memory and time-breakdown sections are replaced by the peak GPU memory",
    )
    ap.add_argument(
        "--multiplicities",
        type=int,
        nargs="+",
        default=[1, 4],
        help="K views per sample; K > 1 rows run at the first batch size only",
    )
    ap.add_argument("--json", help="write every row's figures (medians, ratios, peak GPU memory) to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from reproduce.device import configure_determinism, resolve_device

    device = resolve_device(args.device)
    configure_determinism(device)
    print(
        f"torch {torch.__version__}, {args.threads} threads, median of {args.steps} interleaved steps after "
        f"{args.warmup} warm-up"
    )
    rows = [
        (g, k, n)
        for g in args.models
        for k in args.multiplicities
        for n in (args.batches if k == 1 else args.batches[:1])
    ]
    figures = []
    for group, k, n in rows:
        model, origin = build_model(group)
        model = model.to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        n_params = sum(p.numel() for p in model.parameters())
        allowed = VIEW_METHODS if k > 1 else CONVENTIONAL_METHODS if group == "e" else METHODS
        methods = [m for m in args.methods if m in allowed and (group == "e" or m != "dp_engine_opacus_conv")]
        wall, cpu = time_interleaved(model, n, methods, args.warmup, args.steps, k)
        med = statistics.median
        print(
            f"\n{group} ResNet-9 ({origin}; {n_params} parameters), batch {n}, K = {k} "
            f"({n * k} views): median step [ms] wall / process CPU: "
            + ", ".join(f"{m} {1e3 * med(wall[m]):.0f} / {1e3 * med(cpu[m]):.0f}" for m in methods)
        )
        print(
            "  ratios of medians (wall, CPU); in brackets the median over rounds of the ratio of the two "
            "adjacent steps of a round (robust to load changes between rounds)"
        )
        figure = {
            "group": group,
            "multiplicity": k,
            "batch": n,
            "parameters": n_params,
            "model": origin,
            "device": device.type,
            "median_wall_s": {m: med(wall[m]) for m in methods},
            "median_cpu_s": {m: med(cpu[m]) for m in methods},
            "ratios": {},
        }
        figures.append(figure)
        ratios = [
            ("(b)/(a) ", "suite DP step / non-private step", "dp_engine", "nonprivate"),
            ("(b')/(a)", "opacus hooks + suite rule / non-private", "dp_hooks", "nonprivate"),
            ("(c)/(b) ", "opacus functorch fallback / suite DP step", "functorch_fallback", "dp_engine"),
            ("(d)/(b) ", "whole-model vmap / suite DP step", "vmap_model", "dp_engine"),
            ("(e)/(b) ", "engine + opacus's Conv2d rule / suite", "dp_engine_opacus_conv", "dp_engine"),
        ]
        for label, what, num, den in ratios:
            if num in wall and den in wall:
                paired = med([a / b for a, b in zip(wall[num], wall[den])])
                figure["ratios"][f"{num}/{den}"] = {
                    "wall": med(wall[num]) / med(wall[den]),
                    "paired": paired,
                    "cpu": med(cpu[num]) / med(cpu[den]),
                }
                print(
                    f"  {label} {what:42s} = {med(wall[num]) / med(wall[den]):.2f} wall, "
                    f"{med(cpu[num]) / med(cpu[den]):.2f} CPU [{paired:.2f}]"
                )
        if device.type == "cuda":
            figure["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            print(f"  peak GPU memory over all methods of this row: {figure['peak_gpu_mib']:.0f} MiB")
        elif group == "C4" and k == 1:  # memory and the time breakdown for the reference rows
            if not args.no_memory:
                for m in ("nonprivate", "dp_engine"):
                    peak, inc = peak_memory(m, n, args.threads)
                    print(
                        f"  peak RSS during steps, {m:10s}: {peak:6.0f} MiB (+{inc:.0f} MiB over the RSS before them)"
                    )
            if args.profile_steps:
                fallback = med(wall["functorch_fallback"]) if "functorch_fallback" in wall else None
                where_time_goes(model, n, args.profile_steps, fallback)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "torch": torch.__version__,
                    "threads": args.threads,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "rows": figures,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()

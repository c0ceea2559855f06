"""DP / non-private training throughput of a study's groups through the real trainers, paired in one run.

What the default study's ``run.json`` files compare (``samples_per_second`` of a DP cell and of its
non-private twin) is one run of each, minutes apart; on a shared 2-core VM one such ratio moves by
10-15 % between runs. This benchmark measures the same thing in one process with the two runs
interleaved: the cells' own ``PrivateTrainer`` and ``PlainTrainer`` (``for_cell``: Poisson batches
split into the study's micro-batches, the exact per-sample rules, clipping, noise and the DP
optimizer; shuffled batches and SGD), each driven by the loop's calls (per micro-batch
``forward_backward``, the tracker's alignment cosines and ``step``; per optimizer step the tracker's
``after_step``), one logical step of one, then one of the other, alternating which goes first. Per
group it prints microseconds per training sample of each phase (data, forward+backward, alignment,
step with ``after_step``) and the DP/non-private ratio three ways: of the
totals (what ``samples_per_second`` compares), of the medians over logical steps, and of the fastest
steps (the machine's quietest moments: the cost of the arithmetic itself).

    python bench/trainer_throughput.py [studies/default.yaml] [--groups e C4] [--steps 40]
        [--physical-batch-size N] [--threads 2]

Stand-in data of the dataset's shape would do as well (the arithmetic does not depend on the
values); the embedded dataset is used because it is there offline. Asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

PHASES = ("data", "forward_backward", "alignment", "step")


class _Run:
    """One trainer and its tracker, stepped a logical batch at a time, with per-phase totals."""

    def __init__(self, cell, splits, study):
        from reproduce.models import build_cell_model
        from reproduce.training.cell import training_set
        from reproduce.training.plain import PlainTrainer
        from reproduce.training.private import PrivateTrainer
        from reproduce.training.tracker import StepTracker

        torch.manual_seed(cell.seed)
        info = splits.info
        model = build_cell_model(cell, in_channels=info.n_channels, num_classes=info.num_classes)
        train_set = training_set(
            splits, max_samples=study.training.max_train_samples, task=info.task, device=torch.device("cpu"), audit=None
        )
        self.trainer = (PrivateTrainer if cell.private else PlainTrainer).for_cell(
            cell, model, train_set, task=info.task
        )
        self.tracker = StepTracker(model, task=info.task, every=study.training.log_every)
        self.totals: dict[str, float] = collections.defaultdict(float)
        self.samples = self.micro_batches = 0
        self.per_sample: list[float] = []  # seconds per sample of each timed logical step
        self._batches = self._forever()
        self._step = 0

    def _forever(self):
        while True:
            yield from self.trainer.batches()

    def logical_step(self, timed: bool) -> None:
        self._step += 1
        self.trainer.record_next_step(self.tracker.due(self._step))
        start, samples = time.perf_counter(), 0
        while True:
            t0 = time.perf_counter()
            x, y = next(self._batches)
            t1 = time.perf_counter()
            loss, targets = self.trainer.forward_backward(x, y)
            t2 = time.perf_counter()
            self.tracker.record_batch(targets)
            t3 = time.perf_counter()
            stepped = self.trainer.step()
            t4 = time.perf_counter()
            samples += len(x)
            if timed:
                for phase, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    self.totals[phase] += dt
                self.samples += len(x)
                self.micro_batches += 1
            if stepped:
                break
        # what the loop does after each optimizer step (logged steps: sparsity, clipping diagnostics)
        t0 = time.perf_counter()
        self.tracker.after_step(
            self._step, 0, loss, clipped=self.trainer.clipped_update, diagnostics=self.trainer.step_diagnostics
        )
        if timed:
            self.totals["step"] += time.perf_counter() - t0
        if timed and samples:
            self.per_sample.append((time.perf_counter() - start) / samples)

    def us_per_sample(self) -> float:
        return sum(self.totals.values()) / self.samples * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study", nargs="?", default="studies/default.yaml")
    ap.add_argument("--groups", nargs="+", default=None, help="default: the study's groups")
    ap.add_argument("--steps", type=int, default=40, help="timed logical steps of each trainer")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--physical-batch-size", type=int, default=None, help="override the study's (DP only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-root", default="data")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from reproduce.data import load_dataset
    from reproduce.privacy.heap import keep_freed_memory
    from reproduce.study import load_study

    keep_freed_memory()  # as run_cell does, for both trainers
    study = load_study(args.study)
    if args.physical_batch_size is not None:
        study = study.model_copy(
            update={"training": study.training.model_copy(update={"physical_batch_size": args.physical_batch_size})}
        )
    cells = study.cells()
    groups = args.groups or list(dict.fromkeys(c.group for c in cells))
    print(
        f"{args.study}: batch {study.training.batch_size}, physical batch {study.training.physical_batch_size}, "
        f"{args.threads} threads, {args.steps} timed logical steps per trainer"
    )
    for group in groups:
        mine = [c for c in cells if c.group == group and c.multiplicity == cells[0].multiplicity]
        private = next((c for c in mine if c.private), None)
        plain = (
            None
            if private is None
            else next(
                (c for c in mine if not c.private and c.seed == private.seed and c.dataset == private.dataset), None
            )
        )
        if plain is None:
            print(f"  {group}: skipped (the study has no DP cell with a non-private twin for it)")
            continue
        splits = load_dataset(private.dataset, root=Path(args.data_root), options=study.data)
        runs = {"non-private": _Run(plain, splits, study), "DP": _Run(private, splits, study)}
        for i in range(args.warmup + args.steps):
            order = ("DP", "non-private") if i % 2 else ("non-private", "DP")
            for name in order:
                runs[name].logical_step(timed=i >= args.warmup)
        for name, run in runs.items():
            parts = " ".join(f"{p} {run.totals[p] / run.samples * 1e6:.0f}" for p in PHASES)
            print(
                f"  {group} {name:11s} {run.micro_batches} micro-batches of {run.samples / run.micro_batches:.0f} "
                f"on average; us per sample: {parts}; total {run.us_per_sample():.0f}"
            )
        dp, np_ = runs["DP"], runs["non-private"]
        print(
            f"  {group} DP/non-private: totals {dp.us_per_sample() / np_.us_per_sample():.3f}, "
            f"medians {statistics.median(dp.per_sample) / statistics.median(np_.per_sample):.3f}, "
            f"fastest steps {min(dp.per_sample) / min(np_.per_sample):.3f}"
        )


if __name__ == "__main__":
    main()

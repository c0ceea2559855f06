"""Training progress: an in-place bar on a terminal, a bounded number of plain lines in a log file."""

from __future__ import annotations

import io
import itertools
import re

import torch

from reproduce.training.progress import Progress

LINE = re.compile(r"^cell-x: step (\d+)/(\d+) \(\d+%\), epoch \d+, loss \d+\.\d{3}, \d+ samples/s$")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(stream, *, total=2000, clock=None, initial=0):
    with Progress(
        total=total,
        initial=initial,
        seen=64 * initial,
        label="cell-x",
        stream=stream,
        **({"clock": clock} if clock else {}),
    ) as bar:
        for step in range(initial + 1, total + 1):
            bar.update(step=step, epoch=step // 100, loss=torch.tensor(1.0 / step), seen=64 * step)
    return stream.getvalue()


def test_a_log_file_gets_a_line_every_5_percent_of_the_steps_with_every_field():
    lines = _run(io.StringIO()).splitlines()
    assert 20 <= len(lines) <= 21 and "\r" not in "".join(lines), lines[:3]
    assert all(LINE.match(line) for line in lines), lines[:3]
    assert lines[-1].startswith("cell-x: step 2000/2000 (100%), epoch 20, loss 0.001,")


def test_a_slow_run_also_gets_a_line_every_30_seconds():
    clock = itertools.count(0.0, 10.0).__next__  # 10 s per step: 5% of the steps (5) take 50 s
    lines = _run(io.StringIO(), total=100, clock=clock).splitlines()
    steps = [int(LINE.match(line).group(1)) for line in lines]
    assert steps[0] == 3 and max(b - a for a, b in zip(steps, steps[1:])) <= 3 and steps[-1] == 100, steps
    assert all(line.endswith(" 6 samples/s") for line in lines), lines[:3]  # 64 samples per 10 s


def test_a_resumed_run_counts_from_its_checkpoint_step():
    lines = _run(io.StringIO(), total=100, initial=50).splitlines()
    assert LINE.match(lines[0]) and lines[0].startswith("cell-x: step 55/100") and len(lines) <= 11, lines


def test_a_terminal_keeps_the_in_place_bar():
    out = _run(_Terminal(), total=50)
    assert "\r" in out and "50/50" in out and not any(LINE.match(line) for line in out.splitlines())


def test_disabled_progress_prints_nothing():
    stream = io.StringIO()
    with Progress(total=10, label="cell-x", stream=stream, enabled=False) as bar:
        bar.update(step=1, epoch=0, loss=torch.tensor(1.0), seen=64)
    assert stream.getvalue() == ""

"""Live progress of a study run: one line per change of a cell's state, with the running totals."""

from __future__ import annotations

import sys
import time
from typing import TextIO

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATES = (PENDING, RUNNING, DONE, FAILED)


class Progress:
    """Tracks every cell of a study in one of ``STATES`` and prints a line whenever one changes.

    A line reads ``[12:03:04] embedded-e-8-1-0: running (job 41_1, log .reproduce/logs/...) |
    pending 2, running 2, done 3/8, failed 1`` - plain text, so it reads the same in a terminal, a
    CI log or a SLURM submit host's ``nohup`` file.
    """

    def __init__(self, cells: list[str], *, stream: TextIO | None = None):
        self.state = {c: PENDING for c in cells}
        self.detail: dict[str, str] = {}
        self.stream = stream or sys.stdout
        self.changes: list[tuple[str, str]] = []  # (cell, state) in order, for tests and summaries

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for s in self.state.values():
            out[s] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        return f"pending {c[PENDING]}, running {c[RUNNING]}, done {c[DONE]}/{len(self.state)}, failed {c[FAILED]}"

    def print(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=self.stream, flush=True)

    def set(self, cell: str, state: str, detail: str = "", *, quiet: bool = False) -> bool:
        """Record ``cell``'s state; print a line if it (or its detail) changed. Returns whether it did."""
        assert state in STATES, state
        if self.state.get(cell) == state and self.detail.get(cell, "") == detail:
            return False
        self.state[cell] = state
        self.detail[cell] = detail
        self.changes.append((cell, state))
        if not quiet:
            self.print(f"{cell}: {state}{f' ({detail})' if detail else ''} | {self.summary()}")
        return True

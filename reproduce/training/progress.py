"""Training progress fit for a terminal and for a log: tqdm's in-place bar on a TTY; elsewhere (DVC,
SLURM, ``reproduce run`` logs) a plain line every ``SHARE`` of the steps or every ``SECONDS``,
whichever comes first, instead of the bar's one redraw per step.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, TextIO

#: share of the steps between two log lines, and the most seconds between two
SHARE = 0.05
SECONDS = 30.0


class Progress:
    """Progress of one cell's training; a context manager, closed (the bar's line ended) on any exit.

    Args:
        total: The optimizer steps of the whole run.
        initial: Steps already done (a resumed run).
        seen: Samples already drawn (a resumed run's, not counted in this run's rate).
        label: The cell id.
        stream: Where to write (default stderr); a TTY gets the bar, anything else plain lines.
        enabled: False prints nothing.
        clock: Seconds, for the rate and the interval (a test's fake clock).
    """

    def __init__(
        self,
        *,
        total: int,
        label: str,
        initial: int = 0,
        seen: int = 0,
        stream: TextIO | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.label, self.clock = total, label, clock
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, unit="step", file=self.stream, dynamic_ncols=True)
        self.every = max(1, math.ceil(SHARE * total))
        self.next_step = (initial // self.every + 1) * self.every
        self.start = self.last = clock()
        self.seen0 = seen

    def update(self, *, step: int, epoch: int, loss, seen: int) -> None:
        """After optimizer step ``step`` (1-based) of ``epoch``, with ``seen`` samples drawn in all."""
        if not self.enabled:
            return
        now = self.clock()
        rate = (seen - self.seen0) / (now - self.start) if now > self.start else 0.0
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(epoch=epoch, loss=f"{_value(loss):.3f}", samples_s=f"{rate:.0f}")
        elif step >= self.next_step or now - self.last >= SECONDS or step == self.total:
            print(
                f"{self.label}: step {step}/{self.total} ({100 * step // self.total}%), epoch {epoch}, "
                f"loss {_value(loss):.3f}, {rate:.0f} samples/s",
                file=self.stream,
                flush=True,
            )
            self.next_step = (step // self.every + 1) * self.every
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _value(loss) -> float:
    # read only when shown: .item() waits for the GPU
    return loss.item() if hasattr(loss, "item") else float(loss)

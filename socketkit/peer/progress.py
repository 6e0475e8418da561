"""What a person sees while bytes move: a bar with rate and time left on a terminal (tqdm), one quiet line
per file otherwise, and nothing at all for a program that asked for silence."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Progress:
    """`update(n)` as bytes move; `close()` prints the summary line. On a terminal a tqdm bar; elsewhere
    nothing until the end (one line per file), so logs stay readable."""

    def __init__(self, label: str, total: int, *, initial: int = 0, out: TextIO | None = None,
                 quiet: bool = False) -> None:
        self.label = label
        self.total = total
        self.done = initial
        self.initial = initial
        self.out = out or sys.stderr
        self.quiet = quiet
        self.started = time.monotonic()
        self._bar = None
        if not quiet and self.out.isatty():
            from tqdm import tqdm

            try:
                size = os.get_terminal_size(self.out.fileno())
            except (OSError, ValueError):
                size = os.terminal_size((0, 0))
            # A terminal that reports no size (a bare pty, a serial console) gets 80x24: tqdm would draw
            # nothing at all for a screen 0 lines high.
            sized = size.columns > 0 and size.lines > 0
            self._bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1000,
                             desc=label[:30], file=self.out, dynamic_ncols=sized, ncols=None if sized else 80,
                             nrows=None if sized else 24, leave=True)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    @property
    def rate(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return (self.done - self.initial) / elapsed

    def close(self, verb: str, digest: str = "") -> None:
        if self._bar is not None:
            self._bar.close()
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        resumed = f", resumed at {human(self.initial)}" if self.initial else ""
        tail = f", sha256 {digest}" if digest else ""
        print(f"{verb} {self.label} ({human(self.total)}) in {elapsed:.1f}s, {human(self.rate)}/s{resumed}{tail}",
              file=self.out, flush=True)


__all__ = ["Progress", "human"]

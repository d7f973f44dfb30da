"""The load generator's progress line on stderr, so a 1.5-minute run never looks hung."""

from __future__ import annotations

import sys

from .openloop import RouteResult


class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.index = 0
        self.tty = sys.stderr.isatty()
        self.label = ""
        self.duration = 0.0

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def begin(self, label: str, duration: float) -> None:
        self.index += 1
        self.label = f"[{self.index}/{self.total}] {label}"
        self.duration = duration
        if not self.tty:
            print(f"{self.label}: {duration:.0f} s of load", file=sys.stderr, flush=True)

    def __call__(self, elapsed: float, results: list[RouteResult], in_flight: int) -> None:
        if not self.tty:
            return
        done = min(max(elapsed / self.duration, 0.0), 1.0)
        bar = "#" * round(done * 24) + "-" * (24 - round(done * 24))
        sent = sum(r.sent for r in results)
        answered = sum(r.ok + r.errors for r in results)
        draining = " draining" if elapsed > self.duration else ""
        print(
            f"\r{self.label} |{bar}| {min(elapsed, self.duration):4.1f}/{self.duration:.0f} s "
            f"sent {sent} answered {answered} in flight {in_flight}{draining}   ",
            end="",
            file=sys.stderr,
            flush=True,
        )

    def end(self, summary: str) -> None:
        if self.tty:
            print("\r\033[K", end="", file=sys.stderr)
        print(f"{self.label}: {summary}", file=sys.stderr, flush=True)

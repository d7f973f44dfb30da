"""The watchdog's thread and what wakes it: a due time, the loop's alarm while it is parked,
a stretch the loop hands over, or stop.

Awake, the thread sleeps on a ``threading.Event`` for as long as each look (``tick``) asks,
then looks again; a look that raises is counted (``on_error``) and retried after ``retry``
seconds, never fatal. Parked (``park``), it sleeps until the loop's poll returns and the loop
sounds the alarm, or ``PARKED`` at most. What each look does is ``watchdog.py``'s.

Who writes what: the stop and wake events, any thread; the queue of ended stretches and the
count handed over, the loop thread only; the count finished, this thread only (under the
condition ``settle`` waits on).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from time import perf_counter

from ..loop.stretch import Stretch

PARKED = 0.1
"""Seconds a parked watchdog sleeps at most: it still sees a loop stopped, closed or
restarted, with no alarm from the loop."""


class Wakeups:
    def __init__(
        self,
        name: str,
        *,
        tick: Callable[[float | None], float],
        turn: Callable[[Stretch], None],
        on_error: Callable[[], None],
        retry: float,
        on_exit: Callable[[], None],
    ) -> None:
        self._tick = tick  # one look, given when it was due; returns the seconds to sleep
        self._turn = turn  # an ended stretch into an event, or nothing
        self._on_error = on_error
        self._retry = retry
        self._on_exit = on_exit
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._ended: deque[Stretch] = deque()
        self._handed = 0  # stretches handed over by the loop thread (only it writes this)
        self._finished = 0  # of those, turned into events or dropped (only we write this)
        self._settled = threading.Condition()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- called from the loop thread ---------------------------------------------------------

    def hand_over(self, stretch: Stretch) -> None:
        self._handed += 1
        self._ended.append(stretch)
        self._wake.set()

    # -- called from any thread --------------------------------------------------------------

    def settle(self, timeout: float) -> bool:
        """Wait until every stretch handed over so far has been turned into an event (or
        dropped); False if that took longer than ``timeout`` seconds."""
        target = self._handed
        self._wake.set()
        with self._settled:
            return self._settled.wait_for(
                lambda: self._finished >= target or not self.thread.is_alive(), timeout
            )

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self._wake.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    # -- called from the watchdog thread -----------------------------------------------------

    def halt(self) -> None:
        """Stop after this look (the loop was closed under the watchdog)."""
        self._stop.set()

    def park(
        self, polling: Callable[[], bool], alarm: Callable[[Callable[[], None] | None], None]
    ) -> bool:
        """While the loop is quiet and polls, sleep until its poll returns (the loop sounds
        the alarm), not every threshold: an idle pod's watchdog then costs next to nothing,
        and a stall is still seen from its first moment."""
        if not polling():
            return False
        alarm(self._wake.set)
        if polling():  # still: the loop will wake us (the alarm is set before it looks)
            return True
        alarm(None)  # a stretch began meanwhile: watch it as usual
        return False

    def drain(self) -> None:
        """Turn every stretch handed over so far; one that fails is counted and dropped."""
        while self._ended:
            stretch = self._ended.popleft()
            try:
                self._turn(stretch)
            except Exception:
                self._on_error()
            with self._settled:
                self._finished += 1
                self._settled.notify_all()

    def _run(self) -> None:
        timeout = 0.0
        while not self._stop.is_set():
            intended = perf_counter() + timeout
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                # Woken or not: a wake-up that came long after it was due was held off (a
                # timed-out wait that was not scheduled before the wake can return as woken).
                timeout = self._tick(intended)
            except Exception:
                timeout = self._retry
                # Counted every time, logged the first time only: a failure that repeats on
                # every tick must not flood the log.
                self._on_error()
        self.drain()
        self._on_exit()

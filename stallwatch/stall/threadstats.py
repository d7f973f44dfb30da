"""What the OS says about the loop thread: CPU time, run-queue wait, the syscall it waits in.

These tell a loop that was *held* (its thread ran, or slept in a call it made) from one that
was *starved* (its thread wanted to run and did not). Each reader returns None where the
platform does not tell, and the cause is then decided without it.
"""

from __future__ import annotations

import os
import platform
import time

_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98, "i686": 240, "ppc64le": 221, "s390x": 238}


class ThreadStats:
    def __init__(self, thread_ident: int, native_id: int) -> None:
        self._clock: int | None = None
        try:
            self._clock = time.pthread_getcpuclockid(thread_ident)
            time.clock_gettime(self._clock)
        except (AttributeError, OSError):
            self._clock = None
        # Kept open and read with pread: an open() per read cost the watchdog tens of
        # microseconds per wake-up, most of its idle cost.
        task = f"/proc/self/task/{native_id}"
        self._schedstat = _open(f"{task}/schedstat")
        self._syscall = _open(f"{task}/syscall")
        self._futex = _FUTEX.get(platform.machine())

    def close(self) -> None:
        for fd in (self._schedstat, self._syscall):
            if fd is not None:
                os.close(fd)
        self._schedstat = self._syscall = None

    def cpu(self) -> float | None:
        """CPU seconds the thread has run, read from another thread."""
        if self._clock is None:
            return None
        try:
            return time.clock_gettime(self._clock)
        except OSError:
            return None

    def run_queue_wait(self) -> float | None:
        """Seconds the thread has waited for a CPU while runnable (Linux schedstat)."""
        if self._schedstat is None:
            return None
        try:
            return int(os.pread(self._schedstat, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    def waiting_on_lock(self) -> bool | None:
        """True while the thread sleeps in futex: the GIL, or a lock; None if unknown."""
        if self._syscall is None or self._futex is None:
            return None
        try:
            first = os.pread(self._syscall, 64, 0).split(maxsplit=1)[0]
        except (OSError, IndexError):
            return None
        if first == b"running":
            # In no syscall: on a CPU, or just woken by the GIL's hand-off and not yet there.
            # The watchdog reads this while it holds the GIL, so it tells nothing either way.
            return None
        return first.isdigit() and int(first) == self._futex


def _open(path: str) -> int | None:
    """A descriptor that answers a first read, or None (no such file, or not permitted)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        os.pread(fd, 64, 0)
    except OSError:
        os.close(fd)
        return None
    return fd

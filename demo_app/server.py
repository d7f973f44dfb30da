"""The demo the load generator starts for itself: on a free port, pinned to one CPU.

Pinning makes "the loop's capacity" one CPU that nothing else of the generator's takes, so
the calibration measures the server alone and a load of 85 % means the same thing in every
step. The generator and its probe keep the other CPUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import IO

import aiohttp

PACKAGE = __package__ or "demo_app"
"""``demo_app`` in a checkout, ``stallwatch.demo`` in an installed wheel: the demo is started
under the name this generator was imported by, so both work."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(the server's CPU, the generator's CPUs), or Nones where pinning is not possible."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def demo_command(port: int, mode: str, loop: str, threads: int, seed_rows: int | None) -> list[str]:
    command = [sys.executable, "-m", PACKAGE, "--port", str(port), "--mode", mode]
    command += ["--loop", loop, "--executor-threads", str(threads)]
    if seed_rows is not None:
        command += ["--seed-rows", str(seed_rows)]
    return command


@contextlib.contextmanager
def started_demo(
    command: Sequence[str],
    server_cpus: set[int] | None,
    own_cpus: set[int] | None,
    log: IO[bytes],
) -> Iterator[subprocess.Popen[bytes]]:
    # A child inherits its parent's CPU set: take the server's CPU for the moment of the
    # fork, then move this process to the others.
    if server_cpus:
        os.sched_setaffinity(0, server_cpus)
    try:
        proc = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT)
    finally:
        if own_cpus:
            os.sched_setaffinity(0, own_cpus)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_ready(
    client: aiohttp.ClientSession,
    base: str,
    proc: subprocess.Popen[bytes] | None,
    timeout: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the demo exited with status {proc.returncode} before it answered")
        try:
            async with client.get(base + "/demo/mode") as response:
                if response.status == 200:
                    return
        except (aiohttp.ClientError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the demo at {base} did not answer within {timeout:.0f} s")
        await asyncio.sleep(0.1)

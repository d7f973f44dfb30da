"""What every benchmark prints with its figures: the machine, the versions, the load on it.

Figures without the machine and the load they were measured under cannot be compared, so
each script prints these before and after it measures.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from importlib import metadata
from typing import Any, TypeVar

T = TypeVar("T")

PACKAGES = (
    "stallwatch",
    "uvicorn",
    "uvloop",
    "httptools",
    "h11",
    "starlette",
    "prometheus-client",
    "prometheus-fastapi-instrumentator",
    "starlette-exporter",
)


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def machine() -> dict[str, object]:
    return {
        "commit": commit(),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "versions": versions(),
    }


def print_machine(label: str) -> None:
    info = machine()
    print(f"# {label}")
    print(f"machine: nproc={info['nproc']} cpu={info['cpu']!r} kernel={info['kernel']}")
    print(f"python: {info['python']} ({info['implementation']}); commit {info['commit']}")
    pkgs = info["versions"]
    assert isinstance(pkgs, dict)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in pkgs.items()))
    print(f"loadavg before: {loadavg()}")
    sys.stdout.flush()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A fresh loop of ``kind`` ("asyncio" or "uvloop")."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_on(kind: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh loop of ``kind``, then close that loop."""
    loop = new_loop(kind)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        asyncio.set_event_loop(None)
        loop.close()

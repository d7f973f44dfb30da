"""Would compiling the request path make it cheaper? A trial, not a build option.

Issue 16 allows an optional compiled path. The cheapest one to build compiles the modules as
they are: Cython's pure-Python mode turns each ``.py`` into a C extension with no change to
the source (mypyc, the other candidate, refuses the request's awaitable). This script copies
``stallwatch/`` to a temporary folder, compiles the modules a request passes through there,
and runs ``benchmarks.components`` alternately against the pure copy and the compiled one, so
both sides share the machine's state of the moment. It needs Cython and a C compiler
(``pip install cython``); nothing it builds is left behind.

    flock /tmp/stallwatch-bench.lock python -m benchmarks.compiled_trial --rounds 3

Read the two ``stallwatch in all`` rows, and the tight-loop row of one step through a span.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ._common import loadavg, median, print_machine

HOT = (
    "middleware.py",
    "request/spans.py",
    "request/tasks.py",
    "request/tally.py",
    "loop/timeline.py",
    "loop/probes.py",
    "loop/heartbeat.py",
    "routes/__init__.py",
    "routes/starlette.py",
)
"""The modules a request and each loop iteration run through."""

_BUILD = """
import sys
from Cython.Build import cythonize
from setuptools import setup

sys.argv[1:] = ["build_ext", "--inplace", "-q"]
setup(ext_modules=cythonize({modules!r}, language_level=3, quiet=True,
      compiler_directives={{"annotation_typing": False, "binding": True}}))
"""

_ROWS = {
    "all": re.compile(r"\*\*stallwatch in all.*?\|\s*\+?([-\d.]+)\s*\|"),
    "step": re.compile(r"one step through RequestSpan.*?\|\s*(\d+)\s*\|"),
    "request": re.compile(r"whole request through StallwatchMiddleware, minus.*?\|\s*(\d+)\s*\|"),
}


def copy_tree(root: Path, into: Path) -> Path:
    shutil.copytree(
        root / "stallwatch",
        into / "stallwatch",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"),
    )
    shutil.copytree(
        root / "benchmarks", into / "benchmarks", ignore=shutil.ignore_patterns("__pycache__")
    )
    return into


def compile_hot(tree: Path) -> None:
    script = _BUILD.format(modules=[f"stallwatch/{name}" for name in HOT])
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tree, capture_output=True, text=True, check=False
    )
    built = sorted(tree.glob("stallwatch/**/*.so"))
    if done.returncode != 0 or len(built) != len(HOT):
        raise SystemExit(f"the compiled copy did not build:\n{done.stderr[-3000:]}")


def components(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.components",
        "--rounds",
        str(args.rounds),
        "--requests",
        str(args.requests),
        "--flavours",
        args.flavour,
        "--micro-n",
        str(args.micro_n),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=True)
    found = {}
    for name, pattern in _ROWS.items():
        match = pattern.search(out.stdout)
        if match is None:  # the report changed: fail, do not print a table with a hole
            raise SystemExit(f"no {name!r} row in benchmarks.components' report:\n{out.stdout}")
        found[name] = float(match.group(1))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="alternations (3)")
    parser.add_argument("--rounds", type=int, default=3, help="components' rounds per trial")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--micro-n", type=int, default=100_000)
    parser.add_argument("--flavour", default="standard", help="plain or standard")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("Cython") is None:
        parser.error("this trial needs Cython: pip install cython")
    print_machine("stallwatch compiled trial")
    root = Path(__file__).resolve().parent.parent
    before = loadavg()
    with tempfile.TemporaryDirectory() as pure_dir, tempfile.TemporaryDirectory() as built_dir:
        pure = copy_tree(root, Path(pure_dir))
        built = copy_tree(root, Path(built_dir))
        compile_hot(built)
        figures: dict[str, list[dict[str, float]]] = {"pure": [], "compiled": []}
        for trial in range(args.trials):
            for name, tree in (("pure", pure), ("compiled", built)):
                figures[name].append(components(tree, args))
                print(f"trial {trial + 1}/{args.trials} {name}: {figures[name][-1]}", flush=True)
    print(f"\n{args.flavour} server path, {args.trials} trials (medians)")
    print("| copy | stallwatch in all, CPU us/request | a request, tight loop, ns | a step, ns |")
    print("|---|---:|---:|---:|")
    for name, runs in figures.items():
        row = [median([r[key] for r in runs]) for key in ("all", "request", "step")]
        print(f"| {name} | +{row[0]:.2f} | {row[1]:.0f} | {row[2]:.0f} |")
    print(f"\nloadavg before: {before}\nloadavg after:  {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

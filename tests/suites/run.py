"""Prove that stallwatch is invisible to other projects' own test suites.

    python -m tests.suites.run [--only starlette,fastapi,anyio] [--workdir DIR]
                               [--stallwatch SOURCE_TREE]

For each project pinned in ``pins.py`` (Starlette, FastAPI, anyio), this downloads its sdist
(``pip download --no-binary :all: --no-deps``: the release as published, ``tests/``
included), unpacks it, makes a venv of its own with the interpreter running this script, and
installs there the project, its own test dependencies the way its CI does (Starlette's
``requirements.txt``, FastAPI's ``tests`` dependency group with a pip new enough for
``--group``, anyio's ``test`` extra), the few releases ``pins.py`` pins beside them (the
stack of the project's release date: today's releases deprecate what the old suites import,
and the suites turn warnings into errors), ``pytest-timeout``, and stallwatch from this
checkout (``--stallwatch`` names another source tree, e.g. an older commit's ``git archive``),
editable, so a rerun tests the code as it is now. Then it runs the project's own ``tests/``
twice, one run after the other (never two at once):

* bare: without stallwatch (its own pytest plugin, installed with it, is kept out with
  ``-p no:stallwatch``);
* wrapped: with ``wrap_plugin.py`` loaded, which puts ``StallwatchMiddleware`` in every
  request the tests make (every app a ``TestClient`` or ``httpx.ASGITransport`` serves), or,
  for anyio, which has no ASGI apps, runs every asyncio test as a request, so that every
  task the test creates is attributed to it (its docstring says why that way).

Both runs get the same flags: ``-p no:cacheprovider`` (nothing written into the sdist),
``-p no:randomly`` (the same order both times), ``-p no:sugar`` (plain output; FastAPI's
group installs pytest-sugar), the deselections ``pins.py`` lists with their reasons, and
a per-test ``--timeout`` from pytest-timeout. Coverage is never switched on (none of the
three projects' configs adds ``--cov``), so their ``addopts`` stay as they are.

A hang fails fast and costs one test, not the run. pytest-timeout's ``signal`` method cannot
do that for a request hung inside Starlette's ``TestClient``: it raises into the test once,
and the client's clean-up then waits forever for the portal thread the request holds. So the
timeout uses the ``thread`` method, which ends the pytest process at the hung test, and the
run resumes in a new process: ``journal_plugin.py`` (loaded in both runs; it only writes a
file) logs each test's start and results, the hung test is recorded as failed ("Timeout"),
and the next process deselects every test already done. A run is also held to a wall-clock
limit as a whole (``run_timeout``): past it, it is killed and counts as hung.

Outcomes per test id come from ``--junitxml`` (``junit_family=xunit1``, whose ``file``
attribute gives back pytest's node ids), and for a process that was ended, from its
journal. Printed per project: both runs' counts (passed, failed, errors, skipped), what the
plugin did, and every test that fails or errors in one run only, with its innermost error.
The exit status is 1 if any project's failing/erroring sets differ, a run hung, crashed or
was resumed past a hung test, or the wrapped run watched nothing (the plugin's counts: a
patch that silently stopped applying must not pass for "no difference"); 0 if every set is
equal. Failures a suite has bare in this environment (Starlette's two file permission
tests fail as root) are the same in both runs and do not count.

Where things go (``--workdir``, default ``build/suites/``, which git ignores): ``sdists/``,
``src/`` (unpacked once), ``venvs/`` (reused while what they were made from is unchanged),
``plugin/``, and ``results/<project>-<run>/`` (junit XML, journals, the plugin's counts and
``pytest.log`` per run). The plugins are copied to ``plugin/stallwatch_suites_*.py`` and
loaded by those names with ``-p``, not as ``tests.suites.wrap_plugin``: each project has a
``tests`` package of its own, which this checkout's on ``sys.path`` would shadow. Nothing of
the checkout but the two plugin files and the installed ``stallwatch`` package is visible
to the suites.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .pins import HARNESS, PIP, SUITES, Suite, by_name

CHECKOUT = Path(__file__).resolve().parents[2]
PLUGIN_MODULE = "stallwatch_suites_wrap"
JOURNAL_MODULE = "stallwatch_suites_journal"
MAX_PARTS = 40
"""A run resumes past at most this many hung tests, then counts as incomplete."""
RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
BAD = ("failed", "error")
SETUP_TIMEOUT = 900.0
"""Seconds for one download, venv or install command."""
PIP_QUIET = ("--disable-pip-version-check", "--root-user-action=ignore")


class HarnessError(Exception):
    """Something around the suite went wrong (download, install, a run that crashed)."""


# -- outcomes ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One test id's result in one run."""

    status: str  # passed, failed, error, skipped
    message: str = ""


@dataclass
class Run:
    """One pytest run of a suite: per test id, what happened; and how the process ended."""

    label: str
    seconds: float = 0.0
    returncode: int | None = None
    hung: bool = False
    tests: dict[str, Outcome] = field(default_factory=dict)
    stats: dict[str, object] = field(default_factory=dict)
    log: Path = Path()
    parts: int = 0
    stopped_in: list[str] = field(default_factory=list)
    """Tests the run was stopped in (hung past the per-test timeout, or crashed)."""
    incomplete: bool = False

    def counts(self) -> dict[str, int]:
        counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
        for outcome in self.tests.values():
            counts[outcome.status] += 1
        return counts

    def bad(self) -> set[str]:
        return {test for test, outcome in self.tests.items() if outcome.status in BAD}


def read_junit(path: Path) -> dict[str, Outcome]:
    """Per pytest node id, the worst of what the junit XML says (error > failed > skipped)."""
    tests: dict[str, Outcome] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test = node_id(case)
        outcome = Outcome("passed")
        for child in case:
            status = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(child.tag)
            if status is not None and RANK[status] > RANK[outcome.status]:
                outcome = Outcome(status, first_line(child.text or "", child.get("message", "")))
        known = tests.get(test)
        if known is None or RANK[outcome.status] > RANK[known.status]:
            tests[test] = outcome
    return tests


EXCEPTION_LINE = re.compile(
    r"^(?:E\s+|[\s|]*)((?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception|Warning|Exit|Failed|Timeout)"
    r"(?<!ExceptionGroup)): "
)


EXCEPTION_PREFIX = re.compile(r"^(?:E\s+|[\s|]*)")


def first_line(text: str, message: str = "") -> str:
    """What went wrong, in a line: the innermost ``Name: message`` of the report (the leaf of
    an exception group), else its first ``E`` line, else its message's first line."""
    lines = text.splitlines()
    named = [line for line in lines if EXCEPTION_LINE.match(line)]
    if named:
        return EXCEPTION_PREFIX.sub("", named[-1])
    for line in lines:
        if line.startswith("E ") and line[1:].strip():
            return line[1:].strip()
    rest = [line.strip() for line in message.splitlines() if line.strip().strip("+-| ")]
    return rest[0] if rest else ""


def node_id(case: ET.Element) -> str:
    """pytest's node id back from an xunit1 testcase: its file, its class if any, its name."""
    name = case.get("name", "")
    classname = case.get("classname", "")
    file = case.get("file")
    if not file or not file.endswith(".py"):
        return f"{classname}::{name}" if classname else name
    module = file[: -len(".py")].replace("/", ".").replace("\\", ".")
    rest = classname[len(module) + 1 :] if classname.startswith(module + ".") else ""
    parts = [file, *(p for p in rest.split(".") if p), name]
    return "::".join(parts)


# -- steps -----------------------------------------------------------------------------------------


def sh(cmd: list[str], *, cwd: Path, log: Path, timeout: float = SETUP_TIMEOUT) -> None:
    """Run a setup command, its output to ``log``; a failure shows the log's tail and stops."""
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        try:
            result = subprocess.run(
                cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{' '.join(cmd[:6])} ... took over {timeout:.0f} s") from None
    if result.returncode != 0:
        raise HarnessError(f"{' '.join(cmd[:6])} ... failed ({result.returncode}):\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def fetch(suite: Suite, work: Path) -> Path:
    """The unpacked sdist of the pinned release (downloaded and unpacked once)."""
    where = work / "sdists" / f"{suite.name}-{suite.version}"
    archives = sorted(where.glob("*.tar.gz")) if where.is_dir() else []
    if not archives:
        where.mkdir(parents=True, exist_ok=True)
        sh(
            [
                sys.executable, "-m", "pip", "download", PIP_QUIET[0], "--no-binary", ":all:",
                "--no-deps", "--dest", str(where), f"{suite.name}=={suite.version}",
            ],
            cwd=work,
            log=work / "results" / f"{suite.name}-setup.log",
        )  # fmt: skip
        archives = sorted(where.glob("*.tar.gz"))
        if len(archives) != 1:
            raise HarnessError(f"expected one sdist in {where}, found {archives}")
    src = work / "src" / f"{suite.name}-{suite.version}"
    done = src / ".unpacked"
    if not done.exists():
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        with tarfile.open(archives[0]) as tar:
            if hasattr(tarfile, "data_filter"):  # 3.10.12+/3.11.4+: no links out, no devices
                tar.extractall(src, filter="data")
            else:  # an older patch release: PyPI's sdist of a pinned release, trusted
                tar.extractall(src)
        tops = [p for p in src.iterdir() if p.is_dir()]
        if len(tops) != 1:
            raise HarnessError(f"{archives[0].name} does not unpack to one folder: {tops}")
        done.write_text(tops[0].name, encoding="utf-8")
    return src / done.read_text(encoding="utf-8").strip()


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / "python"


def install(suite: Suite, project: Path, work: Path, stallwatch: Path) -> Path:
    """A venv with the project, its tests' needs, pytest-timeout and stallwatch (editable).

    Reused while what it was made from is unchanged; another stallwatch checkout is only
    reinstalled over it (stallwatch brings nothing but prometheus-client).
    """
    venv = work / "venvs" / suite.name
    python = venv_python(venv)
    log = work / "results" / f"{suite.name}-setup.log"
    pip = [str(python), "-m", "pip", "install", *PIP_QUIET]
    made = venv / "stallwatch-suites.json"
    wanted = stamp(
        python=sys.version, executable=sys.executable, project=str(project),
        install=list(suite.install), pinned=list(suite.pinned), harness=list(HARNESS), pip=PIP,
    )  # fmt: skip
    watching = venv / "stallwatch-suites-checkout.json"
    checkout = stamp(
        path=str(stallwatch),
        pyproject=hashlib.sha256((stallwatch / "pyproject.toml").read_bytes()).hexdigest(),
    )
    if not (python.exists() and made.exists() and made.read_text(encoding="utf-8") == wanted):
        shutil.rmtree(venv, ignore_errors=True)
        sh([sys.executable, "-m", "venv", str(venv)], cwd=work, log=log)
        sh([*pip, "--upgrade", PIP], cwd=project, log=log)
        sh(
            [*pip, *suite.install, *suite.pinned, "-e", str(stallwatch), *HARNESS],
            cwd=project,
            log=log,
        )
        made.write_text(wanted, encoding="utf-8")
    elif not watching.exists() or watching.read_text(encoding="utf-8") != checkout:
        sh([*pip, "-e", str(stallwatch)], cwd=project, log=log)
    watching.write_text(checkout, encoding="utf-8")
    return python


def stamp(**what: object) -> str:
    return json.dumps(what, sort_keys=True)


def plugin_dir(work: Path) -> Path:
    """A folder holding only the two plugins, under module names no project uses."""
    where = work / "plugin"
    where.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).parent
    shutil.copyfile(here / "wrap_plugin.py", where / f"{PLUGIN_MODULE}.py")
    shutil.copyfile(here / "journal_plugin.py", where / f"{JOURNAL_MODULE}.py")
    return where


@dataclass
class Part:
    """One pytest process of a run; a run goes on in a new part after a test hung."""

    junit: Path
    journal: Path
    stats: Path
    skip: Path


def pytest_command(suite: Suite, python: Path, part: Part, *, wrapped: bool) -> list[str]:
    cmd = [
        str(python), "-m", "pytest", *suite.test_paths,
        "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:sugar",
        "-q", "--timeout", str(suite.timeout), "--timeout-method", "thread",
        # `--opt=PATH`, never `--opt PATH`: pytest takes an existing path among its
        # arguments for a test path when it looks for the rootdir and the config file.
        f"--junitxml={part.junit}", "-o", "junit_family=xunit1",
        "-p", JOURNAL_MODULE, f"--journal={part.journal}", f"--journal-skip={part.skip}",
    ]  # fmt: skip
    if suite.markers is not None:
        cmd += ["-m", suite.markers[0]]
    if suite.needs_ipv6_localhost and not localhost_has_ipv6():
        cmd += ["-k", f"not ({suite.needs_ipv6_localhost})"]
    for test, _why in suite.deselect:
        cmd += ["--deselect", test]
    cmd += list(suite.extra_args)
    if wrapped:
        cmd += ["-p", PLUGIN_MODULE, f"--stallwatch-suites-wrap={suite.wrap}"]
    else:  # installed, stallwatch's own pytest plugin would load (inert) from its entry point
        cmd += ["-p", "no:stallwatch"]
    return cmd


@functools.cache
def localhost_has_ipv6() -> bool:
    """Whether ``localhost`` resolves to an IPv6 address here (not in every container)."""
    try:
        return bool(socket.getaddrinfo("localhost", None, socket.AF_INET6))
    except OSError:
        return False


def run_pytest(
    suite: Suite, python: Path, project: Path, work: Path, *, wrapped: bool, steps: str = ""
) -> Run:
    """Run the suite to its end: resumed past each test that hung, until the deadline.

    ``steps``: which step accounting a wrapped run must use where both are built
    (``python``: ``STALLWATCH_PURE=1``; ``c``: the compiled one, labelled ``compiled``).
    """
    label = ("compiled" if steps == "c" else "wrapped") if wrapped else "bare"
    results = work / "results" / f"{suite.name}-{label}"
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env.pop("STALLWATCH_PURE", None)
    if steps == "python":
        env["STALLWATCH_PURE"] = "1"
    env["PYTHONPATH"] = str(plugin_dir(work))
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
    run = Run(label, log=results / "pytest.log")
    started = time.monotonic()
    deadline = started + suite.run_timeout
    done: set[str] = set()
    for number in range(1, MAX_PARTS + 1):
        part = Part(
            junit=results / f"junit-{number}.xml",
            journal=results / f"journal-{number}.jsonl",
            stats=results / f"stats-{number}.json",
            skip=results / f"skip-{number}.txt",
        )
        part.skip.write_text("".join(f"{test}\n" for test in sorted(done)), encoding="utf-8")
        if wrapped:
            env["STALLWATCH_SUITES_STATS"] = str(part.stats)
        with run.log.open("a", encoding="utf-8") as out:
            out.write(f"\n== part {number}\n")
            out.flush()
            process = subprocess.Popen(
                pytest_command(suite, python, part, wrapped=wrapped),
                cwd=project,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a hung run goes with its children
            )
            try:
                run.returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                run.hung = True
                stop(process)
        run.parts = number
        add_stats(run.stats, part.stats)
        if part.junit.exists():  # pytest got to its end
            run.tests.update(read_junit(part.junit))
            break
        # Ended at a test: the per-test timeout (thread method), a crash, or the deadline.
        finished, running = read_journal(part.journal)
        run.tests.update(finished)
        why = "Timeout" if not run.hung and "Timeout" in tail(run.log, 200) else "crashed"
        if run.hung:
            why = f"still running when the run's {suite.run_timeout} s were up"
        for test in running:
            run.tests[test] = Outcome("failed", f"{why}: the run stopped in this test")
            run.stopped_in.append(test)
        if run.hung or not running:
            break  # out of time, or nothing to resume past (it died collecting)
        done |= set(finished) | set(running)
    else:
        run.incomplete = True
    run.seconds = time.monotonic() - started
    return run


def read_journal(path: Path) -> tuple[dict[str, Outcome], list[str]]:
    """From a killed part's journal: the finished tests' outcomes, and those still running."""
    outcomes: dict[str, Outcome] = {}
    started: list[str] = []
    ended: set[str] = set()
    if not path.exists():
        return outcomes, started
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # the last line, cut off by the kill
            continue
        if "start" in entry:
            started.append(entry["start"])
            continue
        test, when, result = entry["id"], entry["when"], entry["outcome"]
        if when == "teardown":
            ended.add(test)
        status = {"passed": "passed", "skipped": "skipped"}.get(result)
        if status is None:
            status = "failed" if when == "call" else "error"
        known = outcomes.get(test)
        if known is None or RANK[status] > RANK[known.status]:
            outcomes[test] = Outcome(status, first_line(entry.get("report", "")))
    running = [test for test in started if test not in ended]
    for test in running:
        outcomes.pop(test, None)
    return outcomes, running


def add_stats(total: dict[str, object], path: Path) -> None:
    """Sum the plugin's counts over a run's parts."""
    if not path.exists():
        return
    for key, value in json.loads(path.read_text(encoding="utf-8")).items():
        if isinstance(value, int):
            previous = total.get(key, 0)
            total[key] = (previous if isinstance(previous, int) else 0) + value
        else:
            total[key] = value


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a hung run: its process group, politely, then for good."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


# -- judging and telling ------------------------------------------------------------------------


def problems(suite: Suite, run: Run) -> list[str]:
    """Why a run cannot be compared: it hung, crashed, reported nothing or wrapped nothing."""
    found = []
    if run.hung:
        found.append(f"{run.label} run hung: killed after {suite.run_timeout} s")
    elif run.incomplete:
        found.append(f"{run.label} run stopped after {MAX_PARTS} hung tests, unfinished")
    elif run.returncode not in (0, 1):
        found.append(f"{run.label} run ended with pytest exit status {run.returncode}")
    if run.stopped_in:
        found.append(
            f"{run.label} run hung (or crashed) in {len(run.stopped_in)} test(s), each failed "
            f"after {suite.timeout} s and the run resumed past it: {', '.join(run.stopped_in)}"
        )
    if not run.tests:
        found.append(f"{run.label} run reported no tests")
    if run.label != "bare" and not run.hung:
        key = "sends_in_request" if suite.wrap == "apps" else "tests_in_request"
        if not run.stats:
            found.append(f"{run.label} run wrote no plugin counts: was the plugin loaded?")
        elif not run.stats.get(key):
            found.append(f"{run.label} run watched nothing ({key}=0): {run.stats}")
        elif run.label == "compiled" and run.stats.get("steps") != "c":
            found.append(
                "compiled run ran the Python step accounting: build stallwatch._cstep first "
                "(STALLWATCH_COMPILE=1 pip install -e .)"
            )
    return found


def describe(run: Run) -> str:
    counts = run.counts()
    text = (
        f"{run.label:8} passed={counts['passed']} failed={counts['failed']} "
        f"errors={counts['error']} skipped={counts['skipped']}  ({run.seconds:.0f} s"
        + (f", {run.parts} pytest processes)" if run.parts > 1 else ")")
    )
    if run.stats:
        shown = {k: v for k, v in run.stats.items() if k not in ("mode", "steps") and v}
        text += "\n           stallwatch: " + ", ".join(f"{k}={v}" for k, v in shown.items())
    return text


def compare(suite: Suite, bare: Run, wrapped: Run) -> bool:
    """Print the counts and the differing tests; True if the two runs agree."""
    print(describe(bare))
    print(describe(wrapped))
    trouble = problems(suite, bare) + problems(suite, wrapped)
    for line in trouble:
        print(f"  !! {line}")
        log = bare.log if line.startswith("bare") else wrapped.log
        if "hung (or crashed) in" not in line and log.exists():
            print(tail(log, 15))
    differ = sorted(bare.bad() ^ wrapped.bad())
    missing = sorted(set(bare.tests) ^ set(wrapped.tests))
    if differ:
        print(f"  differ: {len(differ)} test(s) fail or error in one run only")
        for test in differ:
            one, other = bare.tests.get(test), wrapped.tests.get(test)
            bad = other if test in wrapped.bad() else one
            why = f": {bad.message[:120]}" if bad is not None and bad.message else ""
            print(
                f"    {test}\n      bare {one.status if one else 'absent'}, "
                f"{wrapped.label} {other.status if other else 'absent'}{why}"
            )
    elif not trouble:
        print(f"  same failing/erroring tests bare and {wrapped.label}")
    if missing:
        print(f"  note: {len(missing)} test id(s) ran in one run only: {missing[:10]}")
    stats = wrapped.stats
    if stats.get("sends_outside_request"):
        print(
            f"  note: {stats['sends_outside_request']} response(s) were sent on an asyncio loop "
            "with no stallwatch request in the context"
        )
    if stats.get("tests_in_request", 0) != stats.get("tests_as_requests", 0):
        print("  note: some tests run as requests did not see the request's context")
    return not differ and not trouble


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.suites.run", description=__doc__)
    parser.add_argument(
        "--only",
        default=",".join(suite.name for suite in SUITES),
        help="comma-separated projects (default: all of pins.py)",
    )
    parser.add_argument(
        "--stallwatch",
        type=Path,
        default=CHECKOUT,
        help="the stallwatch source tree to install (default: this checkout)",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also run each suite wrapped with the compiled step accounting (stallwatch._cstep, "
        "built in the checkout), and the plain wrapped run with STALLWATCH_PURE=1",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=CHECKOUT / "build" / "suites",
        help="downloads, venvs and results (default: build/suites/ of the checkout)",
    )
    args = parser.parse_args(argv)
    known = by_name()
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        parser.error(f"unknown project(s) {unknown}; choose from {', '.join(known)}")
    work: Path = args.workdir.resolve()
    stallwatch: Path = args.stallwatch.resolve()
    if not (stallwatch / "stallwatch" / "__init__.py").exists():
        parser.error(f"{stallwatch} is not a stallwatch source tree")
    (work / "results").mkdir(parents=True, exist_ok=True)

    agreed: dict[str, bool] = {}
    started = time.monotonic()
    for name in names:
        suite = known[name]
        print(f"== {suite.name} {suite.version}", flush=True)
        try:
            t0 = time.monotonic()
            project = fetch(suite, work)
            python = install(suite, project, work, stallwatch)
            print(f"   ready in {time.monotonic() - t0:.0f} s ({project})", flush=True)
            if suite.needs_ipv6_localhost and not localhost_has_ipv6():
                print("   localhost has no IPv6 address here: its IPv6 tests are deselected")
            bare = run_pytest(suite, python, project, work, wrapped=False)
            pure = "python" if args.compiled else ""
            wrapped = run_pytest(suite, python, project, work, wrapped=True, steps=pure)
            compiled = (
                run_pytest(suite, python, project, work, wrapped=True, steps="c")
                if args.compiled
                else None
            )
        except (HarnessError, OSError, subprocess.SubprocessError) as exc:
            print(f"  !! {exc}")
            agreed[name] = False
            continue
        agreed[name] = compare(suite, bare, wrapped)
        if compiled is not None:
            agreed[name] = compare(suite, bare, compiled) and agreed[name]
        sys.stdout.flush()
    elapsed = time.monotonic() - started
    verdict = ", ".join(f"{name} {'same' if ok else 'DIFFERENT'}" for name, ok in agreed.items())
    print(f"== suites with and without stallwatch ({elapsed:.0f} s): {verdict}")
    return 0 if all(agreed.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

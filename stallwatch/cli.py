"""The ``stallwatch`` console script: ``stallwatch report URL``, ``stallwatch profile URL`` and
``stallwatch demo``.

Exit codes, as scripts expect them: 0 when the command did its job, 2 when it could not
(a service that is unreachable, refuses, or does not answer with a report; a usage error, as
argparse does), 1 left for "ran, and found a problem", should a subcommand ever check one.
Failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Any

from .profile.view import profile_text
from .report.client import (
    TOKEN_ENV,
    Failure,
    api_url,
    fetch,
    fetch_profile,
    get,
    summary_url,
    version,
)

EXIT_OK = 0
EXIT_FAILED = 2


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _seconds_up_to(most: int) -> Callable[[str], float]:
    """The argument type of a number of seconds more than 0 and at most ``most``."""

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not 0 < value <= most:
            raise argparse.ArgumentTypeError(f"must be more than 0 and at most {most}, got {value}")
        return value

    return seconds


_seconds = _seconds_up_to(600)
"""How long to wait for a service's answer: --timeout."""
_window = _seconds_up_to(86_400)
"""The profile's window: --window (a day at most, as the report's api/profile allows)."""


def _service_arguments(command: argparse.ArgumentParser) -> None:
    """What every command that reads a running service takes: where it is and how to ask."""
    command.add_argument(
        "url", metavar="URL", help="the service's base URL, e.g. http://127.0.0.1:8000"
    )
    command.add_argument(
        "--token", help=f"bearer token, when the service sets report_token (default: ${TOKEN_ENV})"
    )
    command.add_argument(
        "--path", default="/_stallwatch", help="the service's report_path (default: %(default)s)"
    )
    command.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the answer (default: %(default)s)",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stallwatch",
        description="Find what blocks the asyncio event loop of a running ASGI service.",
        epilog="Exit status: 0 done, 2 the service could not be read (or a usage error).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    report = commands.add_parser(
        "report",
        help="print the top blocking lines of a running service",
        description="Print the code locations that held a running service's event loop the "
        "longest, read from its stall report (StallwatchMiddleware(report=True)).",
        epilog=f"The token may also come from ${TOKEN_ENV}. Exit status: 0 the report was "
        "read, 2 the service was unreachable, refused, or did not answer with a report.",
    )
    _service_arguments(report)
    report.add_argument(
        "--top", type=_positive, default=10, metavar="N", help="locations to show (default: 10)"
    )
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")

    profile = commands.add_parser(
        "profile",
        help="print where a running service's loop time goes, by route and line",
        description="Print the lines that hold a running service's event loop, by route, read "
        "from its loop profile (StallwatchMiddleware(report=True)); with --folded, write the "
        "folded stacks that flamegraph.pl and speedscope read.",
        epilog=f"The token may also come from ${TOKEN_ENV}. Exit status: 0 the profile was "
        "read, 2 the service was unreachable, refused, or did not answer with a profile.",
    )
    _service_arguments(profile)
    profile.add_argument(
        "--window",
        type=_window,
        default=300.0,
        metavar="SECONDS",
        help="the last SECONDS of the profile (default: %(default)s)",
    )
    output = profile.add_mutually_exclusive_group()
    output.add_argument(
        "--folded", action="store_true", help="write folded stacks (flamegraph.pl, speedscope)"
    )
    output.add_argument("--json", action="store_true", help="print the JSON as served")
    profile.add_argument(
        "--top", type=_positive, default=10, metavar="N", help="routes to show (default: 10)"
    )
    profile.add_argument(
        "--lines", type=_positive, default=5, metavar="N", help="lines per route (default: 5)"
    )

    commands.add_parser(
        "demo",
        help="run the demo service (its options: stallwatch demo --help)",
        add_help=False,
        prefix_chars="\0",  # every argument, --help included, belongs to the demo
    ).add_argument("args", nargs=argparse.REMAINDER)
    return p


# -- report ----------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _names(counts: dict[str, int], limit: int = 3) -> str:
    items = list(counts.items())
    text = ", ".join(f"{name} x{n}" for name, n in items[:limit])
    if len(items) > limit:
        text += f", +{len(items) - limit} more"
    return text or "-"


def _where(location: str) -> str:
    """A location relative to the working directory when it is under it: shorter to read."""
    cwd = os.getcwd().rstrip(os.sep) + os.sep
    return location[len(cwd) :] if location.startswith(cwd) else location


def _causes(group: dict[str, Any]) -> str:
    causes: dict[str, int] = group.get("causes") or {}
    if len(causes) <= 1:
        return str(group.get("cause") or "-")
    return ", ".join(f"{cause} {n}" for cause, n in causes.items())


def table(groups: list[dict[str, Any]]) -> str:
    header = ("#", "location", "count", "total ms", "max ms", "cause", "culprit", "victims")
    rows = [
        (
            str(i),
            _where(str(g["location"])),
            str(g["count"]),
            _ms(g["total_seconds"]),
            _ms(g["max_seconds"]),
            _causes(g),
            str(g.get("culprit") or "-"),
            _names(g.get("victims") or {}),
        )
        for i, g in enumerate(groups, start=1)
    ]
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    right = {0, 2, 3, 4}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if c in right else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


def run_report(args: argparse.Namespace) -> int:
    url = summary_url(args.url, args.path)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    data = fetch(url, token, args.timeout)
    groups = [g for g in data["groups"] if isinstance(g, dict)]
    offenders = [g for g in groups if not g.get("allowed")][: args.top]
    allowed = [g for g in groups if g.get("allowed")][: args.top]
    profile = _optional_profile(api_url(args.url, args.path, "profile"), token, args.timeout)
    if args.json:
        found = {**data, "url": url, "groups": offenders + allowed}
        print(json.dumps({**found, "profile": profile}, indent=2))
        return EXIT_OK
    count = data.get("stalls", len(groups))
    print(f"{url}: {count} stall{'' if count == 1 else 's'} kept")
    if not groups:
        print("no stalls recorded: the loop was not held past the stall threshold")
    if offenders:
        print(table(offenders))
        for rank, group in enumerate(offenders, start=1):
            hint = group.get("hint")
            if isinstance(hint, dict) and hint.get("text"):
                print(f"{rank:>2}  fix: {hint['text']}")
    if allowed:
        print("\nallowed (inside stallwatch.allow_blocking()):")
        print(table(allowed))
    if profile is not None:
        print()
        print(profile_text(profile, routes=args.top))
    return EXIT_OK


def _optional_profile(url: str, token: str | None, timeout: float) -> dict[str, Any] | None:
    """The profile beside the stalls, or None from a service too old to keep one."""
    try:
        return fetch_profile(url, token, timeout)
    except Failure:
        return None


# -- profile ---------------------------------------------------------------------------------


def run_profile(args: argparse.Namespace) -> int:
    url = api_url(args.url, args.path, "profile")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    window = f"window={args.window:g}"
    if args.folded:
        body = get(f"{url}?{window}&format=folded", token, args.timeout, "text/plain")
        sys.stdout.write(body.decode("utf-8", "replace"))
        return EXIT_OK
    data = fetch_profile(f"{url}?{window}", token, args.timeout)
    if args.json:
        print(json.dumps({**data, "url": url}, indent=2))
        return EXIT_OK
    print(f"{url}:")
    print(profile_text(data, routes=args.top, lines=args.lines))
    return EXIT_OK


# -- demo ------------------------------------------------------------------------------------


def run_demo(argv: list[str]) -> int:
    for name in ("stallwatch.demo.__main__", "demo_app.__main__"):
        try:
            module = import_module(name)
        except ImportError as exc:
            if exc.name is not None and not name.startswith(exc.name):
                # The demo is there but a dependency of it is not (FastAPI, uvicorn).
                raise Failure(
                    f"the demo needs {exc.name}: install stallwatch with its demo extras, "
                    "pip install -e '.[demo]' from a checkout"
                ) from None
            continue
        module.main(argv)
        return EXIT_OK
    raise Failure("the demo is not installed: pip install -e '.[demo]' from a stallwatch checkout")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "report":
            return run_report(args)
        if args.command == "profile":
            return run_profile(args)
        return run_demo(list(args.args))
    except Failure as failure:
        print(f"stallwatch: {failure}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): say nothing more, as a process killed by SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141

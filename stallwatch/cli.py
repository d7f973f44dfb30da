"""The ``stallwatch`` console script: ``stallwatch report URL`` and ``stallwatch demo``.

Exit codes, as scripts expect them: 0 when the command did its job, 2 when it could not
(a service that is unreachable, refuses, or does not answer with a report; a usage error, as
argparse does), 1 left for "ran, and found a problem", should a subcommand ever check one.
Failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib import import_module, metadata
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 2
TOKEN_ENV = "STALLWATCH_REPORT_TOKEN"
"""Where ``report`` looks for the token when ``--token`` is not given, so that it need not
appear in the shell history or the process list."""


class Failure(Exception):
    """A failure to report in one line on stderr, with exit code 2."""


def _version() -> str:
    try:
        return metadata.version("stallwatch")
    except metadata.PackageNotFoundError:
        return "unknown"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 600, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stallwatch",
        description="Find what blocks the asyncio event loop of a running ASGI service.",
        epilog="Exit status: 0 done, 2 the service could not be read (or a usage error).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
    report.add_argument(
        "url", metavar="URL", help="the service's base URL, e.g. http://127.0.0.1:8000"
    )
    report.add_argument(
        "--token", help=f"bearer token, when the service sets report_token (default: ${TOKEN_ENV})"
    )
    report.add_argument(
        "--path",
        default="/_stallwatch",
        help="the service's report_path (default: %(default)s)",
    )
    report.add_argument(
        "--top", type=_positive, default=10, metavar="N", help="locations to show (default: 10)"
    )
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the answer (default: %(default)s)",
    )

    commands.add_parser(
        "demo",
        help="run the demo service (its options: stallwatch demo --help)",
        add_help=False,
        prefix_chars="\0",  # every argument, --help included, belongs to the demo
    ).add_argument("args", nargs=argparse.REMAINDER)
    return p


# -- report ----------------------------------------------------------------------------------


def summary_url(base: str, path: str) -> str:
    """``{base}{path}/api/summary``; a base without a scheme is taken as ``http://``."""
    base = base.strip()
    if "://" not in base:
        base = "http://" + base
    if not path.startswith("/"):
        path = "/" + path
    return base.rstrip("/") + path.rstrip("/") + "/api/summary"


_REFUSALS = {
    401: "pass the service's report_token with --token (or $" + TOKEN_ENV + ")",
    403: "the report answers loopback clients only, unless the service sets report_token",
    404: "is the report on (StallwatchMiddleware(report=True)) and is --path right?",
}


def fetch(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    headers = {"Accept": "application/json", "User-Agent": f"stallwatch/{_version()}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        hint = _REFUSALS.get(exc.code, "the service did not answer with its report")
        raise Failure(f"{url} answered {exc.code} {exc.reason}: {hint}") from None
    except urllib.error.URLError as exc:
        raise Failure(f"cannot reach {url}: {_reason(exc.reason)}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise Failure(f"cannot reach {url}: {_reason(exc)}") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise Failure(f"{url} did not answer with JSON: is it a stallwatch report?") from None
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        raise Failure(f"{url} did not answer with a stall summary: is it a stallwatch report?")
    return data


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


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
    data = fetch(url, args.token or os.environ.get(TOKEN_ENV) or None, args.timeout)
    groups = [g for g in data["groups"] if isinstance(g, dict)]
    offenders = [g for g in groups if not g.get("allowed")][: args.top]
    allowed = [g for g in groups if g.get("allowed")][: args.top]
    if args.json:
        print(json.dumps({**data, "url": url, "groups": offenders + allowed}, indent=2))
        return EXIT_OK
    count = data.get("stalls", len(groups))
    print(f"{url}: {count} stall{'' if count == 1 else 's'} kept")
    if not groups:
        print("no stalls recorded: the loop was not held past the stall threshold")
        return EXIT_OK
    if offenders:
        print(table(offenders))
    if allowed:
        print("\nallowed (inside stallwatch.allow_blocking()):")
        print(table(allowed))
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

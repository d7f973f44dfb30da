"""The ``stallwatch`` console script (placeholder until its subcommands land)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("stallwatch: no subcommands yet", file=sys.stderr)
    return 2

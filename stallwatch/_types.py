"""ASGI type aliases, kept local so the package does not depend on a framework's typing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


Response = tuple[int, list[tuple[str, str]], bytes]
"""An answer of the report or ``/livez``: status, headers, body (served in-app or off-loop)."""


@dataclass(frozen=True, slots=True)
class PlainRequest:
    """One HTTP request as the report and ``/livez`` read it, whichever server took it (the
    app's ASGI server, or the off-loop WSGI one on ``metrics_port``)."""

    method: str
    path: str
    headers: Mapping[str, str]
    """Keyed by lower-case name."""
    client_host: str | None
    query: str = ""

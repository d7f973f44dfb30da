"""Serving the stall report: who may read it, and the answers, in one place for both servers.

The report shows stacks and file paths, which are internals, so it is off unless asked for
and, when on, answers only loopback clients, or, with a token configured, only clients that
present it (loopback included: behind a reverse proxy on the same host every client looks
like loopback). Everything else gets a bare 401 or 403.

``ReportApp.respond`` is a plain function of the request (method, path, headers, client
address) so that the ASGI app (served by the event loop, through the middleware) and the
off-loop metrics server (a thread that answers while the loop is held) share every rule.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .._types import PlainRequest, Receive, Response, Scope, Send
from ..options import check_path, check_token
from ..pools.readings import pools_view
from ..profile import folded, profile_view
from .data import causes_view, loop_view, stalls_view, summary

if TYPE_CHECKING:
    from ..monitor import LoopMonitor

logger = logging.getLogger("stallwatch")

"""(status, headers, body) of one answer."""

DEFAULT_WINDOW = 300.0
"""Seconds of loop history ``api/loop`` covers unless ``?window=`` asks for fewer."""

_COMMON_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]
_API_CSP = "default-src 'none'; frame-ancestors 'none'"
_REASONS = {
    200: "OK",
    307: "Temporary Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything else."""
    if not host:
        return False  # a Unix socket or an unknown peer: likely a proxy, so not trusted
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@lru_cache(maxsize=1)
def page() -> tuple[bytes, str]:
    """The page's bytes and a Content-Security-Policy that allows exactly its inline parts."""
    html = resources.files("stallwatch").joinpath("report").joinpath("page.html").read_text("utf-8")

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        return " ".join(
            "'sha256-{}'".format(
                base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode()
            )
            for body in bodies
        )

    csp = (
        "default-src 'none'; "
        f"script-src {hashes('script')}; "
        f"style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html.encode("utf-8"), csp


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (browsers reject them in JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json(status: int, data: Any, method: str) -> Response:
    try:
        body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        body = json.dumps(_finite(data), separators=(",", ":")).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Content-Security-Policy", _API_CSP),
        *_COMMON_HEADERS,
    ]
    return status, headers, b"" if method == "HEAD" else body


def _bare(status: int, extra: list[tuple[str, str]] | None = None) -> Response:
    """A status with no detail: the reason phrase only."""
    body = f"{_REASONS.get(status, 'Error')}\n".encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *_COMMON_HEADERS,
        *(extra or []),
    ]
    return status, headers, body


class ReportApp:
    """The report's ASGI app, mounted by the middleware at ``path`` when ``report=True``.

    ``get_monitor`` is called on every request, from whichever thread serves it, and returns
    the monitor whose stalls and history to show (None before the app has started).
    """

    def __init__(
        self,
        get_monitor: Callable[[], LoopMonitor | None],
        *,
        path: str = "/_stallwatch",
        token: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = check_path(path)
        self._token = check_token(token)
        self._token_bytes = self._token.encode() if self._token is not None else b""
        self._get_monitor = get_monitor
        self._clock = clock

    def handles(self, path: str) -> bool:
        """Whether ``path`` is the report's (the middleware's dispatch test)."""
        base = self.path
        return path == base or path.startswith(base + "/")

    # -- access --------------------------------------------------------------------------------

    def refusal(self, headers: Mapping[str, str], client_host: str | None) -> Response | None:
        """None when the request may read the report, else the bare 401 or 403 to send."""
        if self._token is not None:
            scheme, _, credentials = headers.get("authorization", "").partition(" ")
            presented = credentials.strip().encode("latin-1", "replace")
            # compare_digest takes the same time wherever the first difference is.
            if scheme.lower() == "bearer" and hmac.compare_digest(presented, self._token_bytes):
                return None
            return _bare(401, [("WWW-Authenticate", 'Bearer realm="stallwatch"')])
        if is_loopback(client_host):
            return None
        return _bare(403)

    # -- answers -------------------------------------------------------------------------------

    def respond(self, request: PlainRequest) -> Response:
        """The whole answer to one request; ``headers`` keyed by lower-case name. Never raises."""
        method, path, query = request.method, request.path, request.query
        try:
            if "?" in path:
                path, _, query = path.partition("?")
            refused = self.refusal(request.headers, request.client_host)
            if refused is not None:
                return refused
            sub = path[len(self.path) :] if self.handles(path) else None
            if sub not in ("", "/", "/api/stalls", "/api/summary", "/api/loop", "/api/profile"):
                return _bare(404)
            if method not in ("GET", "HEAD"):
                return _bare(405, [("Allow", "GET, HEAD")])
            if sub == "":
                # Relative, so it survives a proxy that mounts the app under a prefix; the
                # page fetches its data relative to itself, so it must be served at ".../".
                last = self.path.rsplit("/", 1)[-1]
                return _bare(307, [("Location", f"{last}/")])
            if sub == "/":
                return self._page(method)
            return self._api(sub, method, query)
        except Exception:
            self._internal_error()
            return _bare(500)

    def _page(self, method: str) -> Response:
        body, csp = page()
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Content-Security-Policy", csp),
            ("X-Frame-Options", "DENY"),
            *_COMMON_HEADERS,
        ]
        return 200, headers, b"" if method == "HEAD" else body

    def _api(self, sub: str, method: str, query: str) -> Response:
        monitor = self._get_monitor()
        events = monitor.recent_stalls() if monitor is not None else []
        now = self._clock()
        if sub == "/api/stalls":
            return _json(200, {"generated_at": now, "stalls": stalls_view(events)}, method)
        if sub == "/api/summary":
            data = {
                "generated_at": now,
                "stalls": len(events),
                "groups": summary(events),
                "causes": causes_view(events),
            }
            return _json(200, data, method)
        window = DEFAULT_WINDOW
        raw = parse_qs(query).get("window")
        if raw:
            try:
                window = float(raw[-1])
            except ValueError:
                return _bare(400)
            if not 0 < window <= 86_400:
                return _bare(400)
        if sub == "/api/profile":
            return self._profile(monitor, window, query, method, now)
        history = getattr(monitor, "history", None)
        snapshot = history.snapshot(window) if history is not None else None
        data = {
            "generated_at": now,
            "monitor": _monitor_info(monitor),
            **loop_view(snapshot),
            "pools": _pools(monitor),
        }
        return _json(200, data, method)

    def _profile(
        self, monitor: Any, window: float, query: str, method: str, now: float
    ) -> Response:
        """The line profile as JSON, or with ``?format=folded`` as folded stacks (text)."""
        profile = getattr(monitor, "profile", None)
        snapshot = profile.snapshot(window) if profile is not None else None
        form = parse_qs(query).get("format", ["json"])[-1]
        if form == "json":
            return _json(200, {"generated_at": now, **profile_view(snapshot)}, method)
        if form != "folded":
            return _bare(400)
        body = folded(snapshot).encode() if snapshot is not None else b""
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Content-Security-Policy", _API_CSP),
            *_COMMON_HEADERS,
        ]
        return 200, headers, b"" if method == "HEAD" else body

    def _internal_error(self) -> None:
        monitor = None
        with contextlib.suppress(Exception):
            monitor = self._get_monitor()
        if monitor is not None:
            monitor.internal_error("report")
        else:
            logger.exception("stallwatch: internal error in report (not raised)")

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # the middleware sends only http here; anything else is not answered
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", ())
        }
        client = scope.get("client")
        status, response_headers, body = self.respond(
            PlainRequest(
                scope["method"],
                scope["path"],
                headers,
                client[0] if client else None,
                scope.get("query_string", b"").decode("latin-1"),
            )
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in response_headers],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _pools(monitor: LoopMonitor | None) -> list[dict[str, Any]]:
    """The thread pools' section: each pool now, and the routes whose work waited most."""
    watch = getattr(monitor, "pools", None)
    if watch is None:
        return []
    return pools_view(watch.readings(), watch.routes())


def _monitor_info(monitor: LoopMonitor | None) -> dict[str, Any]:
    """What the page says about the monitor itself, read defensively: any attribute may be
    missing while the monitor starts or stops."""
    if monitor is None:
        return {"running": False}
    info: dict[str, Any] = {
        "running": bool(getattr(monitor, "running", False)),
        "probe": getattr(monitor, "probe", None),
        "interval": getattr(monitor, "interval", None),
        "stall_threshold": getattr(monitor, "stall_threshold", None),
        "held_for": None,
    }
    held_since = getattr(monitor, "held_since", None)
    if callable(held_since):
        try:
            since = held_since()
            held = 0.0 if since is None else time.perf_counter() - float(since)
            # Served by the loop, the loop is "held" by this very request: only a stretch
            # past the threshold (seen from the off-loop server) is worth showing.
            if held >= float(getattr(monitor, "stall_threshold", 0.0)):
                info["held_for"] = held
        except Exception:
            pass  # a monitor between start and stop: nothing to say
    return info

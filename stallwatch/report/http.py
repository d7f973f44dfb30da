"""Serving the stall report: who may read it, and which answer each request gets, in one
place for both servers. The answers' shape is ``answers.py``'s; what the JSON endpoints say
is ``api.py``'s.

The report shows stacks and file paths, which are internals, so it is off unless asked for
and, when on, answers only loopback clients, or, with a token configured, only clients that
present it (loopback included: behind a reverse proxy on the same host every client looks
like loopback). Everything else gets a bare 401 or 403.

``ReportApp.respond`` is a plain function of the request (method, path, headers, client
address) so that the ASGI app (served by the event loop, through the middleware) and the
off-loop metrics server (a thread that answers while the loop is held) share every rule.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping

from .._types import PlainRequest, Receive, Response, Scope, Send
from ..options import check_path, check_token
from .answers import bare, page_answer
from .api import Watched, endpoint_answer

logger = logging.getLogger("stallwatch")


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


class ReportApp:
    """The report's ASGI app, mounted by the middleware at ``path`` when ``report=True``.

    ``get_monitor`` is called on every request, from whichever thread serves it, and returns
    the monitor whose stalls and history to show (None before the app has started).
    """

    def __init__(
        self,
        get_monitor: Callable[[], Watched | None],
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
            return bare(401, [("WWW-Authenticate", 'Bearer realm="stallwatch"')])
        if is_loopback(client_host):
            return None
        return bare(403)

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
                return bare(404)
            if method not in ("GET", "HEAD"):
                return bare(405, [("Allow", "GET, HEAD")])
            if sub == "":
                # Relative, so it survives a proxy that mounts the app under a prefix; the
                # page fetches its data relative to itself, so it must be served at ".../".
                last = self.path.rsplit("/", 1)[-1]
                return bare(307, [("Location", f"{last}/")])
            if sub == "/":
                return page_answer(method)
            monitor = self._get_monitor()
            return endpoint_answer(monitor, sub, method, query, self._clock())
        except Exception:
            self._internal_error()
            return bare(500)

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

"""The shape of every answer the report gives, whichever server sends it: the headers all
answers share, a bare status, the API's (JSON with finite numbers only, or text), and the
page with a Content-Security-Policy that allows exactly its inline parts.

Pure functions of their arguments; the page is read once, from the package (``page.html``),
and kept. ``http.py`` decides which answer a request gets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from .._types import Response

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


def bare(status: int, extra: list[tuple[str, str]] | None = None) -> Response:
    """A status with no detail: the reason phrase only."""
    body = f"{_REASONS.get(status, 'Error')}\n".encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *_COMMON_HEADERS,
        *(extra or []),
    ]
    return status, headers, body


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (browsers reject them in JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def api_answer(status: int, content_type: str, body: bytes, method: str) -> Response:
    """An answer of the API (JSON, or the folded profile's text), under the API's policy."""
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Content-Security-Policy", _API_CSP),
        *_COMMON_HEADERS,
    ]
    return status, headers, b"" if method == "HEAD" else body


def json_answer(status: int, data: Any, method: str) -> Response:
    try:
        body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        body = json.dumps(_finite(data), separators=(",", ":")).encode()
    return api_answer(status, "application/json", body, method)


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


def page_answer(method: str) -> Response:
    body, csp = page()
    headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Content-Security-Policy", csp),
        ("X-Frame-Options", "DENY"),
        *_COMMON_HEADERS,
    ]
    return 200, headers, b"" if method == "HEAD" else body

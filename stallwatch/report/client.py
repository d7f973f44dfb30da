"""The report's client side: what ``stallwatch report`` and ``stallwatch profile`` read from a
running service, over plain HTTP (``urllib``: nothing to install), and the one-line reasons
they give when they cannot."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from importlib import metadata
from typing import Any

TOKEN_ENV = "STALLWATCH_REPORT_TOKEN"
"""Where the commands look for the token when ``--token`` is not given, so that it need not
appear in the shell history or the process list."""


class Failure(Exception):
    """A failure to report in one line on stderr, with exit code 2."""


def version() -> str:
    try:
        return metadata.version("stallwatch")
    except metadata.PackageNotFoundError:
        return "unknown"


def summary_url(base: str, path: str) -> str:
    """``{base}{path}/api/summary``; a base without a scheme is taken as ``http://``."""
    return api_url(base, path, "summary")


def api_url(base: str, path: str, name: str) -> str:
    """``{base}{path}/api/{name}``; a base without a scheme is taken as ``http://``."""
    base = base.strip()
    if "://" not in base:
        base = "http://" + base
    if not path.startswith("/"):
        path = "/" + path
    return base.rstrip("/") + path.rstrip("/") + "/api/" + name


_REFUSALS = {
    401: "pass the service's report_token with --token (or $" + TOKEN_ENV + ")",
    403: "the report answers loopback clients only, unless the service sets report_token",
    404: "is the report on (StallwatchMiddleware(report=True)) and is --path right?",
}


def fetch(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    data = _json(url, get(url, token, timeout))
    if not isinstance(data.get("groups"), list):
        raise Failure(f"{url} did not answer with a stall summary: is it a stallwatch report?")
    return data


def fetch_profile(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    """The loop profile's JSON (``api/profile``)."""
    data = _json(url, get(url, token, timeout))
    if not isinstance(data.get("routes"), list):
        raise Failure(f"{url} did not answer with a loop profile: is it a stallwatch report?")
    return data


def _json(url: str, body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise Failure(f"{url} did not answer with JSON: is it a stallwatch report?") from None
    if not isinstance(data, dict):
        raise Failure(f"{url} did not answer with a stallwatch report")
    return data


def get(url: str, token: str | None, timeout: float, accept: str = "application/json") -> bytes:
    """The body of ``url``, or a ``Failure`` that says in one line why not."""
    headers = {"Accept": accept, "User-Agent": f"stallwatch/{version()}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
    except urllib.error.HTTPError as exc:
        hint = _REFUSALS.get(exc.code, "the service did not answer with its report")
        raise Failure(f"{url} answered {exc.code} {exc.reason}: {hint}") from None
    except urllib.error.URLError as exc:
        raise Failure(f"cannot reach {url}: {_reason(exc.reason)}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise Failure(f"cannot reach {url}: {_reason(exc)}") from None
    return body


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__

"""Route templates for Quart: its URL rules (``/items/<int:item_id>``).

Quart writes nothing about the matched rule into the ASGI scope, so the only way to name a request
from outside the app is to match it against ``app.url_map`` with werkzeug, as Quart itself will.
Quart is never imported here: an app can only be a Quart app if the program already imported it.
"""

from __future__ import annotations

import sys
from typing import Any

from .._types import Scope


class QuartRoutes:
    """Templates for Quart: its URL rules (``/items/<int:item_id>``), matched here.

    Quart leaves nothing in the scope, so the request is matched against ``app.url_map`` with
    werkzeug, as Quart will. Results are cached by (kind, method, path), in a bounded cache: the
    path is a key, never a label. 405 and slash redirects are unmatched, as ``request.url_rule``
    is None for them.
    """

    def __init__(self, app: Any, cache_size: int = 1024) -> None:
        self.app = app
        self._size = cache_size
        self._cache: dict[tuple[bool, str, str, str], str | None] = {}
        self._adapters: dict[bool, Any] = {}

    def bind(self, app: Any) -> None:
        if _is_quart(app) and app is not self.app:
            self.app = app
            self._cache.clear()
            self._adapters.clear()

    def __call__(self, scope: Scope) -> str | None:
        websocket = scope.get("type") == "websocket"
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root:  # as Quart cuts it: a path outside the root is a 404
            path = " " if path == root or not path.startswith(root) else path[len(root) :]
        url_map = self.app.url_map
        host = _host(scope) if url_map.host_matching else ""
        key = (websocket, scope.get("method", "GET"), host, path)
        cache = self._cache
        if key in cache:
            return cache[key]
        template = self._match(url_map, key)
        if len(cache) >= self._size:
            del cache[next(iter(cache))]
        cache[key] = template
        return template

    def _match(self, url_map: Any, key: tuple[bool, str, str, str]) -> str | None:
        websocket, method, host, path = key
        adapter = self._adapters.get(websocket) if not host else None
        if adapter is None:
            adapter = url_map.bind(host or "localhost", url_scheme="ws" if websocket else "http")
            if not host:
                self._adapters[websocket] = adapter
        try:
            rule, _ = adapter.match(path, method, return_rule=True, websocket=websocket)
        except Exception:  # NotFound, MethodNotAllowed, RequestRedirect: no rule is selected
            return None
        template = getattr(rule, "rule", None)
        return template if isinstance(template, str) else None


def _host(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host: str = value.decode("latin-1").lower()
            return host
    return ""


def _is_quart(app: Any) -> bool:
    module = sys.modules.get("quart.app")
    cls = getattr(module, "Quart", None)
    return isinstance(cls, type) and isinstance(app, cls)

"""Route templates for Litestar: ``scope["path_template"]``, and the mount path of ASGI mounts.

Litestar's router already writes the template into the scope, so little is needed here: an ASGI
mount gets ``""`` there (its path is cut from ``scope["path"]``), and a request not yet routed is
asked of Litestar's own cached router. Litestar is imported only once one of its apps exists.
"""

from __future__ import annotations

import sys
from typing import Any

from .._types import Scope


class LitestarRoutes:
    """Templates for Litestar: ``scope["path_template"]``, and the mount path of ASGI mounts.

    Litestar's router writes the template into the scope (``""`` for a mount, whose path it
    also cuts from ``scope["path"]``). Before routing, its own cached router is asked.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._mounts: dict[int, tuple[Any, tuple[str, ...]]] = {}

    def bind(self, app: Any) -> None:
        if _is_litestar(app) and app is not self.app:
            self.app = app
            self._mounts = {}

    def __call__(self, scope: Scope) -> str | None:
        handler = scope.get("route_handler")
        if handler is None:
            return self._predict(scope)
        if getattr(handler, "is_mount", False):
            paths = self._mount_paths(handler)
            if len(paths) == 1:
                return paths[0]
            raw = scope.get("raw_path")  # the path before Litestar cut the mount from it
            if isinstance(raw, bytes):
                return self._mount_path(self._normalized(raw.decode("latin-1"), scope))
            return None
        template = scope.get("path_template")
        return template if isinstance(template, str) and template else None

    def _predict(self, scope: Scope) -> str | None:
        path = scope.get("path")
        if not isinstance(path, str):
            return None
        normalized = self._normalized(path, scope)
        try:
            _, handler, _, _, template = self.app.asgi_router.handle_routing(
                path=normalized, method=scope.get("method")
            )
        except Exception:  # NotFound, MethodNotAllowed: Litestar selects no handler
            return None
        if getattr(handler, "is_mount", False):
            return self._mount_path(normalized)
        return template if isinstance(template, str) and template else None

    @staticmethod
    def _normalized(path: str, scope: Scope) -> str:
        from litestar.utils import normalize_path

        root = scope.get("root_path", "")
        if root:  # as Litestar's router cuts it
            path = path.split(root, maxsplit=1)[-1]
        result: str = normalize_path(path)
        return result

    def _mount_path(self, path: str) -> str | None:
        router = self.app.asgi_router
        regex = getattr(router, "_mount_paths_regex", None)
        match = regex.match(path) if regex is not None else None
        if match is None:
            return None
        mount = path[: match.end()]
        return mount if mount in getattr(router, "_mount_routes", {}) else None

    def _mount_paths(self, handler: Any) -> tuple[str, ...]:
        entry = self._mounts.get(id(handler))
        if entry is None or entry[0] is not handler:
            paths = tuple(
                route.path
                for route in getattr(self.app, "routes", ())
                if getattr(route, "route_handler", None) is handler
                and isinstance(getattr(route, "path", None), str)
            )
            entry = self._mounts[id(handler)] = (handler, paths)
        return entry[1]


def _is_litestar(app: Any) -> bool:
    module = sys.modules.get("litestar.app")
    cls = getattr(module, "Litestar", None)
    return isinstance(cls, type) and isinstance(app, cls)

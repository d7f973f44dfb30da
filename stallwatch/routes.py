"""Route templates for labels: ``/items/{item_id}``, never ``/items/42``.

A raw path as a label lets any scanner grow the label set without bound, so anything that
cannot be named by a template is ``<unmatched>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ._types import Scope

UNMATCHED = "<unmatched>"
UNROUTED = "<unrouted>"
"""A request that held the loop before its router had matched it (rare: a slow middleware)."""

RouteResolver = Callable[[Scope], "str | None"]


def _mount_templates(routes: Iterable[Any], prefix: str, out: dict[int, str]) -> None:
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):  # a router FastAPI included whole: its routes with the prefix
            for context in contexts():
                template = getattr(context, "path_format", None)
                if isinstance(template, str):
                    out[id(getattr(context, "original_route", context))] = prefix + template
            continue
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        children = getattr(route, "routes", None)
        if children and hasattr(route, "path_regex") and type(route).__name__ == "Mount":
            _mount_templates(children, prefix + path, out)
        else:
            out[id(route)] = prefix + path


class StarletteRoutes:
    """Templates for Starlette and FastAPI, mounted sub-applications included.

    Starlette's router leaves the innermost matched route in ``scope["route"]``; a mount's
    prefix is only there as a concrete ``root_path``, so mounted routes are looked up in a
    map built once from the application's route tree.
    """

    def __init__(self, app: Any = None) -> None:
        self.app = app
        """The application whose route tree holds the mounts; the middleware binds it."""
        self._templates: dict[int, str] | None = None

    def __call__(self, scope: Scope) -> str | None:
        route = scope.get("route")
        if route is not None:
            path = getattr(route, "path", None)
            if not isinstance(path, str):
                return None
            fastapi = scope.get("fastapi")
            if fastapi:
                # FastAPI versions that keep included routers whole leave the route without
                # its ``include_router`` prefix in ``scope["route"]``; the full template is
                # on the effective route they record next to it.
                effective = fastapi.get("effective_route_context")
                if getattr(effective, "original_route", None) is route:
                    full = getattr(effective, "path_format", None)
                    if isinstance(full, str):
                        path = full
            root = scope.get("root_path", "")
            if not root or root == scope.get("app_root_path", root):
                return path
            return self._mounted(route, scope, path)
        template = scope.get("path_template")  # Litestar and others that follow it
        return template if isinstance(template, str) else None

    def _mounted(self, route: Any, scope: Scope, path: str) -> str:
        templates = self._templates
        if templates is None or id(route) not in templates:
            # Routes added after start-up are found by building the map again; a route that
            # is still unknown keeps its own path behind a marker rather than the raw prefix.
            templates = {}
            routes = getattr(self.app, "routes", None)
            if routes is not None:
                _mount_templates(routes, "", templates)
            templates.setdefault(id(route), "<mounted>" + path)
            self._templates = templates
        return templates[id(route)]


def method_label(
    method: str,
    _known: frozenset[str] = frozenset(
        ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
    ),
) -> str:
    """Methods are client input: anything unknown is ``OTHER`` so the label set stays small."""
    return method if method in _known else "OTHER"

"""Route templates for Starlette and FastAPI.

Starlette's router leaves the route it selected in ``scope["route"]`` (FastAPI its inclusion
context beside it) but not the template with its mount prefixes, so the name is looked up in the
app's compiled route tree (``_starlette_tree``) by route object; before routing, or when no route
object was left, the tree predicts the router's choice. Starlette is never imported to ask whether
an app is one of its apps: it can only be if the program already imported Starlette.
"""

from __future__ import annotations

import sys
from typing import Any

from .._types import Scope
from ._starlette_tree import _predict, _route_path, _Tree

_REBUILDS = 16  # route trees rebuilt because a routed request named an unknown route


class StarletteRoutes:
    """Templates for Starlette and FastAPI: mounts, ``include_router`` prefixes included.

    After routing, ``scope["route"]`` (and FastAPI's inclusion context beside it) says which
    route ran; a route reached under several mounts is told apart by the ``root_path`` its
    mount left. Before routing, or when the router selected no route object (a FastAPI mount,
    a 404), the scope is matched against the app's route tree as the router does.
    """

    def __init__(self, app: Any = None) -> None:
        self._app = app
        self._starlette = _is_starlette(app)
        self._tree: _Tree | None = None
        self._rebuilds = 0

    @property
    def app(self) -> Any:
        """The application whose route tree is matched; the middleware binds the outermost."""
        return self._app

    @app.setter
    def app(self, app: Any) -> None:
        self._app = app
        self._starlette = _is_starlette(app)
        self._tree = None

    def bind(self, app: Any) -> None:
        """Use ``app`` (``scope["app"]``, the outermost Starlette app) if it has routes."""
        if _is_starlette(app) and app is not self._app:
            self.app = app

    def __call__(self, scope: Scope) -> str | None:
        if not self._starlette:  # not bound to a Starlette app: only the scope can say
            template = scope.get("path_template")
            return template if isinstance(template, str) and template else None
        route = scope.get("route")
        tree = self._tree
        # A routed request names a route object: found in the tree as it is, the name stands
        # (a route added since is not found, and rebuilds it below); only a prediction needs
        # the tree checked against the app's routes first.
        if route is None or tree is None:
            tree = self._tree_now()
        if route is None:
            router = scope.get("router")
            if router is not None and type(router).app is _plain_router_app():
                return None  # Starlette's router ran, selects in one step, and selected nothing
            return self.predict(scope)
        key = route
        fastapi = scope.get("fastapi")
        if fastapi:
            effective = fastapi.get("effective_route_context")
            if effective is not None and getattr(effective, "original_route", None) is route:
                key = effective
        entry = tree.names.get(id(key))
        if entry is None or entry[0] is not key:
            if self._rebuilds >= _REBUILDS:
                return self._unknown(route, scope)
            self._rebuilds += 1  # routes added after start-up: walk the tree again
            tree = self._tree = _Tree(_routes_of_app(self._app))
            entry = tree.names.get(id(key))
            if entry is None or entry[0] is not key:
                return self._unknown(route, scope)
        name = entry[1]
        if name.__class__ is str:
            result: str = name
            return result
        if name is not None:
            root = scope.get("root_path", "")
            _, consumed = _route_path(root, scope.get("app_root_path", root))
            for regex, template in name:
                if regex is not None and regex.match(consumed):
                    found: str = template
                    return found
        return self.predict(scope)

    def predict(self, scope: Scope) -> str | None:
        """The template the router will select for ``scope``; the scope is not changed."""
        kind = scope.get("type")
        path = scope.get("path")
        if (kind != "http" and kind != "websocket") or not isinstance(path, str):
            return None
        base = scope.get("app_root_path")
        if base is None:
            base = scope.get("root_path", "")
        root, rest = _route_path(path, base)
        return _predict(self._tree_now().nodes, scope, kind, root, rest)

    def _tree_now(self) -> _Tree:
        tree = self._tree
        routes = _routes_of_app(self._app) if self._starlette else None
        if tree is None or tree.routes is not routes or tree.size != len(routes or ()):
            tree = self._tree = _Tree(routes)
        return tree

    def _unknown(self, route: Any, scope: Scope) -> str | None:
        # A route outside the bound tree: its own template is right if no mount prefixed it.
        path = getattr(route, "path", None)
        root = scope.get("root_path", "")
        if isinstance(path, str) and root == scope.get("app_root_path", root):
            return path
        return self.predict(scope)


def _plain_router_app() -> Any:
    routing = sys.modules.get("starlette.routing")
    return routing.Router.app if routing is not None else None


def _routes_of_app(app: Any) -> list[Any] | None:
    routes = getattr(app, "routes", None)
    return routes if isinstance(routes, list) else None


def _is_starlette(app: Any) -> bool:
    routing = sys.modules.get("starlette.routing")
    applications = sys.modules.get("starlette.applications")
    return (routing is not None and isinstance(app, routing.Router)) or (
        applications is not None and isinstance(app, applications.Starlette)
    )

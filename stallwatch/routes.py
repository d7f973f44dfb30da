"""Route templates for labels: ``/items/{item_id}``, never ``/items/42``.

A raw path as a label lets any scanner grow the label set without bound, so a request that no
template names is ``<unmatched>``. ``default_resolver(app)`` picks the resolver for the
framework under the middleware (Starlette/FastAPI, Quart, Litestar, else ``path_template``), so
callers never branch on frameworks. Every resolver runs on the loop thread, is called at a
request's end and sometimes earlier (before its router ran), and gives the same name both times.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

from ._types import Scope

UNMATCHED = "<unmatched>"
UNROUTED = "<unrouted>"
"""Deprecated, never a label: kept only until spans.py stops importing it."""

RouteResolver = Callable[[Scope], "str | None"]

_MAX_DEPTH = 32  # mounts inside mounts; deeper (or a cycle) is not walked
_REBUILDS = 16  # route trees rebuilt because a routed request named an unknown route


def _route_path(path: str, root: str) -> tuple[str, str]:
    """``(root, rest)`` with ``root + rest == path``, as Starlette's ``get_route_path`` cuts."""
    if not root or not path.startswith(root):
        return "", path
    if path == root:
        return root, ""
    if path[len(root)] == "/":
        return root, path[len(root) :]
    return "", path


# -- Starlette and FastAPI ----------------------------------------------------------------------

_HTTP, _WEBSOCKET, _MOUNT, _OTHER = range(4)


class _Node:
    """One route of a router, compiled for prediction: its regex and its full template."""

    __slots__ = ("children", "kind", "match", "methods", "route", "template")

    def __init__(
        self,
        kind: int,
        route: Any,
        template: str | None,
        children: tuple[_Node, ...] | None = None,
    ) -> None:
        self.kind = kind
        self.route = route
        regex = getattr(route, "path_regex", None)
        # The bound ``match`` of a compiled pattern; never None for the kinds matched here.
        self.match: Callable[[str], re.Match[str] | None] = (
            regex.match if isinstance(regex, re.Pattern) else _never
        )
        self.methods: Any = getattr(route, "methods", None) or None
        self.template = template
        self.children = children


class _Tree:
    """An app's route tree: nodes in router order, and what each routed route is named."""

    def __init__(self, routes: Any) -> None:
        self.routes = routes
        self.size = len(routes) if isinstance(routes, list) else -1
        self._found: dict[int, tuple[Any, list[tuple[str, str]] | None]] = {}
        self.nodes = self._walk(routes, "", 0) if isinstance(routes, list) else ()
        # A route reached under several mounts is named by the mount its request went through:
        # the concrete prefix in ``root_path`` is matched against each mount chain's template.
        self.names: dict[int, tuple[Any, Any]] = {}
        for key, (obj, seen) in self._found.items():
            templates = {template for _, template in seen} if seen is not None else set()
            if seen is None or not templates:
                self.names[key] = (obj, None)  # a mount of routes: predict
            elif len(templates) == 1:
                self.names[key] = (obj, templates.pop())
            else:
                self.names[key] = (obj, tuple((_prefix_regex(p), t) for p, t in seen))

    def _walk(self, routes: Iterable[Any], prefix: str, depth: int) -> tuple[_Node, ...]:
        nodes: list[_Node] = []
        if depth > _MAX_DEPTH:
            return ()
        for route in routes:
            if not callable(getattr(route, "matches", None)):
                continue  # not a Starlette route: the router could not select it either
            if callable(getattr(route, "effective_candidates", None)):
                # A router that FastAPI includes whole: its routes, in order, with the prefix.
                nodes.extend(self._walk_included(route, prefix, depth + 1))
                continue
            node = self._node(route, prefix, depth)
            if node is not None:
                nodes.append(node)
        return tuple(nodes)

    def _walk_included(self, included: Any, prefix: str, depth: int) -> list[_Node]:
        nodes: list[_Node] = []
        if depth > _MAX_DEPTH:
            return nodes
        for candidate in included.effective_candidates():
            if callable(getattr(candidate, "effective_candidates", None)):
                nodes.extend(self._walk_included(candidate, prefix, depth + 1))
            elif getattr(candidate, "starlette_route", None) is not None:
                route = candidate.starlette_route
                node = self._node(route, prefix, depth)
                if node is not None:
                    nodes.append(node)
            elif isinstance(getattr(candidate, "path", None), str) and candidate.path_regex:
                # An APIRoute as this inclusion sees it: the router leaves the route in
                # ``scope["route"]`` and this context beside it, so the context is the key.
                template = prefix + candidate.path
                nodes.append(_Node(_HTTP, candidate, template))
                self._seen(candidate, prefix, template)
        return nodes

    def _node(self, route: Any, prefix: str, depth: int) -> _Node | None:
        kinds = _starlette_kinds()
        path = getattr(route, "path", None)
        kind = kinds.get(getattr(type(route), "matches", None), _OTHER)
        if kind == _OTHER:
            children = _routes_of(route)
            nodes = self._walk(children, prefix, depth + 1) if children is not None else None
            template = prefix + path if isinstance(path, str) and nodes is None else None
            if nodes is not None:
                self._seen(route, prefix, None)
            elif template is not None:
                self._seen(route, prefix, template)
            return _Node(_OTHER, route, template, nodes)
        if not isinstance(path, str) or getattr(route, "path_regex", None) is None:
            return None
        if kind == _MOUNT:
            children = _routes_of(route)
            if children is not None:
                self._seen(route, prefix, None)
                return _Node(_MOUNT, route, None, self._walk(children, prefix + path, depth + 1))
            # An opaque app (static files, another framework) is named by its mount path.
            template = prefix + path or "/"
            self._seen(route, prefix + path, template)
            return _Node(_MOUNT, route, template)
        self._seen(route, prefix, prefix + path)
        return _Node(kind, route, prefix + path)

    def _seen(self, key: Any, consumed: str, template: str | None) -> None:
        entry = self._found.get(id(key))
        if entry is None or entry[0] is not key:
            self._found[id(key)] = entry = (key, [] if template is not None else None)
        if template is not None and entry[1] is not None:
            entry[1].append((consumed, template))


def _never(path: str) -> None:
    return None


def _prefix_regex(template: str) -> re.Pattern[str] | None:
    try:
        from starlette.routing import compile_path

        return compile_path(template)[0]
    except Exception:  # a parameter named twice along a chain: this chain is predicted
        return None


def _starlette_kinds(_cache: dict[Any, int] = {}) -> dict[Any, int]:  # noqa: B006
    """Route classes whose ``matches`` is Starlette's own logic, matched here without a call."""
    if not _cache:
        from starlette import routing

        _cache[routing.Route.matches] = _HTTP
        _cache[routing.WebSocketRoute.matches] = _WEBSOCKET
        _cache[routing.Mount.matches] = _MOUNT
        fastapi = sys.modules.get("fastapi.routing")
        if fastapi is not None:
            # Without an inclusion context in the scope these are Starlette's logic.
            _cache[fastapi.APIRoute.matches] = _HTTP
            _cache[fastapi.APIWebSocketRoute.matches] = _WEBSOCKET
    return _cache


def _routes_of(route: Any) -> list[Any] | None:
    """The routes Starlette's router will try inside a mount or host, if its app is a router."""
    routing = sys.modules.get("starlette.routing")
    applications = sys.modules.get("starlette.applications")
    app = getattr(route, "_base_app", None) or getattr(route, "app", None)
    if (routing is not None and isinstance(app, routing.Router)) or (
        applications is not None and isinstance(app, applications.Starlette)
    ):
        routes = app.routes
        return routes if isinstance(routes, list) else None
    return None


def _predict(
    nodes: tuple[_Node, ...], scope: Scope, kind: str, root: str, path: str, depth: int = 0
) -> str | None:
    """What Starlette's router will name: the first FULL match, else the first PARTIAL one."""
    partial: _Node | None = None
    partial_child: tuple[str, str] = ("", "")
    for node in nodes:
        k = node.kind
        if k == _HTTP:
            if kind != "http" or node.match(path) is None:
                continue
            if node.methods and scope.get("method") not in node.methods:
                if partial is None:
                    partial = node
                continue
            return node.template
        if k == _WEBSOCKET:
            if kind == "websocket" and node.match(path) is not None:
                return node.template
            continue
        if k == _MOUNT:
            match = node.match(path)
            if match is None:
                continue
            if node.children is None:
                return node.template
            rest = "/" + match.group("path")
            return _descend(node, scope, kind, root + path[: -len(rest)], rest, depth)
        # Any other route class (Host, a user's route): its own ``matches``, on a copy.
        view = dict(scope)
        view["root_path"] = root
        view["fastapi"] = dict(scope.get("fastapi") or {})
        view.pop("route", None)
        try:
            found, child = node.route.matches(view)
        except Exception:  # the router would fail on it too; prediction must not
            continue
        value = getattr(found, "value", 0)
        if value:
            child_root, child_path = _route_path(
                scope["path"], child.get("root_path", root) if isinstance(child, dict) else root
            )
            if value == 2:
                return _descend(node, scope, kind, child_root, child_path, depth)
            if partial is None:
                partial, partial_child = node, (child_root, child_path)
    if partial is not None:
        return _descend(partial, scope, kind, *partial_child, depth)
    return None  # a slash redirect or a 404: no route is selected


def _descend(node: _Node, scope: Scope, kind: str, root: str, path: str, depth: int) -> str | None:
    if node.children is None or depth >= _MAX_DEPTH:
        return node.template
    return _predict(node.children, scope, kind, root, path, depth + 1)


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
        tree = self._tree_now()
        route = scope.get("route")
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


# -- Quart ----------------------------------------------------------------------------------------


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
        if _is_instance(app, "quart.app", "Quart") and app is not self.app:
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


# -- Litestar -------------------------------------------------------------------------------------


class LitestarRoutes:
    """Templates for Litestar: ``scope["path_template"]``, and the mount path of ASGI mounts.

    Litestar's router writes the template into the scope (``""`` for a mount, whose path it
    also cuts from ``scope["path"]``). Before routing, its own cached router is asked.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._mounts: dict[int, tuple[Any, tuple[str, ...]]] = {}

    def bind(self, app: Any) -> None:
        if _is_instance(app, "litestar.app", "Litestar") and app is not self.app:
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


# -- anything else, and the picker ----------------------------------------------------------


class PathTemplateRoutes:
    """For frameworks that follow Litestar's lead and put ``path_template`` in the scope."""

    def bind(self, app: Any) -> None:
        """Nothing to bind: the scope carries the template."""

    def __call__(self, scope: Scope) -> str | None:
        template = scope.get("path_template")
        return template if isinstance(template, str) and template else None


def default_resolver(app: Any) -> RouteResolver:
    """The resolver for the framework under ``app``, looking through middleware wrappers.

    ``app`` may be the framework's app, a middleware around it (``.app``), or a bound method of
    it (Quart's ``app.asgi_app``). A framework that is not imported cannot be the app, so this
    imports none.
    """
    target = app
    for _ in range(_MAX_DEPTH):
        if _is_starlette(target):
            return StarletteRoutes(target)
        if _is_instance(target, "quart.app", "Quart"):
            return QuartRoutes(target)
        if _is_instance(target, "litestar.app", "Litestar"):
            return LitestarRoutes(target)
        inner = getattr(target, "__self__", None)
        if inner is None:
            inner = getattr(target, "app", None)
        if inner is None or inner is target:
            break
        target = inner
    return PathTemplateRoutes()


def _is_instance(obj: Any, module: str, name: str) -> bool:
    found = sys.modules.get(module)
    cls = getattr(found, name, None) if found is not None else None
    return isinstance(cls, type) and isinstance(obj, cls)


def method_label(
    method: str,
    _known: frozenset[str] = frozenset(
        ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
    ),
) -> str:
    """Methods are client input: anything unknown is ``OTHER`` so the label set stays small."""
    return method if method in _known else "OTHER"

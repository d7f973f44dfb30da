"""Starlette's router, replayed: which route it will select for a scope, without running it.

A stall can need a request's name before its router ran (a middleware still holds it, or it waits
in the loop's queue), and a FastAPI mount or a 404 leaves no route object in the scope at all. So
the app's routes are compiled once into a tree of regexes and full templates (mount and
``include_router`` prefixes joined in), and a scope is matched against it the way the router
matches: the first FULL match, else the first PARTIAL one, into mounts, hosts and included routers.
Kept apart from ``starlette.py`` so each reads in one sitting: this is the matching, that is the
resolver that decides when matching is needed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

from .._types import Scope

_MAX_DEPTH = 32  # mounts inside mounts; deeper (or a cycle) is not walked


def _route_path(path: str, root: str) -> tuple[str, str]:
    """``(root, rest)`` with ``root + rest == path``, as Starlette's ``get_route_path`` cuts."""
    if not root or not path.startswith(root):
        return "", path
    if path == root:
        return root, ""
    if path[len(root)] == "/":
        return root, path[len(root) :]
    return "", path


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

"""Route templates for labels: ``/items/{item_id}``, never ``/items/42``.

A raw path as a label lets any scanner grow the label set without bound, so a request that no
template names is ``<unmatched>``. ``default_resolver(app)`` picks the resolver for the
framework under the middleware (Starlette/FastAPI, Quart, Litestar, else ``path_template``), so
callers never branch on frameworks. Every resolver runs on the loop thread, is called at a
request's end and sometimes earlier (before its router ran), and gives the same name both times.

Each framework's resolver has its own module, because each framework leaves a different trace in
the scope and needs its own matching; this module only names the contract and picks one. None of
them imports its framework before one of its apps is seen: an app can only be of a framework
the program already imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._types import Scope
from .litestar import LitestarRoutes, _is_litestar
from .quart import QuartRoutes, _is_quart
from .starlette import StarletteRoutes, _is_starlette

__all__ = [
    "KNOWN_METHODS",
    "UNMATCHED",
    "ContainedRoutes",
    "LitestarRoutes",
    "PathTemplateRoutes",
    "QuartRoutes",
    "RouteResolver",
    "StarletteRoutes",
    "default_resolver",
    "method_label",
]

UNMATCHED = "<unmatched>"

RouteResolver = Callable[[Scope], "str | None"]

_MAX_WRAPPERS = 32  # middleware wrappers looked through; deeper (or a cycle) is not followed


class ContainedRoutes:
    """A resolver as the middleware uses it: given the outermost application at the first
    request (to name mounted routes), and contained. Routes are named from inside the
    loop's poll, where an exception would stop the event loop: a resolver that raises or
    answers something not a string (a user's) names the request ``<unmatched>``, and
    ``on_error`` counts it."""

    __slots__ = ("_on_error", "_resolver", "unbound")

    def __init__(
        self, resolver: RouteResolver, *, bind: bool, on_error: Callable[[], None]
    ) -> None:
        self._resolver = resolver
        self._on_error = on_error
        self.unbound = bind
        """True until ``bind`` has run, where the resolver is to be bound at all."""

    def bind(self, scope: Scope) -> None:
        """Give the resolver ``scope["app"]``, the outermost application; once."""
        self.unbound = False
        top = scope.get("app")
        bind = getattr(self._resolver, "bind", None)
        if top is not None and callable(bind):
            bind(top)

    def __call__(self, scope: Scope) -> str | None:
        try:
            route = self._resolver(scope)
        except Exception:
            self._on_error()
            return UNMATCHED
        return route if route is None or isinstance(route, str) else UNMATCHED

    def before_app(self, scope: Scope) -> str:
        """The name of a request the app has not seen (a refused one): bound first if need
        be, named unmatched if binding fails."""
        if self.unbound:
            try:
                self.bind(scope)
            except Exception:
                self._on_error()
        return self(scope) or UNMATCHED


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
    for _ in range(_MAX_WRAPPERS):
        if _is_starlette(target):
            return StarletteRoutes(target)
        if _is_quart(target):
            return QuartRoutes(target)
        if _is_litestar(target):
            return LitestarRoutes(target)
        inner = getattr(target, "__self__", None)
        if inner is None:
            inner = getattr(target, "app", None)
        if inner is None or inner is target:
            break
        target = inner
    return PathTemplateRoutes()


KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
)
"""The methods that are their own label; any other is ``OTHER`` (``method_label``)."""


def method_label(method: str) -> str:
    """Methods are client input: anything unknown is ``OTHER`` so the label set stays small."""
    return method if method in KNOWN_METHODS else "OTHER"

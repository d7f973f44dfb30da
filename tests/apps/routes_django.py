"""A Django ASGI app under stallwatch, named by the ``route_resolver`` that docs/routes.md shows.

Django resolves URLs inside its handler and leaves nothing in the ASGI scope, so the resolver
asks Django's own URL resolver (cached by Django) for the matched pattern.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import include, path

settings.configure(
    DEBUG=False,
    SECRET_KEY="stallwatch-tests-only",
    ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402  (after settings)
from django.urls import Resolver404, resolve  # noqa: E402

from stallwatch import StallwatchMiddleware  # noqa: E402


# -- the resolver of docs/routes.md ------------------------------------------------------------
def django_routes(scope: MutableMapping[str, Any]) -> str | None:
    path = str(scope["path"])
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    try:
        match = resolve(path)
    except Resolver404:
        return None
    return "/" + str(match.route)  # the pattern, includes joined: "api/users/<str:name>"


# -- end of the resolver -----------------------------------------------------------------------


async def ok(request: HttpRequest, **params: object) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [
    path("", ok),
    path("items/<int:item_id>/", ok),
    path("api/", include([path("users/<str:name>", ok)])),
]

app = StallwatchMiddleware(
    get_asgi_application(), route_resolver=django_routes, metrics_path="/metrics"
)

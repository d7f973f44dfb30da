"""Route names: one template per request, the same before its router ran and after.

In-process tests drive each framework's real router with ``httpx.ASGITransport`` behind a
recorder that asks the resolver before the app runs (a prediction) and after (the routed name),
and checks the prediction left the scope as it was. The end-to-end tests serve the apps of
``tests/apps/routes_*.py`` with real uvicorn and read their ``/metrics``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from litestar import Litestar, Router, get
from litestar.handlers import asgi
from litestar.params import FromPath
from litestar.types import Receive as LitestarReceive
from litestar.types import Scope as LitestarScope
from litestar.types import Send as LitestarSend
from quart import Quart
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Host, Match, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from stallwatch.routes import (
    LitestarRoutes,
    PathTemplateRoutes,
    QuartRoutes,
    RouteResolver,
    StarletteRoutes,
    default_resolver,
)
from tests.middleware_support import Metrics, poll
from tests.servers import ROOT, uvicorn

HERE = Path(__file__).parent

Named = tuple[str, str, str | None, str | None]
"""(method, path, predicted before the app ran, named after it ran)."""


class Recorder:
    """Outermost ASGI wrapper: names each request before and after the app, as stallwatch does."""

    def __init__(self, app: Any, resolver: RouteResolver | None = None) -> None:
        self.app = app
        self.resolver = resolver or default_resolver(app)
        self.named: list[Named] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        before = dict(scope)
        predicted = self.resolver(scope)
        assert scope == before, "predicting a route must not change the scope"
        await self.app(scope, receive, send)
        self.named.append((scope["method"], scope["path"], predicted, self.resolver(scope)))


def names(app: Any, requests: list[tuple[str, str]], host: str = "testserver") -> list[Named]:
    recorder = Recorder(app)

    async def main() -> None:
        transport = httpx.ASGITransport(app=recorder)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            for method, path in requests:
                await client.request(method, path)

    asyncio.run(main())
    return recorder.named


def routed(app: Any, requests: list[tuple[str, str]], host: str = "testserver") -> list[str | None]:
    """The name of each request after routing, checked equal to the name predicted before."""
    found = names(app, requests, host)
    for method, path, predicted, after in found:
        assert predicted == after, f"{method} {path}: predicted {predicted!r}, routed {after!r}"
    return [after for _, _, _, after in found]


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


# -- Starlette: one route reached more than one way ---------------------------------------------


def test_routes_mounted_under_two_prefixes_are_named_by_the_prefix_each_request_took() -> None:
    shared = [Route("/items/{item_id}", ok)]
    app = Starlette(routes=[Mount("/a", routes=shared), Mount("/b", routes=shared)])
    got = routed(app, [("GET", "/a/items/1"), ("GET", "/b/items/2"), ("GET", "/a/items/3")])
    assert got == ["/a/items/{item_id}", "/b/items/{item_id}", "/a/items/{item_id}"]


def test_a_parameterised_mount_keeps_its_parameter_in_the_template() -> None:
    shared = [Route("/items/{item_id:int}", ok)]
    app = Starlette(
        routes=[
            Mount("/users/{uid}", routes=[Mount("/deep", routes=shared), *shared]),
            Mount("/items-root", routes=shared),
        ]
    )
    got = routed(
        app,
        [
            ("GET", "/users/7/items/1"),
            ("GET", "/users/8/deep/items/2"),
            ("GET", "/items-root/items/3"),
        ],
    )
    assert got == [
        "/users/{uid}/items/{item_id:int}",
        "/users/{uid}/deep/items/{item_id:int}",
        "/items-root/items/{item_id:int}",
    ]


def test_a_fastapi_router_included_twice_under_mounts_names_each_inclusion() -> None:
    items = APIRouter()

    @items.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    api = FastAPI()
    api.include_router(items, prefix="/v1")
    api.include_router(items, prefix="/v2")
    app = FastAPI()
    app.include_router(items, prefix="/direct")
    app.mount("/api", api)
    app.mount("/tenants/{tenant}", api)
    got = routed(
        app,
        [
            ("GET", "/api/v1/items/1"),
            ("GET", "/api/v2/items/2"),
            ("GET", "/tenants/acme/v1/items/3"),
            ("GET", "/tenants/acme/v2/items/4"),
            ("GET", "/direct/items/5"),
            ("POST", "/api/v2/items/6"),  # 405: the route, as Starlette's PARTIAL match names it
        ],
    )
    assert got == [
        "/api/v1/items/{item_id}",
        "/api/v2/items/{item_id}",
        "/tenants/{tenant}/v1/items/{item_id}",
        "/tenants/{tenant}/v2/items/{item_id}",
        "/direct/items/{item_id}",
        "/api/v2/items/{item_id}",
    ]


# -- prediction: before the router, exactly what the router will select ----------------------


def starlette_table_app() -> Starlette:
    shared = [Route("/items/{item_id:int}", ok), Route("/only-post", ok, methods=["POST"])]
    return Starlette(
        routes=[
            Route("/", ok),
            Route("/ping", ok),
            Mount("/a", routes=shared),
            Mount("/static", app=StaticFiles(directory=HERE)),
            Route("/dir/", ok),
            Host("api.example.com", app=Starlette(routes=[Route("/hosted/{x}", ok)])),
            Route("/{anything}/late", ok),
        ]
    )


PREDICTION_TABLE = [
    # (method, path, the name the router gives)
    ("GET", "/", "/"),
    ("GET", "/ping", "/ping"),
    ("PUT", "/ping", "/ping"),  # method mismatch: a 405 from the route
    ("GET", "/a/items/1", "/a/items/{item_id:int}"),
    ("GET", "/a/items/x", None),  # the convertor's regex refuses it: 404 inside the mount
    ("GET", "/a/only-post", "/a/only-post"),  # 405 inside a mount
    ("GET", "/a", None),  # a slash redirect to /a/
    ("GET", "/a/nowhere", None),
    ("GET", "/static/test_routes.py", "/static"),  # an opaque app: its mount path
    ("GET", "/static/missing.txt", "/static"),
    ("GET", "/dir", None),  # a slash redirect to /dir/
    ("GET", "/dir/", "/dir/"),
    ("GET", "/ping/", None),  # a slash redirect to /ping
    ("GET", "/anything/late", "/{anything}/late"),
    ("GET", "/nowhere", None),
]


def test_prediction_before_routing_is_exactly_what_starlettes_router_selects() -> None:
    requests = [(method, path) for method, path, _ in PREDICTION_TABLE]
    found = names(starlette_table_app(), requests)
    assert [(m, p, before, after) for m, p, before, after in found] == [
        (m, p, expected, expected) for m, p, expected in PREDICTION_TABLE
    ]


def test_prediction_follows_hosts_websockets_and_a_server_root_path() -> None:
    app = starlette_table_app()
    app.router.routes.append(WebSocketRoute("/ws/{room}", ok))
    assert routed(app, [("GET", "/hosted/1")], host="api.example.com") == ["/hosted/{x}"]
    assert routed(app, [("GET", "/hosted/1")]) == [None]  # another host: nothing matches
    resolver = StarletteRoutes(app)
    websocket = {"type": "websocket", "path": "/ws/lobby", "root_path": "", "headers": []}
    assert resolver(websocket) == "/ws/{room}"
    # uvicorn --root-path /svc: the path carries the root, the router matches what follows it.
    http = {"type": "http", "method": "GET", "path": "/svc/a/items/4", "root_path": "/svc"}
    assert resolver(http) == "/a/items/{item_id:int}"


def test_prediction_contains_a_route_whose_own_matching_raises() -> None:
    class Broken(BaseRoute):
        def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
            raise RuntimeError("a user's route class broke")

    app = Starlette(routes=[Broken(), Route("/after", ok)])
    resolver = StarletteRoutes(app)
    assert (
        resolver({"type": "http", "method": "GET", "path": "/after", "root_path": ""}) == "/after"
    )
    assert resolver({"type": "http", "method": "GET", "path": "/x", "root_path": ""}) is None


def test_routes_added_after_the_first_request_are_named() -> None:
    app = Starlette(routes=[Route("/first", ok)])
    resolver = StarletteRoutes(app)
    scope = {"type": "http", "method": "GET", "path": "/later/1", "root_path": ""}
    assert resolver(dict(scope)) is None
    app.router.routes.append(Mount("/later", routes=[Route("/{n}", ok)]))
    assert resolver(dict(scope)) == "/later/{n}"


# -- Litestar and Quart ------------------------------------------------------------------------


def test_litestar_handlers_prefixes_and_asgi_mounts_are_named_by_their_templates() -> None:
    @get("/items/{item_id:int}")
    async def read_item(item_id: FromPath[int]) -> dict[str, int]:
        return {"item_id": item_id}

    @get("/users/{name:str}")
    async def read_user(name: FromPath[str]) -> dict[str, str]:
        return {"name": name}

    @asgi("/static", is_mount=True, copy_scope=True)
    async def static(scope: LitestarScope, receive: LitestarReceive, send: LitestarSend) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"static"})

    @asgi(["/files", "/media"], is_mount=True, copy_scope=True)
    async def files(scope: LitestarScope, receive: LitestarReceive, send: LitestarSend) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"files"})

    app = Litestar([read_item, static, files, Router("/api", route_handlers=[read_user])])
    got = routed(
        app,
        [
            ("GET", "/items/1"),
            ("GET", "/api/users/ada"),
            ("GET", "/static/css/site.css"),
            ("GET", "/static"),
            ("GET", "/files/a.txt"),
            ("GET", "/media/b.png"),
            ("POST", "/items/1"),  # Litestar selects no handler for a 405
            ("GET", "/nowhere"),
        ],
    )
    assert got == [
        "/items/{item_id}",  # Litestar's template drops the parameter types
        "/api/users/{name}",
        "/static",
        "/static",
        "/files",
        "/media",
        None,
        None,
    ]


def quart_app() -> Quart:
    app = Quart(__name__)

    @app.route("/items/<int:item_id>")
    async def read_item(item_id: int) -> str:
        return str(item_id)

    @app.route("/dir/")
    async def directory() -> str:
        return "dir"

    @app.route("/only-post", methods=["POST"])
    async def only_post() -> str:
        return "posted"

    @app.websocket("/ws/<room>")
    async def room(room: str) -> None:
        return None

    return app


def test_quart_routes_are_named_by_their_url_rules_out_of_the_box() -> None:
    got = routed(
        quart_app(),
        [
            ("GET", "/items/1"),
            ("HEAD", "/items/2"),
            ("GET", "/dir/"),
            ("POST", "/only-post"),
            ("GET", "/items/x"),  # 404
            ("GET", "/dir"),  # werkzeug redirects to /dir/: no rule is selected
            ("GET", "/only-post"),  # 405: Quart's request.url_rule is None too
        ],
    )
    assert got == [
        "/items/<int:item_id>",
        "/items/<int:item_id>",
        "/dir/",
        "/only-post",
        None,
        None,
        None,
    ]
    resolver = QuartRoutes(quart_app())
    websocket = {"type": "websocket", "path": "/ws/lobby", "root_path": "", "headers": []}
    assert resolver(websocket) == "/ws/<room>"


def test_quarts_cache_is_bounded_and_raw_paths_never_come_out() -> None:
    resolver = QuartRoutes(quart_app(), cache_size=8)
    scopes = [
        {"type": "http", "method": "GET", "path": f"/items/{n}", "root_path": ""} for n in range(50)
    ]
    scopes += [
        {"type": "http", "method": "GET", "path": f"/scan/{n}", "root_path": ""} for n in range(50)
    ]
    got = {resolver(scope) for scope in scopes}
    assert got == {"/items/<int:item_id>", None}
    assert len(resolver._cache) <= 8


# -- the picker ---------------------------------------------------------------------------------


async def bare(scope: Any, receive: Any, send: Any) -> None:
    return None


class Wrapper:
    """A pure ASGI middleware as Starlette's docs write them: the wrapped app in ``.app``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        pytest.param(lambda: Starlette(), StarletteRoutes, id="starlette"),
        pytest.param(lambda: FastAPI(), StarletteRoutes, id="fastapi"),
        pytest.param(lambda: Wrapper(Wrapper(Starlette().router)), StarletteRoutes, id="in-stack"),
        pytest.param(lambda: quart_app(), QuartRoutes, id="quart"),
        pytest.param(lambda: Wrapper(quart_app().asgi_app), QuartRoutes, id="quart-asgi_app"),
        pytest.param(lambda: Litestar([]), LitestarRoutes, id="litestar"),
        pytest.param(lambda: Wrapper(bare), PathTemplateRoutes, id="bare"),
    ],
)
def test_default_resolver_picks_the_framework_under_any_wrappers(
    make: Callable[[], Any], kind: type
) -> None:
    assert type(default_resolver(make())) is kind


def test_binding_the_outermost_app_names_routes_the_middleware_does_not_wrap() -> None:
    inner = Starlette(routes=[Route("/inner", ok)])
    top = Starlette(routes=[Mount("/sub", app=inner), Route("/top", ok)])
    resolver = default_resolver(inner.router)
    assert isinstance(resolver, StarletteRoutes)
    resolver.bind(top)
    scope = {"type": "http", "method": "GET", "path": "/sub/inner", "root_path": ""}
    assert resolver(scope) == "/sub/inner"
    resolver.bind(None)  # nothing to bind: the tree it has stays
    assert resolver(dict(scope)) == "/sub/inner"


def test_the_fallback_reads_path_template_and_never_an_empty_one() -> None:
    resolver = default_resolver(bare)
    assert resolver({"type": "http", "path_template": "/things/{id}"}) == "/things/{id}"
    assert resolver({"type": "http", "path_template": ""}) is None
    assert resolver({"type": "http", "path": "/things/1"}) is None


# -- the examples of docs/routes.md are the code the tests run ---------------------------------


def resolver_section(source: str) -> str:
    start = source.index("# -- the resolver of docs/routes.md")
    end = source.index("# -- end of the resolver")
    return source[source.index("\n", start) + 1 : end].strip()


@pytest.mark.parametrize("name", ["routes_datasette", "routes_django"])
def test_the_docs_show_the_resolvers_the_tests_run(name: str) -> None:
    # Read, not imported: the Django app configures Django for its whole process.
    source = (HERE / "apps" / f"{name}.py").read_text()
    docs = (ROOT / "docs" / "routes.md").read_text()
    assert resolver_section(source) in docs


# -- end to end: real uvicorn, real /metrics ----------------------------------------------------

REQUESTS_OF = {
    "starlette": [
        "/",
        "/a/items/1",
        "/b/items/2",
        "/users/7/items/3",
        "/users/7/posts/9",
        "/a/only-post",
        "/static/__init__.py",
        "/dir",
        "/nowhere/42",
        "/a/items/5?block=60",
    ],
    "fastapi": [
        "/",
        "/direct/items/1",
        "/api/v1/items/2",
        "/api/v2/items/3",
        "/tenants/acme/v1/items/4",
        "/static/__init__.py",
        "/api/nowhere",
    ],
    "litestar": ["/", "/items/1", "/api/users/ada", "/static/site.css", "/nowhere"],
    "quart": ["/", "/items/1", "/dir/", "/dir", "/only-post", "/items/x"],
    "datasette": ["/", "/shop", "/shop/items", "/shop/items/1", "/shop/items.json", "/-/versions"],
    "django": ["/", "/items/3/", "/api/users/ada", "/items/3", "/nowhere"],
}
ROUTES_OF = {
    "starlette": {
        "/",
        "/a/items/{item_id:int}",
        "/b/items/{item_id:int}",
        "/users/{uid}/items/{item_id:int}",
        "/users/{uid}/posts/{post_id}",
        "/a/only-post",
        "/static",
        "<unmatched>",
    },
    "fastapi": {
        "/",
        "/direct/items/{item_id}",
        "/api/v1/items/{item_id}",
        "/api/v2/items/{item_id}",
        "/tenants/{tenant}/v1/items/{item_id}",
        "/static",
        "<unmatched>",
    },
    "litestar": {"/", "/items/{item_id}", "/api/users/{name}", "/static", "<unmatched>"},
    "quart": {"/", "/items/<int:item_id>", "/dir/", "<unmatched>"},
    "datasette": {
        "/",
        "/{database}",
        "/{database}/{table}",
        "/{database}/{table}/{pks}",
        "/-/{page}",
    },
    "django": {"/", "/items/<int:item_id>/", "/api/users/<str:name>", "<unmatched>"},
}
ROUTE_LABEL = re.compile(r'(?:route|culprit)="([^"]*)"')


def scrape_once_counted(client: httpx.Client, sent: int) -> str | None:
    """The scrape once all ``sent`` requests are counted, else None.

    A request is counted when the app returns, which can come after its client has the whole
    response: a file response closes its file, in a worker thread, after its last body message.
    """
    text = client.get("/metrics").text
    counted = sum(
        value
        for name, _, value in Metrics(text).samples
        if name == "stallwatch_http_request_duration_seconds_count"
    )
    return text if counted >= sent else None


@pytest.mark.parametrize("framework", list(REQUESTS_OF))
def test_metrics_of_every_framework_name_templates_never_raw_paths(framework: str) -> None:
    target = f"tests.apps.routes_{framework}:app"
    with (
        uvicorn(target, args=["--loop", "asyncio"], ready_path="/metrics") as base,
        httpx.Client(base_url=base, timeout=10.0) as client,
    ):
        for path in REQUESTS_OF[framework]:
            client.get(path)
        sent = len(REQUESTS_OF[framework])
        if framework == "starlette":
            # ?block=60 held the loop in a user middleware before the router ran: the stall
            # is charged to the route the router then selected, whatever its cause was.
            def stalled() -> str | None:
                text = scrape_once_counted(client, sent)
                if text is None:
                    return None
                found = Metrics(text).labelsets("stallwatch_event_loop_stalls_total")
                culprits = {labels["culprit"] for labels in found}
                return text if "/a/items/{item_id:int}" in culprits else None

            text = poll(stalled, "a stall charged to /a/items/{item_id:int}", timeout=5.0)
        else:
            text = poll(lambda: scrape_once_counted(client, sent), f"{sent} requests counted")
    metrics = Metrics(text)
    duration = "stallwatch_http_request_duration_seconds_count"
    assert {labels["route"] for labels in metrics.labelsets(duration)} == ROUTES_OF[framework]
    assert metrics.value(duration, method="GET", route="/", status="200") == 1
    # No series anywhere carries a raw path or the internal name of a request not yet routed.
    assert set(ROUTE_LABEL.findall(text)) <= ROUTES_OF[framework] | {"<background>"}
    assert "<unrouted>" not in text

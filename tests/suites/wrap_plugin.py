"""pytest plugin: put stallwatch in every request another project's own tests make.

``run.py`` loads it with ``-p`` in the *wrapped* run only; nothing loads it otherwise (it has
no entry point and its name is no ``conftest.py``). It is loaded under a module name of its
own (``run.py`` copies it to ``stallwatch_suites_wrap.py`` on ``PYTHONPATH``), never as
``tests.suites.wrap_plugin``: every project here has a ``tests`` package of its own, and
this checkout's would shadow it.

Two ways in, chosen per project by ``--stallwatch-suites-wrap``:

``apps`` (Starlette, FastAPI): every app that Starlette's ``TestClient`` or
``httpx.ASGITransport`` serves is wrapped in ``StallwatchMiddleware(app,
registry=CollectorRegistry())``, a fresh registry per wrap so metric names never collide.
``TestClient`` is patched after its own ``__init__``: by then it has turned an ASGI2 app into
an ASGI3 one (wrapping before would hide an ASGI2 app from its check), and one middleware
instance goes both to ``client.app`` (what lifespan talks to) and to the client's transport
(what requests and websockets talk to), so lifespan starts and stops the monitor the
requests use, as in a server.

``tests`` (anyio, which has no ASGI apps): every async test that anyio's plugin runs on an
asyncio loop (uvloop included) runs *as the app of a request*: one ``StallwatchMiddleware``
(one for all tests, as a server has one for all requests) serves, per test, one HTTP request
whose app awaits the test's body and then answers 200. So the body runs on its own loop, in
anyio's runner task as it would bare, with a real ``LoopMonitor`` started on that loop (its
task attribution installed, its heartbeat and watchdog running), a real ``RequestSpan``
timing the body, and stallwatch's request context variable set, so that every task the test
creates (task groups, ``create_task``, ``to_thread``'s waiters, ...) is attributed to it
exactly as a request's tasks are, by whatever means stallwatch attributes them. Setting the
context variable by hand around each test instead would tie this file to how attribution is
built (being rewritten as this is written) and would skip the span, the monitor and the
timeline: this goes through the public middleware only. Not run as requests: trio tests
(stallwatch watches asyncio loops; under trio the middleware only passes requests through),
synchronous tests, hypothesis-driven tests (anyio's plugin rewrites their inner test
itself), and async fixtures (they run outside the test's request, as a server's start-up
code runs outside any request).

So that a run that wrapped nothing cannot pass for "no differences", the plugin counts what
it did (apps wrapped, responses sent from inside a request, tests run as requests) and
writes the counts as JSON to the file named by ``STALLWATCH_SUITES_STATS``; ``run.py``
fails a wrapped run whose counts show nothing was watched. Whether a request's context is
set is asked in one place, ``current_request``: the only line here that knows stallwatch's
internals.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stallwatch import StallwatchMiddleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATS_ENV = "STALLWATCH_SUITES_STATS"
MODES = ("apps", "tests")


def current_request() -> object | None:
    """The request stallwatch attributes the running code to, or None outside any.

    The one place that knows stallwatch's internals (the ``CURRENT`` context variable of
    ``stallwatch/request/tasks.py``, ``stallwatch/tasks.py`` before the move, holding the
    request's ``RequestSpan``): update it here if attribution moves.
    """
    try:
        from stallwatch.request.tasks import CURRENT
    except ImportError:  # before the modules moved into packages
        from stallwatch.tasks import CURRENT

    return CURRENT.get()


@dataclass
class Stats:
    """What the wrapped run really did; written for ``run.py`` to check."""

    mode: str = ""
    apps_wrapped: int = 0
    sends_in_request: int = 0
    sends_outside_request: int = 0
    """Responses sent on an asyncio loop with no request in the context (should be 0)."""
    sends_not_on_asyncio: int = 0
    """Responses of apps served on trio (Starlette runs its tests on both)."""
    tests_as_requests: int = 0
    tests_in_request: int = 0
    """Tests whose body saw stallwatch's request context set (should equal the above)."""
    async_tests_not_wrapped: int = 0
    """Async tests run as they are: trio's and hypothesis-driven ones."""
    steps: str = ""
    """Which step accounting ran: ``python`` or ``c`` (``stallwatch/loop/steps.py``)."""


def _steps() -> str:
    try:
        from stallwatch.loop.steps import IMPLEMENTATION
    except ImportError:  # before the step accounting had two implementations
        return "python"
    return IMPLEMENTATION


STATS = Stats(steps=_steps())


class Watched:
    """``StallwatchMiddleware`` around an app, counting what it sends from inside a request.

    The count reads the context at the moment the app sends (through the middleware's own
    ``send``), so it shows that the app ran inside the request the middleware opened.
    """

    __slots__ = ("middleware",)

    def __init__(self, app: ASGIApp) -> None:
        self.middleware = StallwatchMiddleware(app, registry=CollectorRegistry())
        STATS.apps_wrapped += 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") in ("http", "websocket"):
            send = _counted(send)
        await self.middleware(scope, receive, send)


def _counted(send: Send) -> Send:
    def counted(message: Message) -> Awaitable[None]:
        if current_request() is not None:
            STATS.sends_in_request += 1
        elif _on_asyncio():
            STATS.sends_outside_request += 1
        else:  # trio: stallwatch passes the request through, by design
            STATS.sends_not_on_asyncio += 1
        return send(message)

    return counted


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def watched(app: Any) -> Any:
    """``app`` in stallwatch, once: an app wrapped already is left as it is."""
    if isinstance(app, (Watched, StallwatchMiddleware)):
        return app
    return Watched(app)


# -- apps: TestClient and httpx.ASGITransport ----------------------------------------------------


class AppPatches:
    """Wraps the apps of every ``TestClient`` and ``ASGITransport`` made while installed."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def install(self) -> None:
        self._patch_testclient()
        self._patch_asgi_transport()
        if not self._undo:
            raise pytest.UsageError(
                "stallwatch-suites: neither starlette.testclient nor httpx is importable: "
                "there is nothing to wrap (use --stallwatch-suites-wrap=tests?)"
            )

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _patch_testclient(self) -> None:
        try:
            from starlette import testclient
        except ImportError:
            return
        client_class: Any = testclient.TestClient
        transport_class: Any = testclient._TestClientTransport
        original = client_class.__init__

        def init(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
            original(self, app, *args, **kwargs)
            transport = getattr(self, "_transport", None)  # httpx.Client's
            if not isinstance(transport, transport_class) or transport.app is not self.app:
                raise RuntimeError(
                    "stallwatch-suites: TestClient no longer hands its app to "
                    "_TestClientTransport as expected; update wrap_plugin.py"
                )
            self.app = transport.app = watched(self.app)

        client_class.__init__ = init
        self._undo.append(lambda: setattr(client_class, "__init__", original))

    def _patch_asgi_transport(self) -> None:
        try:
            import httpx
        except ImportError:
            return
        transport_class: Any = httpx.ASGITransport
        original = transport_class.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            self.app = watched(self.app)

        transport_class.__init__ = init
        self._undo.append(lambda: setattr(transport_class, "__init__", original))


# -- tests: each asyncio test of anyio's plugin as one request ---------------------------------


def _asyncio_backend(item: pytest.Function) -> bool | None:
    """True on asyncio, False on another backend, None if anyio's plugin does not run it."""
    backend = item.funcargs.get("anyio_backend")
    if not backend:
        return None
    name = backend[0] if isinstance(backend, tuple) else backend
    return name == "asyncio"


_TEST = "stallwatch_suites.test"
"""The scope key that carries the test (and a list for its result) to the one app all share."""


async def _serve_test(scope: Scope, receive: Receive, send: Send) -> None:
    """The app behind the tests' middleware: await the test, then answer 200."""
    if current_request() is not None:
        STATS.tests_in_request += 1
    body, results = scope[_TEST]
    results.append(await body())
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@functools.cache
def tests_middleware() -> StallwatchMiddleware:
    """One middleware for every test, as a server has one for every request; it follows the
    test's loop (a new loop gets a monitor of its own, a closed loop's monitor stops itself)."""
    return StallwatchMiddleware(_serve_test, registry=CollectorRegistry())


def as_request(test: Callable[..., Awaitable[Any]], path: str) -> Callable[..., Awaitable[Any]]:
    """An async function that awaits ``test`` as the app of one watched HTTP request."""

    async def run_as_request(*args: Any, **kwargs: Any) -> Any:
        STATS.tests_as_requests += 1
        results: list[Any] = []
        scope = _scope(path)
        scope[_TEST] = (lambda: test(*args, **kwargs), results)
        await tests_middleware()(scope, _receive, _discard)
        return results[0] if results else None

    return run_as_request


def _scope(path: str) -> Scope:
    raw = path.encode("ascii", "backslashreplace")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": raw,
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Message) -> None:
    return None


class RequestPerTest:
    """Swaps an asyncio test's function for ``as_request`` of it while anyio's plugin runs it."""

    @pytest.hookimpl(wrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
        on_asyncio = _asyncio_backend(pyfuncitem)
        test = pyfuncitem.obj
        if on_asyncio is None or not inspect.iscoroutinefunction(test):
            return (yield)
        if not on_asyncio or hasattr(test, "hypothesis"):
            STATS.async_tests_not_wrapped += 1
            return (yield)
        pyfuncitem.obj = as_request(test, "/" + pyfuncitem.name)
        try:
            return (yield)
        finally:
            pyfuncitem.obj = test


# -- the plugin ------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stallwatch-suites-wrap",
        choices=MODES,
        default="apps",
        help="apps: wrap TestClient/ASGITransport apps; tests: run asyncio tests as requests",
    )


_PATCHES = AppPatches()


def pytest_configure(config: pytest.Config) -> None:
    try:
        current_request()
    except Exception as exc:  # attribution moved: say where to look, before any test runs
        raise pytest.UsageError(
            f"stallwatch-suites: cannot read stallwatch's request context ({exc!r}); "
            "update current_request() in tests/suites/wrap_plugin.py"
        ) from exc
    mode = config.getoption("stallwatch_suites_wrap")
    STATS.mode = mode
    if mode == "apps":
        _PATCHES.install()
    else:
        config.pluginmanager.register(RequestPerTest(), "stallwatch-suites-tests")


def pytest_unconfigure(config: pytest.Config) -> None:
    _PATCHES.uninstall()
    path = os.environ.get(STATS_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(asdict(STATS), file, indent=1)

"""Wrapped in ``StallwatchMiddleware``, any ASGI app behaves exactly as it does bare.

Hypothesis draws a scope (valid, or broken the ways real servers and test clients break
it: a key missing, a value of the wrong type, an unknown scope type), what the client sends
(request chunks, a disconnect, junk), and a script for the app (receive, send any message,
in any order, read the scope, yield, raise). The same script runs twice on the same loop:
on the bare app, then through the middleware. Both runs must send the same messages in the
same order, receive the same ones, and end the same way (no exception, or one of the same
type and arguments). Stallwatch may not see what a broken request was, but it must never
raise an error of its own into it; for valid requests it must not even count one.

One middleware and one loop serve every example, as a server would: state kept between
requests (the timeline, the tallies, the monitor) is part of what is under test.
"""

from __future__ import annotations

import asyncio
import copy
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from stallwatch import StallwatchMiddleware

Script = list[tuple[Any, ...]]

# -- the app both runs execute ---------------------------------------------------------------


class Scripted:
    """An ASGI app that does what the current example's script says, and answers lifespan."""

    def __init__(self) -> None:
        self.script: Script = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if isinstance(scope, dict) and scope.get("type") == "lifespan" and scope.get("fuzz-own"):
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        for step in self.script:
            action = step[0]
            if action == "receive":
                await receive()
            elif action == "send":
                await send(copy.deepcopy(step[1]))
            elif action == "echo":  # the app sees the scope the server gave, unchanged
                seen = {key: scope.get(key) for key in ("type", "path", "method", "headers")}
                await send({"type": "http.response.body", "body": repr(seen).encode()})
            elif action == "yield":
                await asyncio.sleep(0)
            elif action == "raise":
                raise step[1](*step[2:])


@dataclass(frozen=True)
class Outcome:
    sent: list[Any]
    received: list[Any]
    error: tuple[type[BaseException], tuple[Any, ...]] | None


async def drive(app: Any, scope: Any, inbox: list[Any], send_fails_at: int | None) -> Outcome:
    """Run ``app`` once as a server would, recording everything that crosses the boundary."""
    sent: list[Any] = []
    received: list[Any] = []
    pending = iter(copy.deepcopy(inbox))

    async def receive() -> Any:
        await asyncio.sleep(0)
        message = next(pending, {"type": "http.disconnect"})
        received.append(message)
        return message

    async def send(message: Any) -> None:
        if send_fails_at is not None and len(sent) == send_fails_at:
            raise OSError("the client went away")  # what a server raises on a dead socket
        sent.append(copy.deepcopy(message))

    try:
        await app(copy.deepcopy(scope), receive, send)
    except (Exception, asyncio.CancelledError) as exc:
        return Outcome(sent, received, (type(exc), exc.args))
    return Outcome(sent, received, None)


# -- one loop and one middleware for every example -------------------------------------------


@dataclass
class Rig:
    loop: asyncio.AbstractEventLoop
    app: Scripted
    wrapped: StallwatchMiddleware
    registry: CollectorRegistry

    def both(self, scope: Any, script: Script, inbox: list[Any], fails: int | None) -> None:
        self.app.script = script
        bare = self.loop.run_until_complete(drive(self.app, scope, inbox, fails))
        wrapped = self.loop.run_until_complete(drive(self.wrapped, scope, inbox, fails))
        assert wrapped == bare, f"scope {scope!r}\nscript {script!r}\ninbox {inbox!r}"

    def internal_errors(self) -> float:
        return sum(
            sample.value
            for family in self.registry.collect()
            if family.name == "stallwatch_internal_errors"
            for sample in family.samples
            if sample.name.endswith("_total")
        )


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    loop = asyncio.new_event_loop()
    registry = CollectorRegistry()
    app = Scripted()
    wrapped = StallwatchMiddleware(app, registry=registry)
    startup: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    replies: list[Any] = []

    async def send(message: Any) -> None:
        replies.append(message)

    lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}, "fuzz-own": True}
    startup.put_nowait({"type": "lifespan.startup"})
    task = loop.create_task(wrapped(lifespan, startup.get, send))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert replies == [{"type": "lifespan.startup.complete"}]
    try:
        yield Rig(loop, app, wrapped, registry)
    finally:
        startup.put_nowait({"type": "lifespan.shutdown"})
        loop.run_until_complete(asyncio.wait_for(task, 5))
        loop.close()


# -- what hypothesis draws -------------------------------------------------------------------

ODD = st.one_of(
    st.none(),
    st.integers(-3, 600),
    st.binary(max_size=8),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.just({"a": 1}),
    st.floats(allow_nan=False),
)
"""Values of the wrong type for any key."""

METHODS = st.one_of(
    st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "get"]),
    st.text(alphabet=string.ascii_uppercase + "-_", min_size=1, max_size=12),
)
PATHS = st.one_of(
    st.sampled_from(["/", "/items/1", "/metrics", "/_stallwatch", "//", "/a%20b", ""]),
    st.text(max_size=30).map(lambda s: "/" + s),
)
HEADERS = st.lists(
    st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=24)), max_size=4
)


@st.composite
def valid_scopes(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["http", "http", "http", "websocket"]))
    path = draw(PATHS)
    scope: dict[str, Any] = {
        "type": kind,
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": draw(st.sampled_from(["1.0", "1.1", "2"])),
        "scheme": "http" if kind == "http" else "ws",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogatepass"),
        "query_string": draw(st.binary(max_size=16)),
        "root_path": draw(st.sampled_from(["", "/api"])),
        "headers": draw(HEADERS),
        "client": ("127.0.0.1", draw(st.integers(1, 65535))),
        "server": ("127.0.0.1", 8000),
    }
    if kind == "http":
        scope["method"] = draw(METHODS)
    return scope


@st.composite
def broken_scopes(draw: st.DrawFn) -> Any:
    """A valid scope with keys taken away, values of odd types, or an odd scope type."""
    scope = draw(valid_scopes())
    keys = sorted(scope)
    for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        del scope[key]
    for key in draw(st.lists(st.sampled_from([*keys, "state", "extensions"]), max_size=3)):
        scope[key] = draw(ODD)
    if draw(st.booleans()):
        scope["type"] = draw(st.sampled_from(["HTTP", "", "webtransport", "lifespan.x", None, 7]))
    return scope


def start(status: Any = 200, headers: Any = ()) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def body(data: bytes = b"", more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


VALID_MESSAGES = st.one_of(
    st.builds(start, st.sampled_from([200, 201, 204, 301, 404, 418, 500, 503]), HEADERS),
    st.builds(body, st.binary(max_size=16), st.booleans()),
    st.sampled_from(
        [
            {"type": "websocket.accept"},
            {"type": "websocket.send", "text": "hi"},
            {"type": "websocket.close", "code": 1000},
            {"type": "http.response.trailers", "headers": [], "more_trailers": False},
        ]
    ),
)
BROKEN_MESSAGES = st.one_of(
    st.builds(start, ODD, st.just(())),
    st.dictionaries(st.sampled_from(["type", "status", "body", "headers", "more_body"]), ODD),
    st.fixed_dictionaries({"type": st.sampled_from(["http.response.start", "x"])}),
    st.builds(lambda h: {"type": "http.response.start", "status": 200, "headers": h}, ODD),
)
ERRORS = st.sampled_from(
    [
        ("raise", RuntimeError, "the app failed"),
        ("raise", ValueError, "bad value"),
        ("raise", KeyError, "path"),
        ("raise", asyncio.CancelledError),
    ]
)


def scripts(messages: st.SearchStrategy[Any]) -> st.SearchStrategy[Script]:
    step = st.one_of(
        st.just(("receive",)),
        st.just(("yield",)),
        st.just(("echo",)),
        messages.map(lambda m: ("send", m)),
    )
    return st.tuples(st.lists(step, max_size=8), st.one_of(st.none(), ERRORS)).map(
        lambda parts: parts[0] + ([parts[1]] if parts[1] else [])
    )


@st.composite
def well_formed_scripts(draw: st.DrawFn) -> Script:
    """What a correct app does: read the body, one start, body chunks, the last without more."""
    script: Script = [("receive",)] * draw(st.integers(0, 2))
    script.append(("send", start(draw(st.sampled_from([200, 204, 404, 500])), draw(HEADERS))))
    for chunk in draw(st.lists(st.binary(max_size=16), max_size=3)):
        script += [("send", body(chunk, more=True)), ("yield",)]
    script.append(("send", body(draw(st.binary(max_size=16)))))
    if draw(st.booleans()):
        script.append(draw(ERRORS))  # an app may fail after it answered
    return script


INBOX = st.lists(
    st.one_of(
        st.builds(
            lambda b, more: {"type": "http.request", "body": b, "more_body": more},
            st.binary(max_size=16),
            st.booleans(),
        ),
        st.just({"type": "http.disconnect"}),
        st.dictionaries(st.sampled_from(["type", "body"]), ODD, max_size=2),
    ),
    max_size=3,
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
"""Derandomized: CI sees the same examples every run, so a red build is a real finding."""


# -- the specification ------------------------------------------------------------------------


@FUZZ
@given(scope=valid_scopes(), script=well_formed_scripts(), inbox=INBOX)
def test_a_well_formed_exchange_is_untouched_and_costs_stallwatch_no_error(
    rig: Rig, scope: dict[str, Any], script: Script, inbox: list[Any]
) -> None:
    before = rig.internal_errors()
    rig.both(scope, script, inbox, None)
    assert rig.internal_errors() == before


@FUZZ
@given(
    scope=valid_scopes(),
    script=scripts(VALID_MESSAGES),
    inbox=INBOX,
    fails=st.one_of(st.none(), st.integers(0, 3)),
)
def test_any_order_of_valid_messages_and_a_failing_send_behave_as_bare(
    rig: Rig, scope: dict[str, Any], script: Script, inbox: list[Any], fails: int | None
) -> None:
    rig.both(scope, script, inbox, fails)


@FUZZ
@given(
    scope=broken_scopes(),
    script=scripts(st.one_of(VALID_MESSAGES, BROKEN_MESSAGES)),
    inbox=INBOX,
    fails=st.one_of(st.none(), st.integers(0, 3)),
)
@example(  # found by this test: no "path" made stallwatch raise KeyError before the app ran
    scope={"type": "http", "method": "GET", "headers": []},
    script=[("send", start(500)), ("send", body(b"Internal Server Error"))],
    inbox=[],
    fails=None,
)
@example(scope={"type": "http", "path": "/"}, script=[("echo",)], inbox=[], fails=None)
@example(
    scope={"type": "http", "path": "/", "method": b"GET", "headers": None},
    script=[("send", start("200")), ("send", body(b"x"))],
    inbox=[],
    fails=None,
)
def test_broken_scopes_and_messages_behave_exactly_as_bare(
    rig: Rig, scope: Any, script: Script, inbox: list[Any], fails: int | None
) -> None:
    rig.both(scope, script, inbox, fails)


ANSWER = [("send", start(200)), ("send", body(b"ok"))]
GET = {"type": "http", "path": "/", "method": "GET", "headers": [], "query_string": b""}


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GET.items() if k != key}


@pytest.mark.parametrize(
    ("scope", "script"),
    [
        pytest.param(_without("path"), ANSWER, id="scope-without-path"),
        pytest.param(_without("method"), ANSWER, id="scope-without-method"),
        pytest.param(_without("type"), ANSWER, id="scope-without-type"),
        pytest.param(_without("headers"), ANSWER, id="scope-without-headers"),
        pytest.param({**GET, "path": b"/"}, ANSWER, id="path-as-bytes"),
        pytest.param({**GET, "method": None}, ANSWER, id="method-none"),
        pytest.param({**GET, "headers": None}, ANSWER, id="headers-none"),
        pytest.param({**GET, "type": None}, ANSWER, id="type-none"),
        pytest.param(GET, [("send", {})], id="message-without-type"),
        pytest.param(GET, [("send", ["not", "a", "dict"])], id="message-not-a-dict"),
        pytest.param(
            GET, [("send", {"type": "http.response.start"}), ("send", body())], id="start-no-status"
        ),
        pytest.param(GET, [("send", start("200")), ("send", body())], id="status-as-text"),
        pytest.param(GET, [("send", body(b"x")), ("send", start(200))], id="body-before-start"),
    ],
)
def test_each_known_breakage_behaves_as_bare(rig: Rig, scope: Any, script: Script) -> None:
    """The shapes that broke stallwatch once (or nearly), each named, so a regression says which."""
    rig.both(scope, script, [], None)


def test_the_rig_really_watches_requests(rig: Rig) -> None:
    """The comparison above means something only if stallwatch was on the path: it counted."""
    rig.app.script = [("send", start(200)), ("send", body(b"ok"))]
    scope = {"type": "http", "method": "GET", "path": "/fuzz-probe", "headers": []}
    rig.loop.run_until_complete(drive(rig.wrapped, scope, [], None))
    rig.wrapped.flush()
    counted = rig.registry.get_sample_value(
        "stallwatch_http_request_duration_seconds_count",
        {"method": "GET", "route": "<unmatched>", "status": "200"},
    )
    assert counted is not None
    assert counted >= 1

"""The loop profile (``stallwatch.profile``): where the loop's time goes, by route and line.

Unit tests on plain values and an injected clock: the bounded aggregation, the folded
stacks, the hint table line by line, the views, the sampler's schedule and charging. The
end-to-end test at the bottom runs a real app with known short blocks and holds the
profile's shares to the time the blocks really took.
"""

from __future__ import annotations

import gc
import json
import os
import sysconfig
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from stallwatch._types import PlainRequest
from stallwatch.events import BACKGROUND, Frame
from stallwatch.profile import (
    LIBRARY_ONLY,
    LOOP_OWN,
    NO_STACK,
    OTHER_LINES,
    LoopProfile,
    ProfileSampler,
    aggregate,
    folded,
    hint_for,
    hints,
    locate,
    parse_folded,
    profile_text,
    profile_view,
)
from stallwatch.profile.hints import Imports, parse_imports
from stallwatch.profile.stacks import OTHER_ROUTES, PROFILE_DEPTH, ShortPaths, folded_frame
from stallwatch.profile.view import held_longest, held_longest_text, route_rate
from stallwatch.stall.sampling import OMITTED

pytest_plugins = ["pytester"]

STDLIB = sysconfig.get_paths()["stdlib"]
SITE = "/srv/venv/lib/python3.11/site-packages"

APP = Frame("/srv/app/cache.py", 154, "read_blocking")
HANDLER = Frame("/srv/app/app.py", 40, "handler")
OTHER = Frame("/srv/app/render.py", 12, "render")
RUNNER = Frame(os.path.join(STDLIB, "asyncio", "runners.py"), 118, "run")
RUN_ONCE = Frame(os.path.join(STDLIB, "asyncio", "base_events.py"), 1922, "_run_once")
HANDLE = Frame(os.path.join(STDLIB, "asyncio", "events.py"), 80, "_run")
SERVER = Frame(f"{SITE}/uvicorn/protocols/http/h11_impl.py", 404, "run_asgi")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def is_app(frame: Frame) -> bool:
    return frame.filename.startswith("/srv/app/")


def top_frame(frames: Sequence[Frame]) -> Frame | None:
    return next((f for f in reversed(frames) if is_app(f)), None)


def stack(*inner: Frame) -> tuple[Frame, ...]:
    """A stack as the watchdog reads it: the loop's runner, a handle, then ``inner``."""
    return (RUNNER, RUN_ONCE, HANDLE, SERVER, *inner)


def profile(clock: Clock, **kwargs: object) -> LoopProfile:
    return LoopProfile(period=0.01, clock=clock, wall=lambda: 1.7e9, **kwargs)  # type: ignore[arg-type]


# -- where a sample is filed -------------------------------------------------------------------


def test_a_sample_is_filed_under_its_innermost_app_frame_with_the_callbacks_frames() -> None:
    location, kept = locate(stack(HANDLER, APP), top_frame)
    assert location == APP
    assert kept == (SERVER, HANDLER, APP)  # the loop's runner and dispatch are left out


def test_a_sample_without_app_code_is_library_only_and_between_callbacks_the_loops_own() -> None:
    assert locate(stack(), top_frame)[0] == LIBRARY_ONLY
    location, kept = locate((RUNNER, RUN_ONCE), top_frame)
    assert location == LOOP_OWN
    assert kept == (RUN_ONCE,)


def test_a_deep_stack_keeps_its_innermost_frames_and_says_how_many_were_cut() -> None:
    deep = tuple(Frame("/srv/app/rec.py", i, "rec") for i in range(PROFILE_DEPTH + 10))
    location, kept = locate(stack(*deep), top_frame)
    assert location == deep[-1]
    assert len(kept) == PROFILE_DEPTH
    assert kept[0].filename == OMITTED
    assert kept[0].lineno == len(deep) + 1 - (PROFILE_DEPTH - 1)  # SERVER is cut too
    assert kept[1:] == deep[-(PROFILE_DEPTH - 1) :]


# -- the aggregation ------------------------------------------------------------------------------


def test_counts_per_route_and_line_most_sampled_first_with_their_stacks() -> None:
    clock = Clock()
    p = profile(clock)
    for _ in range(8):
        p.add("/cache/{key}", APP, (SERVER, HANDLER, APP))
    p.add("/cache/{key}", APP, (SERVER, APP))
    p.add("/cache/{key}", OTHER, (SERVER, OTHER))
    p.add(BACKGROUND, LIBRARY_ONLY, (SERVER,))
    clock.now += 5
    snap = p.snapshot()
    assert snap.samples == 11
    assert [r.route for r in snap.routes] == ["/cache/{key}", BACKGROUND]
    cache = snap.routes[0]
    assert cache.samples == 10
    assert [(line.location, line.samples) for line in cache.lines] == [(APP, 9), (OTHER, 1)]
    assert [s.count for s in cache.lines[0].stacks] == [8, 1]
    assert cache.lines[0].unstacked == 0
    assert snap.covered == pytest.approx(5.0)


def test_the_window_takes_the_last_buckets_and_old_ones_are_forgotten() -> None:
    clock = Clock(1000.0)
    p = profile(clock, span=60.0, bucket=10.0)
    p.add("/old", APP, None)
    clock.now += 30
    p.add("/new", APP, None)
    assert [r.route for r in p.snapshot(10).routes] == ["/new"]
    assert {r.route for r in p.snapshot(60).routes} == {"/old", "/new"}
    clock.now += 61
    p.add("/newer", APP, None)
    assert [r.route for r in p.snapshot().routes] == ["/newer"]
    with pytest.raises(ValueError, match="window"):
        p.snapshot(0)


def test_a_route_shows_its_top_lines_and_one_other_row() -> None:
    clock = Clock()
    p = profile(clock, lines=3)
    for i in range(10):
        for _ in range(10 - i):
            p.add("/r", Frame("/srv/app/x.py", i, "f"), None)
    route = p.snapshot().routes[0]
    assert [line.samples for line in route.lines] == [10, 9, 8, 7 + 6 + 5 + 4 + 3 + 2 + 1]
    assert route.lines[-1].location == OTHER_LINES
    assert route.samples == sum(range(1, 11))


def test_a_line_that_turns_hot_late_in_a_full_route_is_counted_as_itself() -> None:
    clock = Clock()
    p = profile(clock, lines=2, span=86_400.0, bucket=86_400.0)  # one long bucket, as a session's
    for i in range(2 * aggregate.KEEP_FACTOR + 5):  # the route fills with lines seen once
        p.add("/r", Frame("/srv/app/cold.py", i, "f"), (SERVER,))
    for _ in range(50):
        p.add("/r", APP, (HANDLER, APP))
    route = p.snapshot().routes[0]
    assert route.lines[0].location == APP
    assert route.lines[0].samples == 50
    assert route.lines[0].stacks[0].count == 50
    assert route.samples == 50 + 2 * aggregate.KEEP_FACTOR + 5  # nothing lost
    assert route.lines[-1].location == OTHER_LINES


def test_bounds_hold_under_many_routes_lines_and_stacks() -> None:
    clock = Clock()
    p = profile(clock, lines=5, span=300.0, bucket=10.0)
    n = 0
    for bucket in range(40):  # more buckets than the ring holds
        for route in range(aggregate.ROUTES_PER_BUCKET * 2):
            for line in range(20):
                frames = (SERVER, Frame(f"/srv/app/r{route}.py", line, f"f{bucket}"))
                p.add(f"/r{route}", frames[-1], frames)
                n += 1
        clock.now += 10
    kept = [b for b in p._buckets if b.epoch >= 0]
    assert len(kept) <= 31
    for b in kept:
        assert len(b.routes) <= aggregate.ROUTES_PER_BUCKET + 1  # + (other routes)
        assert b.cells <= aggregate.CELLS_PER_BUCKET + len(b.routes)  # + an other row each
        assert sum(len(lines) for lines in b.routes.values()) == b.cells
        assert b.stacks <= aggregate.STACKS_PER_BUCKET
        for lines in b.routes.values():
            assert len(lines) <= 5 * aggregate.KEEP_FACTOR + 1
    snap = p.snapshot()
    assert OTHER_ROUTES in [r.route for r in snap.routes]
    # Nothing is lost: every sample of the window is still counted somewhere.
    per_bucket = aggregate.ROUTES_PER_BUCKET * 2 * 20
    assert snap.samples == per_bucket * 29  # the bucket in progress is empty
    assert all(len(r.lines) <= 6 for r in snap.routes)


def test_memory_is_bounded_whatever_the_traffic() -> None:
    """The bound docs/profile.md states: the ring at its caps, every stack distinct and as
    deep as kept, takes a few megabytes, and no more when the traffic goes on."""

    outer = tuple(Frame("/srv/app/outer.py", d, "f") for d in range(PROFILE_DEPTH - 1))

    def fill(p: LoopProfile, clock: Clock, buckets: int, salt: int) -> None:
        # Distinct stacks as deep as kept; their frames are shared, as the sampler's are.
        for b in range(buckets):
            for i in range(aggregate.CELLS_PER_BUCKET * 2):
                frames = (*outer, Frame(f"/srv/app/m{salt}.py", b * 10_000 + i, "f"))
                p.add(f"/r{i % 100}", frames[-1], frames)
            clock.now += 10

    clock = Clock()
    p = profile(clock)
    gc.collect()
    tracemalloc.start()
    try:
        fill(p, clock, 31, 0)
        gc.collect()
        first, _ = tracemalloc.get_traced_memory()
        fill(p, clock, 31, 1)
        gc.collect()
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert second < first * 1.2  # more traffic, no more memory
    assert second < 6e6, second  # docs/profile.md: about 5 MB at the caps


# -- the folded stacks ---------------------------------------------------------------------------


def test_folded_stacks_have_the_route_as_root_then_outermost_to_innermost_frames() -> None:
    clock = Clock()
    p = profile(clock)
    for _ in range(812):
        p.add("/cache/{key}", APP, (HANDLER, APP))
    p.add("/cache/{key}", APP, None)  # counted, its stack not kept
    p.add("/ping", NO_STACK, None)
    text = folded(p.snapshot(), short=lambda f: f.removeprefix("/srv/"))
    assert text.splitlines() == [
        "/cache/{key};handler (app/app.py:40);read_blocking (app/cache.py:154) 812",
        "/cache/{key};[other stacks];read_blocking (app/cache.py:154) 1",
        "/ping;(no stack sampled) 1",
    ]
    parsed = parse_folded(text)
    assert parsed[0] == (
        ["/cache/{key}", "handler (app/app.py:40)", "read_blocking (app/cache.py:154)"],
        812,
    )
    assert sum(n for _, n in parsed) == p.snapshot().samples


def test_folded_output_parses_as_the_format_says_whatever_the_names() -> None:
    clock = Clock()
    p = profile(clock)
    odd = Frame("/srv/app/we;ird\nname.py", 3, "f;g")
    p.add("/a;b", odd, (odd,))
    p.add("/a;b", Frame(OMITTED, 7, "<omitted>"), (Frame(OMITTED, 7, "<omitted>"), odd))
    text = folded(p.snapshot())
    for frames, count in parse_folded(text):
        assert count >= 1
        assert all(";" not in f and "\n" not in f for f in frames)
        assert frames[0] == "/a,b"
    assert "[7 frames omitted]" in text
    with pytest.raises(ValueError, match="line 1"):
        parse_folded("no count here\n")
    assert folded(profile(Clock()).snapshot()) == ""


def test_short_paths_are_relative_to_the_import_root() -> None:
    short = ShortPaths()
    assert short(os.path.join(STDLIB, "asyncio", "events.py")) == "asyncio/events.py"
    assert short(os.path.join(os.getcwd(), "demo_app", "cache.py")) == "demo_app/cache.py"
    assert short("<frozen runpy>") == "<frozen runpy>"
    assert folded_frame(APP, lambda f: "cache.py") == "read_blocking (cache.py:154)"


# -- the hint table, line by line ----------------------------------------------------------------


def lib(path: str, function: str = "f", line: int = 1) -> Frame:
    """A library frame: ``site:pkg/mod.py`` in site-packages, else in the stdlib."""
    if path.startswith("site:"):
        return Frame(f"{SITE}/{path[5:]}", line, function)
    return Frame(os.path.join(STDLIB, *path.split("/")), line, function)


def hint_kind(
    frames: Sequence[Frame], line: str = "", imports: str = "", top: Frame = APP
) -> str | None:
    found = hint_for(
        (HANDLER, *frames) if frames and frames[0] == top else (HANDLER, top, *frames),
        top,
        line=lambda filename, lineno: line,
        imports=lambda filename: parse_imports(imports),
    )
    return None if found is None else found.kind


LIBRARY_CASES: list[tuple[str, str, str | None]] = [
    # (first library frame inside the app's line, its function, the hint's kind)
    ("sqlite3/__init__.py", "connect", "sqlite3"),
    ("sqlite3/dbapi2.py", "convert_date", "sqlite3"),
    ("site:requests/api.py", "get", "http"),
    ("site:urllib3/connectionpool.py", "urlopen", "http"),
    ("urllib/request.py", "urlopen", "http"),
    ("http/client.py", "getresponse", "http"),
    ("socket.py", "create_connection", "network"),
    ("smtplib.py", "sendmail", "network"),
    ("subprocess.py", "run", "subprocess"),
    ("os.py", "popen", "subprocess"),
    ("os.py", "walk", "file-io"),
    ("os.py", "fsencode", None),
    ("pathlib.py", "read_text", "file-io"),
    ("pathlib.py", "__truediv__", None),  # path arithmetic is no I/O
    ("posixpath.py", "exists", "file-io"),
    ("genericpath.py", "getsize", "file-io"),
    ("posixpath.py", "join", None),
    ("shutil.py", "copyfile", "file-io"),
    ("glob.py", "glob", "file-io"),
    ("tempfile.py", "mkstemp", "file-io"),
    ("site:bcrypt/__init__.py", "hashpw", "hashing"),
    ("site:argon2/_password_hasher.py", "hash", "hashing"),
    ("site:passlib/handlers/sha2_crypt.py", "_raw_sha2_crypt", "hashing"),
    ("json/encoder.py", "iterencode", "cpu"),
    ("json/__init__.py", "loads", "cpu"),
    ("re/__init__.py", "_compile", "cpu"),
    ("copy.py", "deepcopy", "cpu"),
    ("copy.py", "copy", None),
    ("difflib.py", "ratio", "cpu"),
    ("site:starlette/concurrency.py", "run_in_threadpool", None),  # not in the table
    ("site:anyio/_core/_fileio.py", "read_text", None),
    ("site:aiosqlite/core.py", "execute", None),
    ("asyncio/tasks.py", "sleep", None),
]


@pytest.mark.parametrize(("path", "function", "kind"), LIBRARY_CASES)
def test_the_library_the_line_called_into_names_the_hint(
    path: str, function: str, kind: str | None
) -> None:
    # Deeper library frames do not matter: the first one inside the app's line decides.
    assert hint_kind([lib(path, function), lib("socket.py", "recv_into")]) == kind


def test_httpx_gets_a_hint_only_for_its_synchronous_client() -> None:
    sync = [lib("site:httpx/_client.py", "send"), lib("site:httpcore/_sync/connection.py", "x")]
    assert hint_kind(sync) == "http"
    assert hint_kind([lib("site:httpx/_api.py", "get")]) == "http"
    asynchronous = [lib("site:httpx/_client.py", "send"), lib("site:httpcore/_async/http11.py")]
    assert hint_kind(asynchronous) is None


LINE_CASES: list[tuple[str, str, str | None]] = [
    # (the line, the module's imports, the hint's kind): C calls show no frame of their own
    ("    time.sleep(0.002)", "import time", "sleep"),
    ("    nap(0.002)", "from time import sleep as nap", "sleep"),
    ("    sleep(0.002)", "from time import sleep", "sleep"),
    ("    sleep(0.002)", "from trio import sleep", None),
    ("    await asyncio.sleep(0.002)", "import asyncio", None),
    ("    t.sleep(1)", "import time as t", "sleep"),
    ("    log('time.sleep(1)')", "import time", None),  # in a string
    ("    x = 1  # time.sleep(1)", "import time", None),  # in a comment
    ("    conn = sqlite3.connect(path)", "import sqlite3", "sqlite3"),
    ("    row = cache.connection().execute(READ, (key,)).fetchone()", "import sqlite3", "sqlite3"),
    ("    rows = cur.fetchall()", "import sqlite3\nimport os", "sqlite3"),
    ("    rows = cur.fetchall()", "", None),  # which driver? not sure
    ("    rows = cur.fetchall()", "import sqlite3\nimport psycopg2", None),
    ("    rows = await db.execute(q)", "import sqlite3", None),
    ("    os.system('ls')", "import os", "subprocess"),
    ("    data = open(path).read()", "", "file-io"),
    ("    data = open(path).read()", "from anyio import open", None),  # not the builtin
    ("    os.fsync(fd)", "import os", "file-io"),
    ("    key = hashlib.pbkdf2_hmac('sha256', pw, salt, 600_000)", "import hashlib", "hashing"),
    ("    key = pbkdf2_hmac('sha256', pw, salt, 1)", "from hashlib import pbkdf2_hmac", "hashing"),
    ("    ok = bcrypt.checkpw(pw, hashed)", "import bcrypt", "hashing"),
    ("    blob = pickle.dumps(obj)", "import pickle", "cpu"),
    ("    total = sum(range(10**8))", "", None),  # some C call: not sure which work
    ("    data = f.read()", "", None),
    ("", "import time", None),
]


@pytest.mark.parametrize(("line", "imports", "kind"), LINE_CASES)
def test_a_c_call_is_named_from_its_line_and_the_modules_imports(
    line: str, imports: str, kind: str | None
) -> None:
    assert hint_kind([], line, imports) == kind


def test_no_hint_without_an_app_frame_or_for_the_frames_outside_it() -> None:
    assert hint_for((SERVER, lib("socket.py")), None) is None
    # Library frames *outside* the app's line (the framework that called it) say nothing.
    framework = [lib("site:requests/api.py", "get"), HANDLER, APP]
    assert (
        hint_for(
            framework, APP, line=lambda f, n: "x = 1", imports=lambda f: Imports({}, frozenset())
        )
        is None
    )
    assert hint_for((HANDLER,), APP) is None  # top not in the stack


def test_imports_are_read_wherever_they_stand_and_a_broken_module_has_none() -> None:
    parsed = parse_imports("import os.path\ndef f():\n    from time import sleep as s\n")
    assert parsed.names == {"os": "os", "s": "time.sleep"}
    assert parsed.modules == {"os", "time"}
    assert parse_imports("def (:") == hints.NO_IMPORTS


def test_the_demo_read_gets_the_sqlite_hint_from_its_real_source() -> None:
    import demo_app.cache as cache

    source = Path(cache.__file__).read_text().splitlines()
    lineno = next(i for i, text in enumerate(source, 1) if ".execute(READ" in text)
    frame = Frame(cache.__file__, lineno, "read_blocking")
    found = hint_for((HANDLER, frame), frame)
    assert found is not None
    assert found.kind == "sqlite3"
    assert "asyncio.to_thread" in str(found)
    assert "aiosqlite" in str(found)


# -- the views ----------------------------------------------------------------------------------


def two_seconds_of_cache_reads() -> LoopProfile:
    """60 samples at 100/s over 2 s: ``/cache/{key}`` 30 at the read and 10 at the render,
    ``<background>`` 20 in library code."""
    clock = Clock()
    p = profile(clock)
    for _ in range(30):
        p.add("/cache/{key}", APP, (HANDLER, APP))
    for _ in range(10):
        p.add("/cache/{key}", OTHER, (HANDLER, OTHER))
    for _ in range(20):
        p.add(BACKGROUND, LIBRARY_ONLY, (SERVER,))
    clock.now += 2.0
    return p


def test_the_view_gives_loop_ms_per_second_shares_hints_and_stacks() -> None:
    p = two_seconds_of_cache_reads()
    view = profile_view(
        p.snapshot(), short=lambda f: f.removeprefix("/srv/"), hint=lambda line: None
    )
    json.dumps(view, allow_nan=False)
    assert view["available"] is True
    assert view["rate"] == pytest.approx(100.0)
    assert view["busy_ms_per_s"] == pytest.approx(60 * 10 / 2.0)
    cache = view["routes"][0]
    assert cache["route"] == "/cache/{key}"
    assert cache["ms_per_s"] == pytest.approx(200.0)
    assert cache["share"] == pytest.approx(0.2)
    first = cache["lines"][0]
    assert first["location"] == str(APP)
    assert first["where"] == "app/cache.py:154 in read_blocking"
    assert first["share"] == pytest.approx(0.75)
    assert first["stacks"] == [{"count": 30, "frames": [str(HANDLER), str(APP)]}]
    assert view["routes"][1]["lines"][0]["file"] is None
    text = profile_text(view)
    assert "/cache/{key}  200.0 ms/s, 20.0% of the loop" in text
    assert "75.0%  app/cache.py:154 in read_blocking" in text
    rows = held_longest(view)
    assert [r["where"] for r in rows] == [
        "app/cache.py:154 in read_blocking",
        "app/render.py:12 in render",
    ]
    assert rows[0]["seconds"] == pytest.approx(0.3)
    assert held_longest_text(view)[0].startswith("    300.0 ms  app/cache.py:154")
    assert profile_view(None)["available"] is False
    assert "no profile" in profile_text(profile_view(None))


# -- the sampler: its schedule and whom it charges ------------------------------------------------


class Span:
    def __init__(self, route: str | None) -> None:
        self.route = route
        self.named = 0

    def route_label(self) -> str:
        self.named += 1
        if self.route is None:
            self.route = "/named/late"
        return self.route


def raw(*frames: Frame) -> tuple[tuple[str, int, str], ...]:
    return tuple((f.filename, f.lineno, f.function) for f in frames)


def make_sampler(clock: Clock) -> tuple[LoopProfile, ProfileSampler]:
    p = profile(clock)

    def to_frames(r: tuple[tuple[str, int, str], ...]) -> tuple[Frame, ...]:
        return tuple(Frame(*f) for f in r)

    return p, ProfileSampler(p, frames=to_frames, top_frame=top_frame, clock=clock)


@pytest.mark.parametrize(
    ("sampled_ms", "steps", "expected"),
    [
        (80.0, 0.1, (100.0, True)),  # the steps' exact figure, where the samples missed moments
        (80.0, 0.08, (80.0, True)),  # equal: the steps' still
        (120.0, 0.1, (120.0, False)),  # a request still running: its samples say more
        (80.0, None, (80.0, False)),  # not timed (<background>, a loop without the middleware)
    ],
)
def test_a_routes_rate_is_its_steps_unless_its_samples_say_more(
    sampled_ms: float, steps: float | None, expected: tuple[float, bool]
) -> None:
    assert route_rate(sampled_ms, steps) == pytest.approx(expected)


def test_a_timed_route_takes_its_ms_per_s_from_its_steps_and_its_lines_their_share_of_it() -> None:
    p = two_seconds_of_cache_reads()
    # The samples say 200 ms/s (40 x 10 ms over 2 s); the route's steps say it ran 250 ms/s.
    timed = {"/cache/{key}": 0.25, "/ping": 0.05}
    view = profile_view(p.snapshot(), hint=lambda line: None, timed=timed)
    cache, background = view["routes"]
    assert cache["timed"] is True
    assert cache["ms_per_s"] == pytest.approx(250.0)
    assert cache["share"] == pytest.approx(0.25)
    assert cache["samples"] == 40  # the samples themselves are as counted
    first, second = cache["lines"]
    assert first["share"] == pytest.approx(0.75)  # shares come from the samples alone
    assert first["ms_per_s"] == pytest.approx(0.75 * 250.0)
    assert second["ms_per_s"] == pytest.approx(0.25 * 250.0)
    # Not timed (no steps of its own): samples times the period, as before.
    assert background["timed"] is False
    assert background["ms_per_s"] == pytest.approx(100.0)
    # A route timed but never sampled has no lines to show: it is not made up.
    assert [r["route"] for r in view["routes"]] == ["/cache/{key}", BACKGROUND]
    assert view["busy_ms_per_s"] == pytest.approx(350.0)
    assert held_longest(view)[0]["seconds"] == pytest.approx(0.75 * 0.25 * 2.0)
    assert "/cache/{key}  250.0 ms/s, 25.0% of the loop" in profile_text(view)
    # Steps count a request when it ends: a route whose requests still run (a websocket, a
    # stream) can have fewer seconds in them than its samples show. The samples stand then.
    running = profile_view(p.snapshot(), hint=lambda line: None, timed={"/cache/{key}": 0.05})
    assert running["routes"][0]["timed"] is False
    assert running["routes"][0]["ms_per_s"] == pytest.approx(200.0)
    assert running["routes"][0]["lines"][0]["ms_per_s"] == pytest.approx(150.0)


def test_the_schedule_is_a_grid_that_does_not_make_up_missed_moments() -> None:
    clock = Clock(100.0)
    _, sampler = make_sampler(clock)
    assert sampler.due == pytest.approx(100.01)
    sampler.advance(100.012)
    assert sampler.due == pytest.approx(100.02)
    sampler.advance(100.055)  # held off past three moments: the next is still on the grid
    assert sampler.due == pytest.approx(100.06)


def test_samples_are_charged_to_the_request_background_or_wait_for_a_name() -> None:
    clock = Clock(100.0)
    p, sampler = make_sampler(clock)
    named, unnamed = Span("/cache/{key}"), Span(None)
    sampler.add(100.0, raw(*stack(HANDLER, APP)), named)
    sampler.add(100.0, raw(*stack()), None)
    sampler.add(100.0, None, named)
    sampler.add(100.0, raw(*stack(OTHER)), unnamed)
    assert sampler.waiting == 1
    routes = {r.route: r for r in p.snapshot().routes}
    assert set(routes) == {"/cache/{key}", BACKGROUND}
    assert {line.location for line in routes["/cache/{key}"].lines} == {APP, NO_STACK}
    sampler.settle(100.5)
    sampler.name_pending()
    assert unnamed.named == 0  # not asked yet: requests are named when they end
    sampler.settle(101.5)
    sampler.name_pending()  # the loop thread names it, the next settle charges it
    assert unnamed.named == 1
    sampler.settle(101.6)
    assert sampler.waiting == 0
    assert "/named/late" in {r.route for r in p.snapshot().routes}
    assert sampler.taken == 4


# -- end to end: a real server, known blocks, the profile held to the truth --------------------


def drive(base: str, seconds: float, workers: int = 2) -> int:
    """Requests to ``/a`` and ``/b`` with blocks of 1 to 3 ms, from ``workers`` threads, for
    ``seconds``; returns how many were answered."""
    import random
    import threading
    import time

    import httpx

    done = [0] * workers
    stop = time.monotonic() + seconds

    def work(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=base, timeout=10.0) as client:
            while time.monotonic() < stop:
                path = "/a" if rng.random() < 0.5 else "/b"
                client.get(path, params={"ms": f"{rng.uniform(1.0, 3.0):.2f}"}).raise_for_status()
                done[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


def test_known_short_blocks_in_two_routes_and_a_child_task_give_their_true_shares() -> None:
    import httpx

    from tests.servers import uvicorn

    with uvicorn("tests.apps.profile_app:app", env={"SW_PROFILE_RATE": "200"}) as base:
        answered = drive(base, 8.0)
        truth = httpx.get(base + "/truth").json()
        view = httpx.get(base + "/_stallwatch/api/profile", params={"window": 300}).json()
        text = httpx.get(base + "/_stallwatch/api/profile", params={"format": "folded"}).text
        loop = httpx.get(base + "/_stallwatch/api/loop", params={"window": 300}).json()
    assert answered > 200
    assert view["available"] is True
    covered, period = view["covered"], view["period"]
    assert period == pytest.approx(1 / 200)
    marked = set(truth["lines"].values())
    filed: list[int] = []
    lines: dict[int, tuple[str, float]] = {}
    for route in view["routes"]:
        for line in route["lines"]:
            # The app's other lines may be sampled too (``/truth``'s own handler, read last).
            if line["file"] == truth["file"] and line["line"] in marked:
                filed.append(line["line"])
                lines[line["line"]] = (
                    route["route"],
                    line["samples"] * period,
                    line["ms_per_s"] * covered / 1e3,
                )
    report = {
        name: (lines.get(number), truth["seconds"][name]) for name, number in truth["lines"].items()
    }
    for name, route in (("a", "/a"), ("b", "/b"), ("child", "/b")):
        found, seconds = report[name]
        assert found is not None, report
        assert found[0] == route, report  # the child task's line is its request's route
        share, true_share = found[1] / covered, seconds / covered
        assert true_share > 0.05, report  # the test means something
        assert abs(share - true_share) < 0.05, (name, share, true_share, report)
        # Scaled to the route's exact loop time, the line's time holds as well.
        timed_share = found[2] / covered
        assert abs(timed_share - true_share) < 0.05, (name, timed_share, true_share, report)
    # Each route's figure is at least its steps' exact time (the report's share of the loop,
    # read a moment later over whole buckets, so a little lower): the clock reached the view.
    steps = {row["route"]: row["share"] * 1e3 for row in loop["routes"]}
    shown = {row["route"]: row["ms_per_s"] for row in view["routes"]}
    for route in ("/a", "/b"):
        assert shown[route] >= 0.98 * steps[route] > 0, (route, shown, steps)
    # Each marked line is filed once: none under another route as well.
    assert sorted(filed) == sorted(marked), (filed, lines)
    # The folded stacks say the same: one root per route, counts summing to the samples.
    parsed = parse_folded(text)
    roots = {frames[0] for frames, _ in parsed}
    assert {"/a", "/b"} <= roots
    assert sum(n for _, n in parsed) >= view["samples"]
    child = [frames for frames, _ in parsed if frames[-1].startswith("child (")]
    assert child
    assert all(frames[0] == "/b" for frames in child)
    hints_seen = {
        line["hint"]["kind"]
        for route in view["routes"]
        for line in route["lines"]
        if line["file"] == truth["file"] and line["line"] in marked and line["hint"]
    }
    assert hints_seen == {"sleep"}


# -- the pytest plugin ---------------------------------------------------------------------------

PLUGIN_TESTS = """
import asyncio
import time


def test_short_blocks() -> None:
    async def main() -> None:
        for _ in range(60):
            time.sleep(0.006)  # the hot line
            time.sleep(0.001)  # the cold line
            await asyncio.sleep(0.002)

    asyncio.run(main())


def test_a_stall() -> None:
    async def main() -> None:
        time.sleep(0.2)  # the stall

    asyncio.run(main())
"""


def test_the_plugin_prints_the_lines_that_held_the_loop_longest_and_a_fix(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_loops=PLUGIN_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "stallwatch",
        "--stallwatch-profile", "3", "--stallwatch-max-stall-ms", "50",
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)
    source = (pytester.path / "test_loops.py").read_text().splitlines()
    hot, cold, stall = (
        next(i for i, text in enumerate(source, 1) if needle in text)
        for needle in ("# the hot line", "# the cold line", "# the stall")
    )
    result.stdout.fnmatch_lines(
        [
            "*stalled for * ms (blocking) at test_loops.py:*",
            "*fix: time.sleep: `await asyncio.sleep(...)`",
            "stallwatch: the lines that held the loop longest (* samples * all loops):",
            # 60 x 6 ms, then the 200 ms stall (a stall's samples are profile samples too),
            # then 60 x 1 ms; with the fix beside each.
            f"* ms  test_loops.py:{hot} in main  (<background>)  -> time.sleep: *",
            f"* ms  test_loops.py:{stall} in main  (<background>)  -> time.sleep: *",
            f"* ms  test_loops.py:{cold} in main  (<background>)  -> time.sleep: *",
        ]
    )


# -- where people look: the page, the CLI ----------------------------------------------------------


def test_the_page_and_the_cli_show_each_routes_lines_with_their_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from stallwatch.cli import main
    from tests.browser import chromium
    from tests.servers import uvicorn

    with uvicorn("tests.apps.profile_app:app") as base:
        drive(base, 2.0, workers=1)
        assert main(["profile", base, "--folded"]) == 0
        folded_text = capsys.readouterr().out
        assert main(["profile", base, "--lines", "2"]) == 0
        table = capsys.readouterr().out
        assert main(["report", base]) == 0
        report = capsys.readouterr().out
        assert main(["profile", base, "--path", "/nowhere"]) == 2
        assert "404" in capsys.readouterr().err
        with chromium("--window-size=1400,1600", console=True) as browser:
            browser.get(f"{base}/_stallwatch/")
            WebDriverWait(browser, 20).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded")
            )
            rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#profile tbody tr")]
            browser.save_screenshot(str(tmp_path / "profile.png"))
            log = browser.get_log("browser")  # type: ignore[attr-defined]
            errors = [e for e in log if e["level"] == "SEVERE"]
    assert parse_folded(folded_text)
    assert any(
        frames[0] == "/a" and "block_a (" in frames[-1] for frames, _ in parse_folded(folded_text)
    )
    assert "/a  " in table
    assert "in block_a  -> time.sleep: `await asyncio.sleep(...)`" in table
    assert "where the loop's time goes" in report
    assert not errors, errors
    assert any(r.startswith("/a ") for r in rows), rows
    line = next(r for r in rows if "block_a" in r)
    assert "time.sleep" in line
    assert "asyncio.sleep" in line


# -- the endpoint, the options, the stall's own fix ---------------------------------------------


class FakeMonitor:
    def __init__(self, p: LoopProfile | None) -> None:
        self.profile = p

    def recent_stalls(self) -> list[object]:
        return []

    def internal_error(self, component: str) -> None:
        raise AssertionError(component)


def test_the_endpoint_serves_json_and_folded_stacks_under_the_reports_rules() -> None:
    from stallwatch.report.http import ReportApp

    clock = Clock()
    p = profile(clock)
    for _ in range(5):
        p.add("/cache/{key}", APP, (HANDLER, APP))
    app = ReportApp(lambda: FakeMonitor(p), clock=lambda: 1.7e9)  # type: ignore[arg-type,return-value]

    def get(
        query: str, host: str = "127.0.0.1", method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        status, headers, body = app.respond(
            PlainRequest(method, "/_stallwatch/api/profile", {}, host, query)
        )
        return status, dict(headers), body

    status, headers, body = get("window=60")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert data["routes"][0]["lines"][0]["samples"] == 5
    assert data["window"] == 60.0
    status, headers, body = get("format=folded")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert parse_folded(body.decode())[0][1] == 5
    assert get("format=folded", method="HEAD")[2] == b""
    assert get("format=svg")[0] == 400
    assert get("window=0")[0] == 400
    assert get("window=soon")[0] == 400
    assert get("", host="10.0.0.8")[0] == 403  # the report's rules: loopback only, no token
    off = ReportApp(lambda: FakeMonitor(None))  # type: ignore[arg-type,return-value]
    status, _, body = off.respond(
        PlainRequest("GET", "/_stallwatch/api/profile", {}, "127.0.0.1", "")
    )
    assert status == 200
    assert json.loads(body)["available"] is False
    assert (
        off.respond(PlainRequest("GET", "/_stallwatch/api/profile", {}, "::1", "format=folded"))[2]
        == b""
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [("profile", 1), ("profile_rate", 0), ("profile_rate", 5000), ("profile_rate", True),
     ("profile_lines", 0), ("profile_lines", 2.5)],
)  # fmt: skip
def test_the_profile_options_are_checked_at_construction(option: str, value: object) -> None:
    from stallwatch.options import MonitorOptions

    with pytest.raises((TypeError, ValueError), match=option):
        MonitorOptions(**{option: value})  # type: ignore[arg-type]


def test_a_monitor_keeps_a_profile_unless_told_not_to() -> None:
    from prometheus_client import CollectorRegistry

    from stallwatch import LoopMonitor

    on = LoopMonitor(registry=CollectorRegistry(), profile_rate=250, profile_lines=7)
    assert on.profile is not None
    assert on.profile.period == pytest.approx(0.004)
    assert on.profile.lines == 7
    assert LoopMonitor(registry=CollectorRegistry(), profile=False).profile is None


def test_a_stall_names_its_fix_in_the_log_line_and_the_reports_group() -> None:
    import logging

    from stallwatch.events import StackSample, StallEvent
    from stallwatch.report.data import summary
    from stallwatch.stall.log import StallLog

    frame = Frame(__file__, 1, "somewhere")
    event = StallEvent(
        started_at=1.7e9,
        duration=0.1,
        cause="blocking",
        culprit="/sync",
        culprits={"/sync": 1.0},
        victims={},
        top_frame=frame,
        stacks=(StackSample((HANDLER, frame, lib("subprocess.py", "run")), 20),),
        sampled=True,
        task=None,
        gc_seconds=0.0,
        loop_cpu_ratio=None,
    )
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger = logging.getLogger("stallwatch")
    logger.addHandler(handler)
    try:
        StallLog(every=10.0, burst=5).log(event)
    finally:
        logger.removeHandler(handler)
    assert (
        records[0]
        .getMessage()
        .endswith("; fix: subprocess: `await asyncio.create_subprocess_exec(...)`")
    )
    [group] = summary([event])
    assert group["hint"]["kind"] == "subprocess"


# -- the watchdog's side: which moments become samples -------------------------------------------


class FakeLoop:
    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return False


def watchdog_with(
    running: Span | None, step_began: float, stretch: list[int]
) -> tuple[Any, LoopProfile]:
    import asyncio
    import threading

    from stallwatch.stall.sampling import StackSampler, frames_of
    from stallwatch.stall.watchdog import Watchdog, WatchdogLinks

    p = LoopProfile(period=0.01)
    sampler = StackSampler(threading.get_ident())
    profiler = ProfileSampler(p, frames=frames_of, top_frame=sampler.top_frame, clock=lambda: 0.0)
    links = WatchdogLinks(
        loop=cast(asyncio.AbstractEventLoop, FakeLoop()),
        held_since=lambda: None,
        started_by=lambda: None,
        record=lambda event: None,
        on_error=lambda: None,
        show_stall=lambda seconds: None,
        loop_closed=lambda: None,
        running=lambda: running,
        step_began=lambda: step_began,
        stretch_id=lambda: stretch[0],
    )
    dog = Watchdog(
        links,
        sampler,
        threading.get_native_id(),
        threshold=0.02,
        sample_interval=0.005,
        profiler=profiler,
    )
    return dog, p


def test_a_moment_of_a_busy_loop_is_a_sample_of_the_step_then_running() -> None:
    dog, p = watchdog_with(Span("/r"), step_began=0.001, stretch=[3])
    assert dog._profile(0.0101, since=0.0, stretch=3) is True
    [route] = p.snapshot().routes
    assert route.route == "/r"
    assert route.lines[0].location != NO_STACK  # this test's own line: a stack was read
    # It is one of a stall's samples too, until its stretch has ended short.
    assert [s.stretch for s in dog._samples] == [3]


def test_an_idle_moment_is_no_sample_and_teaches_the_oss_lateness() -> None:
    dog, p = watchdog_with(Span("/r"), step_began=0.0, stretch=[0])
    assert dog._profile(0.0103, since=None, stretch=0) is False
    assert p.snapshot().samples == 0
    assert dog._profiler.latency == pytest.approx(0.0003)


def test_a_step_that_began_after_the_moment_is_not_charged_with_it() -> None:
    dog, p = watchdog_with(Span("/r"), step_began=0.0102, stretch=[0])
    assert dog._profile(0.0105, since=0.0, stretch=0) is False
    [route] = p.snapshot().routes
    assert (route.route, route.lines[0].location) == (BACKGROUND, NO_STACK)


def test_a_moment_the_gil_was_held_past_is_counted_for_the_request_without_a_line() -> None:
    dog, p = watchdog_with(Span("/r"), step_began=0.0, stretch=[0])
    assert dog._profile(0.0101 + 0.05, since=0.0, stretch=0) is False
    [route] = p.snapshot().routes
    assert (route.route, route.lines[0].location) == ("/r", NO_STACK)


def test_moments_that_passed_while_the_watchdog_was_parked_are_no_samples() -> None:
    # The quiet loop's watchdog sleeps until the loop's poll returns: the moments it slept
    # through found the loop polling; the wake-up itself was on time.
    dog, p = watchdog_with(Span("/r"), step_began=0.0, stretch=[0])
    assert dog._profile(0.5, since=0.4999, stretch=0, intended=0.6) is False
    assert p.snapshot().samples == 0
    assert dog._profiler.due == pytest.approx(0.51)


def test_a_long_request_shows_in_the_profile_while_it_still_runs() -> None:
    import threading

    import httpx

    from tests.servers import uvicorn

    with uvicorn("tests.apps.profile_app:app") as base:
        streaming = threading.Thread(
            target=lambda: httpx.get(base + "/stream", params={"seconds": 4}, timeout=30)
        )
        streaming.start()
        try:
            deadline = time.monotonic() + 3.0
            routes: list[str] = []
            while time.monotonic() < deadline and "/stream" not in routes:
                time.sleep(0.3)
                view = httpx.get(base + "/_stallwatch/api/profile").json()
                routes = [r["route"] for r in view["routes"]]
            assert streaming.is_alive()  # still streaming: named before its end
            assert "/stream" in routes, view
        finally:
            streaming.join()

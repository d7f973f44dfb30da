"""``stallwatch.stall.sampling``: which line a stall is blamed on, and which line started a task.

Live stacks are real: a real asyncio loop runs in a thread and is held inside a fake installed
library (``tests/fakelib/site-packages``, put on ``sys.path`` under a ``site-packages`` name as
pip would), and the test thread samples it as the watchdog does. Task origins are read from a
real task factory on a real loop.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
import uvloop

import stallwatch.request.spans
import stallwatch.stall.sampling
from stallwatch.events import Frame, StackSample
from stallwatch.stall.callback import callback_frames, innermost_frame
from stallwatch.stall.in_app import resolve_in_app
from stallwatch.stall.sampling import (
    MAX_FRAMES,
    OMITTED,
    STARTED_BY_DEPTH,
    StackSampler,
    aggregate,
    omitted,
)

FAKE_SITE = Path(__file__).parent.parent / "fakelib" / "site-packages"
FAKEDEEP = str(FAKE_SITE / "fakedeep" / "__init__.py")
LONG = 10.0
"""Upper bound on any wait, far above what a loaded machine needs."""

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
HELD_LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop",
        marks=pytest.mark.skipif(
            sys.version_info < (3, 11), reason="a runner frame needs asyncio.Runner (3.11)"
        ),
    ),
]
"""Loops as servers run them: through asyncio's runner, whose frame marks the dispatch."""

Held = Callable[[threading.Event, threading.Event], Coroutine[Any, Any, None]]


@pytest.fixture
def fakedeep(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The fake library, importable from a ``site-packages`` folder on ``sys.path``."""
    monkeypatch.syspath_prepend(str(FAKE_SITE))
    module = importlib.import_module("fakedeep")
    assert module.__file__ == FAKEDEEP
    return module


@pytest.fixture
def deep_recursion() -> Iterator[None]:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 3000))
    yield
    sys.setrecursionlimit(limit)


def line_of(marker: str, path: str = __file__) -> int:
    """The line of ``path`` that ends with the comment ``# marker``."""
    lines = Path(path).read_text().splitlines()
    found = [n for n, text in enumerate(lines, 1) if text.rstrip().endswith(f"# {marker}")]
    assert len(found) == 1, f"{marker!r} marks {len(found)} lines of {path}"
    return found[0]


def run_on(loop_name: str, main: Coroutine[Any, Any, None]) -> None:
    """Runs ``main`` as uvicorn does on 3.11 and later: through ``asyncio.Runner``."""
    if sys.version_info < (3, 11):
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(main)


def sample_held_loop(
    fakedeep: ModuleType, request: Held, loop_name: str = "asyncio", **options: Any
) -> tuple[StackSampler, tuple[Frame, ...]]:
    """Runs ``request`` on a real loop in its own thread and, once the fake library holds
    that thread, samples its stack from this one, as the watchdog does."""
    ready, release = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=lambda: run_on(loop_name, request(ready, release)), name="held"
    )
    holding = line_of("fakedeep: holds the thread", FAKEDEEP)
    thread.start()
    try:
        assert ready.wait(LONG), "the loop thread never reached the hold"
        assert thread.ident is not None
        sampler = StackSampler(thread.ident, **options)
        deadline = time.monotonic() + LONG
        while True:  # ready is set just before the wait: sample once the thread waits
            raw = sampler.sample()
            assert raw is not None
            if any(line == holding for _, line, _ in raw) or time.monotonic() > deadline:
                break
            time.sleep(0.001)
    finally:
        release.set()
        thread.join(LONG)
    assert not thread.is_alive()
    return sampler, tuple(Frame(*raw_frame) for raw_frame in raw)


# -- the top frame of a live stack ----------------------------------------------------------


@pytest.mark.parametrize("loop_name", HELD_LOOPS)
def test_a_block_deep_in_a_library_is_named_by_the_app_line_that_called_it(
    fakedeep: ModuleType, loop_name: str
) -> None:
    async def request(ready: threading.Event, release: threading.Event) -> None:
        fakedeep.descend(60, ready, release)  # calls into fakedeep, 60 frames deep

    sampler, frames = sample_held_loop(fakedeep, request, loop_name)

    library = [f for f in frames if f.filename == FAKEDEEP]
    assert len(library) == 61, "the whole stack is read: 60 recursion frames and the hold"
    assert sampler.top_frame(frames) == Frame(
        __file__, line_of("calls into fakedeep, 60 frames deep"), "request"
    )


def test_in_app_include_makes_an_installed_package_the_app(fakedeep: ModuleType) -> None:
    async def request(ready: threading.Event, release: threading.Event) -> None:
        fakedeep.descend(60, ready, release)

    sampler, frames = sample_held_loop(fakedeep, request, in_app_include=("fakedeep",))

    assert sampler.top_frame(frames) == Frame(
        FAKEDEEP, line_of("fakedeep: holds the thread", FAKEDEEP), "hold"
    )


@pytest.mark.parametrize("loop_name", HELD_LOOPS)
def test_a_2000_frame_recursion_is_cut_in_the_middle_and_keeps_both_ends(
    fakedeep: ModuleType, deep_recursion: None, loop_name: str
) -> None:
    async def request(ready: threading.Event, release: threading.Event) -> None:
        fakedeep.descend(2000, ready, release)  # calls into fakedeep, 2000 frames deep

    sampler, frames = sample_held_loop(fakedeep, request, loop_name)

    assert len(frames) == MAX_FRAMES
    cuts = [n for n, f in enumerate(frames) if f.filename == OMITTED]
    assert len(cuts) == 1
    kept = sum(f.filename == FAKEDEEP for f in frames)
    assert omitted(frames[cuts[0]]) == 2001 - kept, "every left-out frame is counted"
    # The outermost end: the thread's bootstrap, the loop's dispatch, the app's request.
    assert frames[0].function == "_bootstrap"
    assert frames[0].filename == threading.__file__
    # The innermost end: the hold and the wait it is in.
    assert any(f.function == "hold" for f in frames[cuts[0] :])
    assert frames[-1].filename == threading.__file__
    # Past the cut, the top frame is still the request's line, not the thread's target.
    assert sampler.top_frame(frames) == Frame(
        __file__, line_of("calls into fakedeep, 2000 frames deep"), "request"
    )


@pytest.mark.parametrize("loop_name", HELD_LOOPS)
def test_a_callback_without_app_code_falls_back_to_its_innermost_frame(
    fakedeep: ModuleType, loop_name: str
) -> None:
    async def request(ready: threading.Event, release: threading.Event) -> None:
        # The loop itself calls the library: no frame of the callback is the app's.
        asyncio.get_running_loop().call_soon(fakedeep.descend, 3, ready, release)
        await asyncio.sleep(0)

    sampler, frames = sample_held_loop(fakedeep, request, loop_name)

    callback = callback_frames(frames)
    assert [f.function for f in callback[:4]] == ["descend", "descend", "descend", "hold"]
    assert sampler.top_frame(frames) is None
    assert innermost_frame(frames) == frames[-1]
    assert frames[-1].filename == threading.__file__


def test_sampling_keeps_no_frame_of_the_sampled_thread() -> None:
    sampler = StackSampler(threading.get_ident())

    class Canary:
        pass

    def sampled() -> weakref.ref[Canary]:
        canary = Canary()
        assert sampler.sample() is not None
        return weakref.ref(canary)

    assert sampled()() is None


def test_a_thread_that_is_gone_has_no_stack() -> None:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join(LONG)
    assert thread.ident is not None
    assert StackSampler(thread.ident).sample() is None


# -- the callback's frames, on stacks written out -------------------------------------------

ASYNCIO = os.path.dirname(asyncio.__file__)
MAIN = Frame("/srv/app/main.py", 30, "main")
RUN = Frame(os.path.join(ASYNCIO, "runners.py"), 190, "run")
RUN_ONCE = Frame(os.path.join(ASYNCIO, "base_events.py"), 1922, "_run_once")
HANDLE = Frame(os.path.join(ASYNCIO, "events.py"), 80, "_run")
SELECT = Frame(os.path.join(os.path.dirname(os.__file__), "selectors.py"), 468, "select")
ROUTE = Frame("/srv/app/routes.py", 12, "read_item")
DRIVER = Frame(os.path.join(ASYNCIO, "..", "sqlite3", "__init__.py"), 5, "execute")


@pytest.mark.parametrize(
    ("stack", "callback", "top", "innermost"),
    [
        pytest.param((MAIN, RUN, RUN_ONCE, SELECT), (), None, None, id="idle loop: the poll"),
        pytest.param((MAIN, RUN, RUN_ONCE), (), None, None, id="in the loop's own dispatch"),
        pytest.param(
            (MAIN, RUN, RUN_ONCE, HANDLE, ROUTE, DRIVER),
            (ROUTE, DRIVER),
            ROUTE,
            DRIVER,
            id="a route in a driver",
        ),
        pytest.param((MAIN, RUN, HANDLE, DRIVER), (DRIVER,), None, DRIVER, id="a library callback"),
        pytest.param((MAIN, ROUTE), (MAIN, ROUTE), ROUTE, ROUTE, id="a thread without a loop"),
        pytest.param((), (), None, None, id="no frames"),
    ],
)
def test_frames_at_or_below_the_loop_dispatch_are_the_loops(
    stack: tuple[Frame, ...],
    callback: tuple[Frame, ...],
    top: Frame | None,
    innermost: Frame | None,
) -> None:
    assert tuple(callback_frames(stack)) == callback
    assert StackSampler(threading.get_ident()).top_frame(stack) == top
    assert innermost_frame(stack) == innermost


def test_aggregate_counts_distinct_stacks_most_frequent_first() -> None:
    a = (("/srv/app/a.py", 1, "f"),)
    b = (("/srv/app/b.py", 2, "g"),)
    c = (("/srv/app/c.py", 3, "h"),)
    assert aggregate([a, b, b, c, b, a], limit=2) == (
        StackSample(frames=(Frame("/srv/app/b.py", 2, "g"),), count=3),
        StackSample(frames=(Frame("/srv/app/a.py", 1, "f"),), count=2),
    )


# -- which files are the application's -----------------------------------------------------


def test_libraries_the_standard_library_and_stallwatch_are_not_the_app(
    fakedeep: ModuleType,
) -> None:
    sampler = StackSampler(threading.get_ident())
    assert sampler.is_app(__file__)
    assert not sampler.is_app(FAKEDEEP)
    assert not sampler.is_app(asyncio.__file__)
    assert not sampler.is_app(stallwatch.stall.sampling.__file__)
    assert not sampler.is_app(anyio.__file__)
    assert not sampler.is_app("<frozen importlib._bootstrap>")
    stallwatch_main = os.path.join(os.path.dirname(stallwatch.__file__), "__main__.py")
    assert not sampler.is_app(stallwatch.request.spans.__file__)  # every floor of the package
    assert sampler.is_app(stallwatch_main), "python -m stallwatch blocks on purpose"


def test_an_app_installed_in_site_packages_is_the_app_when_included() -> None:
    spec = importlib.util.find_spec("datasette")  # found, not imported
    assert spec is not None
    assert spec.origin is not None
    starlette_spec = importlib.util.find_spec("starlette")
    assert starlette_spec is not None
    assert starlette_spec.origin is not None

    assert not StackSampler(threading.get_ident()).is_app(spec.origin)
    included = StackSampler(threading.get_ident(), in_app_include=("datasette",))
    assert included.is_app(spec.origin)
    assert not included.is_app(starlette_spec.origin)


def test_the_deeper_of_a_library_folder_and_an_included_folder_decides(
    fakedeep: ModuleType,
) -> None:
    project = FAKE_SITE.parent  # as if the app's folder held its own site-packages (a venv)
    sampler = StackSampler(threading.get_ident(), in_app_include=(str(project),))
    assert sampler.is_app(str(project / "tool.py"))
    assert not sampler.is_app(FAKEDEEP)


# -- in_app_include -------------------------------------------------------------------------


def test_in_app_include_resolves_packages_modules_and_folders_without_importing(
    fakedeep: ModuleType, tmp_path: Path
) -> None:
    sys.modules.pop("fakeflat", None)
    resolved = resolve_in_app(("fakedeep", "fakeflat", str(tmp_path)))
    assert resolved == (
        os.path.join(os.path.realpath(FAKE_SITE / "fakedeep"), ""),
        os.path.realpath(FAKE_SITE / "fakeflat.py"),
        os.path.join(os.path.realpath(tmp_path), ""),
    )
    assert "fakeflat" not in sys.modules, "resolving a name does not import it"
    assert resolve_in_app(resolved) == resolved, "a resolved tuple resolves to itself"
    assert resolve_in_app(["fakedeep", "fakedeep"]) == resolved[:1]


@pytest.mark.parametrize(
    "entry",
    [
        "no_such_package_anywhere",
        "json.no_such_submodule",
        "no_such_parent.child",
        "sys",  # built in: no files to match
        "/no/such/folder",
        "",
    ],
)
def test_an_entry_that_names_no_package_or_folder_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match=rf"in_app_include: {entry!r}") as refused:
        resolve_in_app((entry,))
    assert "in_app_include" in str(refused.value)


@pytest.mark.parametrize("value", ["datasette", b"datasette", ("datasette", 3), None])
def test_in_app_include_must_be_a_tuple_of_strings(value: object) -> None:
    with pytest.raises(TypeError, match="in_app_include"):
        resolve_in_app(value)


def test_the_sampler_refuses_a_bad_entry_at_construction() -> None:
    with pytest.raises(ValueError, match="no_such_package_anywhere"):
        StackSampler(threading.get_ident(), in_app_include=("no_such_package_anywhere",))


# -- who started a task ---------------------------------------------------------------------


def task_origins(
    handler: Callable[[], Coroutine[Any, Any, None]], loop_name: str = "asyncio", **options: Any
) -> list[Any]:
    """Runs ``handler`` on a real loop whose task factory records ``started_by`` for every
    task created while it runs."""
    seen: list[Frame | None] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sampler = StackSampler(threading.get_ident(), **options)

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
            seen.append(sampler.started_by(skip=1))  # skip=1: this factory is the test's code
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)
        try:
            await handler()
        finally:
            loop.set_task_factory(None)

    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return seen


async def work() -> None:
    await asyncio.sleep(0)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_started_by_names_the_line_that_called_create_task(loop_name: str) -> None:
    async def handler() -> None:
        await asyncio.create_task(work())  # starts: create_task

    assert task_origins(handler, loop_name) == [
        Frame(__file__, line_of("starts: create_task"), "handler")
    ]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_started_by_names_the_line_that_called_gather(loop_name: str) -> None:
    async def handler() -> None:
        await asyncio.gather(work(), work())  # starts: gather

    assert (
        task_origins(handler, loop_name)
        == [Frame(__file__, line_of("starts: gather"), "handler")] * 2
    )


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is new in 3.11")
@pytest.mark.parametrize("loop_name", LOOPS)
def test_started_by_names_the_line_that_called_a_task_groups_create_task(loop_name: str) -> None:
    async def handler() -> None:
        async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined,unused-ignore]
            group.create_task(work())  # starts: TaskGroup

    assert task_origins(handler, loop_name) == [
        Frame(__file__, line_of("starts: TaskGroup"), "handler")
    ]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_started_by_names_the_line_that_called_anyio_start_soon(loop_name: str) -> None:
    async def handler() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(work)  # starts: anyio

    assert task_origins(handler, loop_name) == [
        Frame(__file__, line_of("starts: anyio"), "handler")
    ]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_started_by_names_the_app_line_that_called_a_library_that_starts_a_task(
    fakedeep: ModuleType, loop_name: str
) -> None:
    async def handler() -> None:
        await fakedeep.spawn(3, work())  # starts: through the library

    assert task_origins(handler, loop_name) == [
        Frame(__file__, line_of("starts: through the library"), "handler")
    ]


def test_started_by_looks_only_a_few_frames_up(fakedeep: ModuleType) -> None:
    # Frames seen from the factory: the loop's create_task, then spawn's, then the handler.
    async def reachable() -> None:
        await fakedeep.spawn(STARTED_BY_DEPTH - 2, work())  # starts: at the last frame looked at

    async def too_deep() -> None:
        await fakedeep.spawn(STARTED_BY_DEPTH - 1, work())

    assert task_origins(reachable) == [
        Frame(__file__, line_of("starts: at the last frame looked at"), "reachable")
    ]
    assert task_origins(too_deep) == [None]
    # Once the library is the app's, its own line is the answer.
    assert task_origins(too_deep, in_app_include=("fakedeep",)) == [
        Frame(FAKEDEEP, line_of("fakedeep: starts a task", FAKEDEEP), "spawn")
    ]


def test_started_by_never_raises_and_keeps_no_frame() -> None:
    sampler = StackSampler(threading.get_ident())
    assert sampler.started_by(skip=10**6) is None, "a stack shallower than skip: no answer"

    class Canary:
        pass

    def starting() -> weakref.ref[Canary]:
        canary = Canary()
        here = sampler.started_by()  # asks started_by
        assert here == Frame(__file__, line_of("asks started_by"), "starting")
        return weakref.ref(canary)

    assert starting()() is None
    assert starting()() is None, "the second answer comes from the cache, still keeping nothing"

"""What the loop monitor costs when nothing is wrong, and what it adds to a stall.

Three measurements, each on the standard asyncio loop (poll probe) and on uvloop (heartbeat
with libuv's idle-time metric), at the default settings (10 ms heartbeat, 20 ms threshold):

1. **Idle.** A loop with nothing to do, watched for ``--seconds`` (60), against the same loop
   unwatched: the process's CPU time over the wall time, the difference being what heartbeat
   and watchdog cost. Budget: at most 1 % of one core. The four processes run at once (they
   are idle; CPU time does not depend on what else runs).
2. **Merely busy.** A watched loop kept busy for ``--seconds`` by many short callbacks, none
   over 4 ms (a timer chain of tiny callbacks, and tasks that spin 0.05-4 ms then sleep a
   few ms): no stall may be recorded. One process after the other, so each has a core. The
   time the loop thread waited for a CPU is shown: on a loaded machine the OS can take the
   core for longer than the threshold, and the monitor then rightly reports a stall with
   cause ``starvation``.
3. **Stack capture.** A fixed block (``--block``, 0.5 s) on the loop, timed around the
   blocking call, with the monitor sampling its stack every 5 ms against no monitor: how much
   longer the block takes. Budget: at most 5 %. Once as a pure-Python CPU loop holding the
   GIL, once as ``time.sleep``; ``--trials`` (7) pairs run back to back in alternating order,
   the median of the pairs' ratios reported. The wall clock is what the budget is about but
   moves by several percent when other processes share the machine, so two more figures:
   the lengthening with the time the loop thread waited for a CPU (schedstat) taken out,
   and the CPU time the watchdog spent during the block, what it could at most have taken
   from the loop thread by holding the GIL. The verdict is on these two (the second only for
   the block that holds the GIL).

4. **Where the idle cost goes.** On an idle watched loop, how often the watchdog and the
   heartbeat run and the CPU each run takes (internal methods wrapped with a thread-CPU
   clock, in a process of its own).

    python -m benchmarks.idle_cost                    # about 4 minutes
    python -m benchmarks.idle_cost --seconds 5 --trials 3   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from time import perf_counter, process_time
from typing import Any

from benchmarks._common import loadavg, median, print_machine, run_on
from stallwatch import LoopMonitor

ROOT = Path(__file__).resolve().parent.parent
LOOPS = ("asyncio", "uvloop")
MODES = ("bare", "watched", "no-watchdog", "timer", "thread")
"""``timer`` and ``thread`` watch nothing: a 10 ms timer chain on the loop, and a thread that
wakes every 10 ms. They show what merely waking up 100 times a second costs on this machine,
the floor under any heartbeat and any watchdog at the default interval."""
IDLE_BUDGET = 0.01
STACK_BUDGET = 0.05


def _stall_summary(monitor: LoopMonitor) -> list[dict[str, Any]]:
    return [
        {"duration_ms": round(e.duration * 1e3, 1), "cause": e.cause, "culprit": e.culprit}
        for e in monitor.recent_stalls()
    ]


# -- the child processes ---------------------------------------------------------------------


async def _idle(mode: str, seconds: float) -> dict[str, Any]:
    monitor = LoopMonitor()
    watched = mode in ("watched", "no-watchdog")
    if watched:
        monitor.start()
    elif mode == "timer":
        loop = asyncio.get_running_loop()

        def tick() -> None:
            loop.call_later(0.010, tick)

        loop.call_later(0.010, tick)
    elif mode == "thread":
        done = threading.Event()

        def wake() -> None:
            while not done.wait(0.010):
                pass

        threading.Thread(target=wake, daemon=True).start()
    if mode == "no-watchdog":
        # Diagnosis only: the heartbeat and probe alone, to split the cost between them and
        # the watchdog thread. Reaches into the monitor: fails, rather than measure nothing,
        # if its insides change.
        attached = getattr(monitor, "_attached", None)
        watchdog = getattr(attached, "watchdog", None)
        if watchdog is None:
            raise RuntimeError("no-watchdog: LoopMonitor._attached.watchdog is gone; update me")
        watchdog.stop()
    await asyncio.sleep(1.0)  # start-up (imports, first beats) is not the steady state
    wall, cpu = perf_counter(), process_time()
    await asyncio.sleep(seconds)
    wall, cpu = perf_counter() - wall, process_time() - cpu
    result = {
        "cpu": cpu,
        "wall": wall,
        "probe": monitor.probe,
        "stalls": _stall_summary(monitor) if watched else [],
    }
    monitor.stop()
    return result


def _spin(seconds: float) -> None:
    end = perf_counter() + seconds
    while perf_counter() < end:
        pass


def _run_queue_wait() -> float | None:
    """Seconds this thread has waited for a CPU while runnable (Linux schedstat), or None."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


async def _busy(seconds: float) -> dict[str, Any]:
    """Many short callbacks: the loop is busy much of the time, but never held for long.

    Three tasks spin 0.05-4 ms, 0.05-1 ms and 0.5-3 ms and then sleep briefly, and a timer
    chain runs a tiny callback every millisecond: the longest stretch between two polls
    stays well under the 20 ms threshold, however the callbacks line up.
    """
    monitor = LoopMonitor()
    monitor.start()
    loop = asyncio.get_running_loop()
    rng = random.Random(2024)
    stop = perf_counter() + seconds
    spun = [0.0]
    callbacks = [0]
    longest = [0.0]

    async def worker(low_ms: float, high_ms: float, pause: float) -> None:
        while perf_counter() < stop:
            began = perf_counter()
            _spin(rng.uniform(low_ms, high_ms) / 1e3)
            took = perf_counter() - began
            spun[0] += took
            longest[0] = max(longest[0], took)
            callbacks[0] += 1
            await asyncio.sleep(pause)

    chain_done = loop.create_future()

    def tiny() -> None:
        callbacks[0] += 1
        if perf_counter() < stop:
            loop.call_later(0.001, tiny)
        elif not chain_done.done():
            chain_done.set_result(None)

    loop.call_soon(tiny)
    waited = _run_queue_wait()
    wall, cpu = perf_counter(), process_time()
    await asyncio.gather(
        worker(0.05, 4.0, 0.004), worker(0.05, 1.0, 0.001), worker(0.5, 3.0, 0.008), chain_done
    )
    wall, cpu = perf_counter() - wall, process_time() - cpu
    waited_after = _run_queue_wait()
    await asyncio.sleep(0.1)  # the watchdog records a stall that ended last
    result = {
        "wall": wall,
        "cpu": cpu,
        "busy_fraction": spun[0] / wall,
        "run_queue_wait": (
            (waited_after - waited) / wall
            if waited is not None and waited_after is not None
            else None
        ),
        "callbacks": callbacks[0],
        "longest_ms": longest[0] * 1e3,
        "probe": monitor.probe,
        "stalls": _stall_summary(monitor),
    }
    monitor.stop()
    return result


_DIAGNOSED = (
    ("watchdog wake-up", "stallwatch.stall.watchdog", "Watchdog", "_tick"),
    ("of which: CPU readings (_counters)", "stallwatch.stall.watchdog", "Watchdog", "_counters"),
    ("heartbeat callback", "stallwatch.loop.heartbeat", "Heartbeat", "_beat"),
)
"""Internal methods timed by ``--diagnose``; one that no longer exists is an error, never
a silent gap in the table (rename it here when the package changes)."""


async def _diagnose(seconds: float) -> dict[str, Any]:
    """How often the monitor wakes up on an idle loop, and the CPU each wake-up takes.

    Wraps a few of stallwatch's internal methods with a counter and a thread-CPU clock: for
    diagnosis only, in a process of its own; a name that no longer exists stops the run.
    """
    import importlib

    counts: dict[str, list[float]] = {}
    for label, module_name, class_name, method in _DIAGNOSED:
        cls = getattr(importlib.import_module(module_name), class_name, None)
        original = getattr(cls, method, None)
        if cls is None or original is None:
            raise SystemExit(f"--diagnose: {module_name}.{class_name}.{method} no longer exists")
        tally = counts[label] = [0.0, 0.0]

        def timed(
            *args: Any, _original: Any = original, _tally: list[float] = tally, **kwargs: Any
        ) -> Any:
            began = time.thread_time_ns()
            try:
                return _original(*args, **kwargs)
            finally:
                _tally[0] += 1
                _tally[1] += time.thread_time_ns() - began

        setattr(cls, method, timed)
    monitor = LoopMonitor()
    monitor.start()
    await asyncio.sleep(1.0)
    for tally in counts.values():
        tally[0] = tally[1] = 0.0
    await asyncio.sleep(seconds)
    monitor.stop()
    return {
        "probe": monitor.probe,
        "calls": {
            label: {"per_second": n / seconds, "us_each": ns / max(n, 1) / 1e3}
            for label, (n, ns) in counts.items()
        },
    }


def child(kind: str, loop_kind: str, mode: str, seconds: float) -> None:
    logging.getLogger("stallwatch").setLevel(logging.ERROR)
    if kind == "diagnose":
        result = run_on(loop_kind, _diagnose(seconds))
    elif kind == "idle":
        result = run_on(loop_kind, _idle(mode, seconds))
    else:
        result = run_on(loop_kind, _busy(seconds))
    print(json.dumps(result))


def _spawn(kind: str, loop_kind: str, mode: str, seconds: float) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "benchmarks.idle_cost", "--child", kind, "--loop", loop_kind,
        "--seconds", str(seconds), "--mode", mode,
    ]  # fmt: skip
    # --at REV: the children import stallwatch from the exported package, ahead of the
    # checkout (cwd heads sys.path under ``python -m``, so it is the export too)
    package = os.environ.get("BENCH_PACKAGE_DIR", "")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package, str(ROOT)) if p)}
    return subprocess.Popen(
        command, cwd=package or ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


def _collect(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"child failed with {proc.returncode}: {out}")
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return data


# -- 1. idle -------------------------------------------------------------------------------------


def idle(seconds: float) -> bool:
    print(f"\n## Idle loop, {seconds:g} s, default interval (10 ms) and threshold (20 ms)")
    procs = {(k, mode): _spawn("idle", k, mode, seconds) for k in LOOPS for mode in MODES}
    results = {key: _collect(proc) for key, proc in procs.items()}
    print(
        "| loop | probe | CPU/wall unwatched | CPU/wall watched | monitor cost, % of a core "
        "| of which heartbeat + probe | of which watchdog thread "
        "| for scale: a bare 10 ms timer | for scale: a bare thread waking every 10 ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    ok = True
    for k in LOOPS:
        share = {mode: results[(k, mode)]["cpu"] / results[(k, mode)]["wall"] for mode in MODES}
        cost = share["watched"] - share["bare"]
        beat = share["no-watchdog"] - share["bare"]
        ok = ok and cost <= IDLE_BUDGET
        print(
            f"| {k} | {results[(k, 'watched')]['probe']} | {share['bare']:.3%} "
            f"| {share['watched']:.3%} | {cost:.2%} | {beat:.2%} | {cost - beat:.2%} "
            f"| {share['timer'] - share['bare']:.2%} | {share['thread'] - share['bare']:.2%} |"
        )
        if results[(k, "watched")]["stalls"]:
            print(f"  ! {k}: stalls while idle: {results[(k, 'watched')]['stalls']}")
    print(f"idle cost {'within' if ok else 'OVER'} the budget of {IDLE_BUDGET:.0%} of one core")
    return ok


# -- 2. merely busy --------------------------------------------------------------------------


def busy(seconds: float) -> bool:
    print(f"\n## Merely busy loop, {seconds:g} s: many short callbacks, none over 4 ms")
    print(
        "| loop | probe | busy | callbacks | longest callback | waited for a CPU "
        "| stalls recorded |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    ok = True
    for k in LOOPS:
        r = _collect(_spawn("busy", k, "watched", seconds))
        stalls = len(r["stalls"])
        ok = ok and stalls == 0
        waited = r["run_queue_wait"]
        print(
            f"| {k} | {r['probe']} | {r['busy_fraction']:.0%} | {r['callbacks']:,} "
            f"| {r['longest_ms']:.2f} ms | {'?' if waited is None else f'{waited:.1%}'} "
            f"| {stalls} |"
        )
        if stalls:
            causes = collections.Counter(stall["cause"] for stall in r["stalls"])
            print(
                f"  ! {k}: {stalls} stalls by cause {dict(causes)} ('starvation': the OS gave "
                "the core to another process); the longest ones:"
            )
            for stall in sorted(r["stalls"], key=lambda x: -x["duration_ms"])[:5]:
                print(f"  ! {k}: {stall}")
            others = [x for x in r["stalls"] if x["cause"] != "starvation"]
            if others:
                print(f"  ! {k}: the ones not 'starvation': {others[:10]}")
    print("no stall recorded on a merely busy loop" if ok else "STALLS recorded on a busy loop")
    return ok


# -- 3. stack capture ------------------------------------------------------------------------


def _calibrate(seconds: float) -> int:
    """Iterations of ``_cpu_block`` that take about ``seconds`` of CPU on this machine.

    Measured in the thread's CPU time, so a busy machine does not shorten the block.
    """
    n = 200_000
    while True:
        began = time.thread_time()
        _cpu_block(n)
        took = time.thread_time() - began
        if took > 0.05:
            return max(1, int(n * seconds / took))
        n *= 4


def _cpu_block(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


async def _blocked(watched: bool, block: Callable[[], object]) -> dict[str, Any]:
    monitor = LoopMonitor()
    if watched:
        monitor.start()
    await asyncio.sleep(0.2)  # a few beats, the watchdog asleep: the steady state
    waited = _run_queue_wait()
    cpu, own = process_time(), time.thread_time()
    began = perf_counter()
    block()
    took = perf_counter() - began
    # CPU the process spent off the loop thread during the block: the watchdog's sampling.
    others = (process_time() - cpu) - (time.thread_time() - own)
    waited_after = _run_queue_wait()
    # The time the OS gave the loop thread's core to another process is not the monitor's.
    preempted = waited_after - waited if waited is not None and waited_after is not None else 0.0
    result: dict[str, Any] = {"took": took, "others": others, "own_time": took - preempted}
    if watched:
        deadline = perf_counter() + 2.0
        # polling with a deadline: the monitor offers no awaitable for "a stall was recorded"
        while not monitor.recent_stalls() and perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        stalls = monitor.recent_stalls()
        if stalls:
            event = stalls[-1]
            result.update(
                duration=event.duration,
                sampled=event.sampled,
                samples=sum(s.count for s in event.stacks),
                cause=event.cause,
                top=str(event.top_frame),
            )
        monitor.stop()
    return result


def stacks(block_seconds: float, trials: int) -> bool:
    print(
        f"\n## Stack capture: a {block_seconds:g} s block, with the monitor sampling every 5 ms "
        f"against none, {trials} alternating pairs"
    )
    n = _calibrate(block_seconds)
    blocks: dict[str, Callable[[], object]] = {
        "pure-Python CPU loop": lambda: _cpu_block(n),
        "time.sleep": lambda: time.sleep(block_seconds),
    }
    print(
        "| loop | block | median unwatched | median watched | longer by, wall "
        "| longer by, preemption removed | watchdog CPU / block | samples per stall "
        "| stall reported / measured | cause |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    ok = True
    for k in LOOPS:
        for name, block in blocks.items():
            pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for trial in range(trials):
                order = (False, True) if trial % 2 == 0 else (True, False)
                got = {w: run_on(k, _blocked(w, block)) for w in order}
                pairs.append((got[False], got[True]))
            bare = [b["took"] for b, _ in pairs]
            watched = [w for _, w in pairs]
            longer = median([w["took"] / b["took"] - 1 for b, w in pairs])
            longer_own = median([w["own_time"] / b["own_time"] - 1 for b, w in pairs])
            sampling = median([w["others"] / w["took"] for w in watched])
            # The watchdog's CPU can lengthen only a block that holds the GIL; during a
            # time.sleep it runs beside the loop thread, and only the lengthening counts.
            holds_gil = name != "time.sleep"
            ok = ok and longer_own <= STACK_BUDGET and (not holds_gil or sampling <= STACK_BUDGET)
            samples = median([float(w.get("samples", 0)) for w in watched])
            accuracy = median(
                [w["duration"] / w["took"] for w in watched if "duration" in w] or [float("nan")]
            )
            causes = sorted({str(w.get("cause", "not reported")) for w in watched})
            print(
                f"| {k} | {name} | {median(bare) * 1e3:.1f} ms "
                f"| {median([w['took'] for w in watched]) * 1e3:.1f} ms | {longer:+.2%} "
                f"| {longer_own:+.2%} | {sampling:.2%} | {samples:.0f} | {accuracy:.3f} "
                f"| {', '.join(causes)} |"
            )
            missing = [w for w in watched if not w.get("sampled")]
            if missing:
                print(f"  ! {k}/{name}: {len(missing)} of {len(watched)} stalls had no stack")
    print(
        f"stack capture {'within' if ok else 'OVER'} the budget "
        f"(a stall at most {STACK_BUDGET:.0%} longer)"
    )
    return ok


# -- 4. where the idle cost goes ------------------------------------------------------------


def diagnose(seconds: float) -> None:
    print(
        f"\n## Where the idle cost goes ({seconds:g} s idle, internal methods timed in the "
        "CPU time of their thread; cold caches after each sleep included)"
    )
    print("| loop | probe | what | calls per second | CPU us each | % of a core |")
    print("|---|---|---|---:|---:|---:|")
    for k in LOOPS:
        r = _collect(_spawn("diagnose", k, "watched", seconds))
        for label, c in r["calls"].items():
            share = c["per_second"] * c["us_each"] / 1e6
            print(
                f"| {k} | {r['probe']} | {label} | {c['per_second']:.0f} | {c['us_each']:.1f} "
                f"| {share:.2%} |"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="idle and busy runs (60)")
    parser.add_argument("--block", type=float, default=0.5, help="block length, s (0.5)")
    parser.add_argument("--trials", type=int, default=7, help="pairs per block kind (7)")
    parser.add_argument("--at", metavar="REV", help="measure stallwatch as committed at REV")
    parser.add_argument("--skip-idle", action="store_true")
    parser.add_argument("--skip-busy", action="store_true")
    parser.add_argument("--skip-stacks", action="store_true")
    parser.add_argument("--skip-diagnose", action="store_true")
    parser.add_argument("--child", choices=("idle", "busy", "diagnose"), help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="watched", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.loop, args.mode, args.seconds)
        return 0
    if not 0.2 <= args.block <= 1.0:
        parser.error("--block must be from 0.2 to 1 second")
    if args.at:
        import tempfile

        from benchmarks._servers import package_at

        exported = package_at(args.at, Path(tempfile.mkdtemp(prefix="stallwatch-idle-")))
        os.environ["BENCH_PACKAGE_DIR"] = str(exported)
        print(f"children import stallwatch as committed at {args.at}: {exported}")

    logging.getLogger("stallwatch").setLevel(logging.ERROR)
    print_machine("stallwatch idle cost and stack capture")
    given = argv if argv is not None else sys.argv[1:]
    print(f"command: python -m benchmarks.idle_cost {' '.join(given)}", flush=True)
    before = loadavg()
    started = time.monotonic()
    verdicts = []
    if not args.skip_idle:
        verdicts.append(idle(args.seconds))
        print(f"(loadavg {loadavg()})", flush=True)
    if not args.skip_busy:
        verdicts.append(busy(args.seconds))
        print(f"(loadavg {loadavg()})", flush=True)
    if not args.skip_stacks:
        verdicts.append(stacks(args.block, args.trials))
    if not args.skip_diagnose:
        diagnose(min(args.seconds, 10.0))
    print(f"\nloadavg before: {before}")
    print(f"loadavg after:  {loadavg()}")
    print(f"elapsed: {time.monotonic() - started:.0f} s")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())

"""``decisions.py``: why the loop did not poll, and who held it, decided from evidence alone.

Table-driven: each row is a situation the watchdog can find itself in, with the verdict.
"""

from __future__ import annotations

import pytest

from stallwatch import BACKGROUND
from stallwatch.decisions import (
    Evidence,
    Waiter,
    culprits,
    decide_cause,
    samples_after_the_block,
    victims,
)


def evidence(**overrides: object) -> Evidence:
    """A plain 100 ms block by code on the loop thread, unless told otherwise."""
    fields: dict[str, object] = {
        "duration": 0.1,
        "gc_seconds": 0.0,
        "loop_cpu": 0.95,
        "others_cpu": 0.05,
        "queued": 0.0,
        "on_lock": 0.0,
        "stacks": True,
        "held_off": False,
        "gil": True,
    }
    fields.update(overrides)
    return Evidence(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("situation", "overrides", "cause"),
    [
        ("a CPU loop in async def", {}, "blocking"),
        ("time.sleep in async def: off CPU, nobody else busy", {"loop_cpu": 0.01}, "blocking"),
        ("a full collection took most of it", {"gc_seconds": 0.06}, "gc"),
        ("gc wins over everything else", {"gc_seconds": 0.05, "loop_cpu": 0.0}, "gc"),
        ("collections, but under half of it", {"gc_seconds": 0.04}, "blocking"),
        (
            "executor threads hold the GIL, the loop waits in futex",
            {"loop_cpu": 0.1, "others_cpu": 0.9, "on_lock": 0.8},
            "starvation",
        ),
        (
            "others busy but the loop sleeps in a call of its own (not futex)",
            {"loop_cpu": 0.1, "others_cpu": 0.9, "on_lock": 0.1},
            "blocking",
        ),
        (
            "others busy, syscall unknown",
            {"loop_cpu": 0.1, "others_cpu": 0.9, "on_lock": None},
            "starvation",
        ),
        ("the CPU was not given to the process", {"loop_cpu": 0.2, "queued": 0.7}, "starvation"),
        (
            "a native call kept the GIL: no stack, the watchdog held off",
            {"stacks": False, "held_off": True},
            "gil",
        ),
        (
            "held off while the loop thread barely ran: it waited too",
            {"stacks": False, "held_off": True, "loop_cpu": 0.1},
            "starvation",
        ),
        (
            "free-threaded build: no GIL to keep",
            {"stacks": False, "held_off": True, "gil": False},
            "blocking",
        ),
        (
            "no CPU clock on this platform",
            {"loop_cpu": None, "others_cpu": 0.9, "queued": None},
            "blocking",
        ),
    ],
)
def test_the_cause(situation: str, overrides: dict[str, object], cause: str) -> None:
    assert decide_cause(evidence(**overrides)) == cause, situation


@pytest.mark.parametrize(
    ("held_for", "duration", "drop"),
    [(0.0, 0.1, False), (0.049, 0.1, False), (0.05, 0.1, True), (0.2, 0.1, True)],
)
def test_stacks_taken_after_a_long_hold_off_show_the_wrong_code(
    held_for: float, duration: float, drop: bool
) -> None:
    assert samples_after_the_block(held_for, duration) is drop


@pytest.mark.parametrize(
    ("holders", "duration", "culprit", "shares"),
    [
        ({}, 0.1, BACKGROUND, {}),
        ({"/a": 0.08, BACKGROUND: 0.02}, 0.1, "/a", {"/a": 0.8, BACKGROUND: 0.2}),
        (
            {"/a": 0.03, "/b": 0.05, BACKGROUND: 0.02},
            0.1,
            "/b",
            {"/b": 0.5, "/a": 0.3, BACKGROUND: 0.2},
        ),
    ],
)
def test_the_culprit_is_the_largest_holder(
    holders: dict[str, float], duration: float, culprit: str, shares: dict[str, float]
) -> None:
    name, got = culprits(holders, duration)
    assert name == culprit
    assert got == pytest.approx(shares)
    assert list(got) == list(shares)  # largest first


@pytest.mark.parametrize(
    ("waiters", "counts", "frozen"),
    [
        ([], {}, {}),
        # The request that held most of a 100 ms stall is its culprit, not its victim.
        ([Waiter("/slow", 0.095, 0.1)], {}, {}),
        # Waiting throughout, without a step in it.
        ([Waiter("/slow", 0.095, 0.1), Waiter("/ping", 0.0, 0.1)], {"/ping": 1}, {"/ping": 0.1}),
        # Behind the others in the ready queue, then one short step: waited all the same.
        ([Waiter("/ping", 0.0002, 0.1)], {"/ping": 1}, {"/ping": 0.0998}),
        # Forty 2.5 ms reads of one route: each waited for the other reads.
        ([Waiter("/cache", 0.0025, 0.1)] * 40, {"/cache": 40}, {"/cache": 40 * 0.0975}),
        # Alive for less than the floor of the stall: not frozen by it.
        ([Waiter("/new", 0.0, 0.0005)], {}, {}),
    ],
)
def test_the_victims_are_the_requests_that_waited_in_the_stall(
    waiters: list[Waiter], counts: dict[str, int], frozen: dict[str, float]
) -> None:
    got_counts, got_frozen = victims(waiters, 0.1, 0.001)
    assert got_counts == counts
    assert got_frozen == pytest.approx(frozen)

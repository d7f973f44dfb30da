"""``Allowance``: how much of a stretch ran inside ``allow_blocking()``."""

from __future__ import annotations

from stallwatch.loop.allowance import ALLOWED_SHARE, Allowance


def test_a_stall_is_allowed_when_marked_code_held_at_least_half_of_it() -> None:
    allowance = Allowance()
    allowance.began(10.0)
    allowance.ended(10.06, stretch_start=10.0)
    assert allowance.allowed(10.1, busy=0.1)  # 60 ms of 100
    assert not allowance.allowed(10.2, busy=0.2)  # 60 ms of 200
    assert ALLOWED_SHARE == 0.5


def test_nested_blocks_count_once_from_the_outermost() -> None:
    allowance = Allowance()
    allowance.began(0.0)
    allowance.began(0.01)
    allowance.ended(0.02, stretch_start=0.0)
    assert allowance.held == 0.0  # still inside the outer block
    allowance.ended(0.04, stretch_start=0.0)
    assert abs(allowance.held - 0.04) < 1e-12


def test_a_block_still_open_counts_up_to_now_and_only_inside_the_stretch() -> None:
    allowance = Allowance()
    allowance.began(0.0)  # opened before the stretch: only its part in the stretch counts
    assert allowance.allowed(1.0, busy=0.5)  # open since 0.0, the stretch began at 0.5
    allowance.ended(1.0, stretch_start=0.9)
    assert abs(allowance.held - 0.1) < 1e-12


def test_nothing_is_allowed_in_an_empty_stretch() -> None:
    assert not Allowance().allowed(1.0, busy=0.0)

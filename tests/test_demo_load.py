"""The load generator's logic, without a server or a clock: arrival schedules, the M/D/1
prediction printed beside the tail, the calibration that turns loads into rates, and the
verdict. Everything here is a pure function of its inputs, so exact answers are expected."""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics

import pytest

from demo_app import arrivals, queueing
from demo_app.calibrate import (
    Calibration,
    Run,
    Saturation,
    burst_size,
    fit,
    percent,
    service_span,
    thinned,
)
from demo_app.openloop import RouteResult
from demo_app.report import CACHE, ITEMS, PING, Step, table
from demo_app.scrape import Histogram, ServerView, StallLine
from demo_app.verdict import checks, took_off, verdict

# -- arrival schedules --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", arrivals.ARRIVALS)
def test_every_kind_sends_exactly_rate_times_duration_requests_inside_the_step(kind: str) -> None:
    offsets = arrivals.schedule(kind, 250.0, 4.0, seed=7)  # type: ignore[arg-type]

    assert len(offsets) == 1000
    assert offsets == sorted(offsets)
    assert offsets[0] >= 0.0
    assert offsets[-1] < 4.0


def test_uniform_arrivals_are_evenly_spaced() -> None:
    offsets = arrivals.schedule("uniform", 100.0, 1.0, seed=1)

    assert offsets == [i / 100 for i in range(100)]


def test_poisson_arrivals_are_as_irregular_as_a_poisson_process() -> None:
    offsets = arrivals.schedule("poisson", 200.0, 100.0, seed=3)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    per_second = [0] * 100
    for offset in offsets:
        per_second[int(offset)] += 1

    # Exponential gaps: the mean is 1/rate and the standard deviation equals the mean.
    assert statistics.mean(gaps) == pytest.approx(1 / 200, rel=0.02)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, abs=0.05)
    # Counts per second vary as much as they average (index of dispersion 1), where evenly
    # spaced arrivals put exactly 200 in every second.
    assert statistics.variance(per_second) / statistics.mean(per_second) == pytest.approx(
        1.0, abs=0.35
    )


def test_a_seed_fixes_the_schedule_so_modes_compare_on_the_same_traffic() -> None:
    assert arrivals.schedule("poisson", 50.0, 2.0, seed=5) == arrivals.schedule(
        "poisson", 50.0, 2.0, seed=5
    )
    assert arrivals.schedule("poisson", 50.0, 2.0, seed=5) != arrivals.schedule(
        "poisson", 50.0, 2.0, seed=6
    )


def test_bursts_come_in_clumps_due_at_the_same_instant() -> None:
    offsets = arrivals.schedule("bursts", 100.0, 2.05, seed=2)

    clumps = [offsets[i : i + arrivals.BURST_SIZE] for i in range(0, 205, arrivals.BURST_SIZE)]
    assert len(offsets) == 205
    assert all(len(set(clump)) == 1 for clump in clumps)
    assert len(clumps[-1]) == 5  # the remainder
    assert len(set(offsets)) == 21


@pytest.mark.parametrize(
    ("kind", "rate", "duration"), [("weekly", 1.0, 1.0), ("poisson", 0.0, 1.0), ("uniform", 1, -1)]
)
def test_a_bad_schedule_is_refused(kind: str, rate: float, duration: float) -> None:
    with pytest.raises(ValueError, match=r"weekly|positive"):
        arrivals.schedule(kind, rate, duration, seed=1)  # type: ignore[arg-type]


def test_a_rate_too_low_for_the_step_still_sends_one_request() -> None:
    assert arrivals.schedule("uniform", 0.1, 1.0, seed=1) == [0.0]


# -- queueing theory ----------------------------------------------------------------------------


def test_nobody_waits_at_no_load_and_one_minus_rho_never_waits() -> None:
    assert queueing.wait_cdf(0.0, 0.0, 0.002) == 1.0
    assert queueing.wait_cdf(0.0, 0.7, 0.002) == pytest.approx(0.3)
    assert queueing.wait_quantile(0.5, 0.3, 0.002) == 0.0  # 70 % do not wait at all


def test_mean_wait_is_pollaczek_khinchine_for_a_fixed_service_time() -> None:
    assert queueing.mean_wait(0.5, 0.002) == pytest.approx(0.001)
    assert queueing.mean_wait(0.9, 0.002) == pytest.approx(0.009)
    assert queueing.mean_wait(1.0, 0.002) == math.inf


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.85, 0.95])
def test_the_p99_wait_matches_a_simulated_queue_fed_poisson_arrivals(rho: float) -> None:
    service = 0.0025
    offsets = arrivals.schedule("poisson", rho / service, 150_000 * service / rho, seed=11)
    waits = sorted(queueing.fifo_waits(offsets, service))
    simulated_p99 = waits[int(0.99 * len(waits))]
    simulated_mean = statistics.mean(waits)

    assert queueing.wait_quantile(0.99, rho, service) == pytest.approx(simulated_p99, rel=0.1)
    assert queueing.mean_wait(rho, service) == pytest.approx(simulated_mean, rel=0.1)


def test_the_knee_is_physics_the_tail_grows_like_one_over_one_minus_rho() -> None:
    d = 0.0025
    p99 = {rho: queueing.wait_quantile(0.99, rho, d) for rho in (0.3, 0.6, 0.85, 0.95)}

    assert p99[0.3] < 2 * d
    assert p99[0.6] < 5 * d
    assert p99[0.85] > 3 * p99[0.6]
    assert p99[0.95] > 20 * p99[0.3]
    assert queueing.wait_quantile(0.99, 1.1, d) == math.inf


def test_near_full_load_the_heavy_traffic_form_takes_over_smoothly() -> None:
    exact = queueing.wait_quantile(0.99, queueing.HEAVY_TRAFFIC, 1.0)
    above = queueing.wait_quantile(0.99, queueing.HEAVY_TRAFFIC + 1e-9, 1.0)

    assert above == pytest.approx(exact, rel=0.02)
    assert queueing.wait_quantile(0.99, 0.999, 1.0) == pytest.approx(2300, rel=0.01)


# -- calibration --------------------------------------------------------------------------------


def test_the_service_time_is_the_spacing_of_a_saturating_bursts_answers() -> None:
    assert service_span([5.0, 5.2, 5.1, 6.0]) == pytest.approx(1.0)
    # 100 answers over 0.297 s: 3 ms apart in the median burst, 2.9 ms in the fastest.
    saturation = Saturation((0.297, 0.6, 0.2871), size=100, cpu_seconds=0.9)
    assert saturation.service == pytest.approx(0.003)
    assert saturation.fastest == pytest.approx(0.0029)
    assert saturation.cpu_per_request == pytest.approx(0.003)


def test_fit_on_a_quiet_machine_takes_the_spacing_and_the_steady_traffic_as_they_are() -> None:
    light = Run(seconds=2.0, cpu_seconds=0.1)
    saturation = Saturation((0.198, 0.198, 0.2), size=100, cpu_seconds=0.6)

    calibration = fit(light, saturation, source="process CPU time")

    assert calibration.cache_cost == pytest.approx(0.002)
    assert calibration.cpu_share == pytest.approx(1.0)
    assert calibration.base == pytest.approx(0.05)
    assert calibration.capacity == pytest.approx(0.95 / 0.002)


def test_fit_on_a_busy_machine_keeps_the_cost_a_request_has_with_a_whole_cpu() -> None:
    # Answers 4 ms apart, but 2 ms of CPU each: neighbours took half the CPU. The loop's own
    # cost stays 2 ms (so a load is never offered too light to show the tail), and the share
    # the server got is reported.
    light = Run(seconds=2.0, cpu_seconds=0.1)
    saturation = Saturation((0.396, 0.5), size=100, cpu_seconds=0.4)

    calibration = fit(light, saturation, source="process CPU time")

    assert calibration.cache_cost == pytest.approx(0.002)
    assert calibration.cpu_share == pytest.approx(0.002 / (0.448 / 99))
    assert calibration.base == pytest.approx(0.05)


def test_a_burst_faster_than_the_cpu_counter_says_wins() -> None:
    # CPU ticks are coarse: a spacing below the CPU per request is the better figure.
    calibration = fit(Run(2.0, 0.1), Saturation((0.1485,), 100, 0.2), source="x")

    assert calibration.cache_cost == pytest.approx(0.0015)
    assert calibration.cpu_share == 1.0


def test_without_a_cpu_counter_the_spacing_alone_sets_the_cost() -> None:
    calibration = fit(Run(2.0, 0.0), Saturation((0.099,), 100, 0.0), source="none")

    assert calibration.cache_cost == pytest.approx(0.001)
    assert calibration.cpu_share == 1.0
    assert calibration.base == 0.0


def test_a_burst_that_measured_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="apart"):
        fit(Run(1.0, 0.1), Saturation((0.0,), 50, 0.1), source="x")
    with pytest.raises(ValueError, match="two requests"):
        fit(Run(1.0, 0.1), Saturation((0.1,), 1, 0.1), source="x")


def test_loads_and_rates_are_each_others_inverse() -> None:
    calibration = Calibration(base=0.05, cache_cost=0.0025, cpu_share=1.0, source="x")

    assert calibration.rate(0.85) == pytest.approx(320.0)
    assert calibration.utilization(320.0) == pytest.approx(0.85)
    assert calibration.rate(1.10) == pytest.approx(420.0)
    with pytest.raises(ValueError, match="below the 5%"):
        calibration.rate(0.04)


def test_the_steady_traffic_is_thinned_only_on_a_slow_server() -> None:
    assert thinned(0.06, 50.0, 100.0) == (50.0, 100.0)
    assert thinned(0.40, 50.0, 100.0) == (12.5, 25.0)
    assert thinned(2.00, 50.0, 100.0) == (10.0, 20.0)  # the probe keeps enough samples


def test_a_burst_lasts_about_a_third_of_a_second_within_bounds() -> None:
    assert burst_size(0.002) == 150
    assert burst_size(0.0001) == 200
    assert burst_size(0.05) == 30
    assert burst_size(0.0) == 30


def test_loads_are_given_in_percent() -> None:
    assert percent("30, 60,110") == [0.30, 0.60, 1.10]
    with pytest.raises(ValueError, match="percentages"):
        percent("30,-5")


READ = "/src/demo_app/cache.py:154 in read_blocking"

# -- the verdict --------------------------------------------------------------------------------


def histogram(count: float, mean: float) -> Histogram:
    """``count`` observations of about ``mean`` seconds each."""
    return Histogram(((mean * 2, count), (math.inf, count)), count * mean)


def step(
    mode: str,
    load: float,
    ping_p99: float,
    frozen_by_cache: float,
    ping_mean: float,
    *,
    threads: int = 1,
) -> Step:
    """A step whose /ping answered in 1 ms but for its slowest 2 %, at ``ping_p99``."""
    pings = 100
    latencies = [0.001] * 98 + [ping_p99] * 2
    return Step(
        mode=mode,
        threads=threads,
        rate=load * 400,
        utilization=load,
        service=0.0025,
        arrivals="poisson",
        duration=1.0,
        client=[
            RouteResult(CACHE, load * 400, [0.003] * 10, 10, 10),
            RouteResult(PING, 100.0, latencies, pings, pings),
        ],
        server=ServerView(
            lag=histogram(100, 0.001),
            routes={
                CACHE: histogram(10, 0.003),
                ITEMS: histogram(0, 0),
                PING: histogram(pings, ping_mean),
            },
            frozen={PING: {CACHE: frozen_by_cache * pings, "<background>": 0.0001 * pings}},
            stalls={},
            busy={},
        ),
        stall_lines=[StallLine(CACHE, "blocking", READ, 0.5, 12)] if ping_p99 > 0.1 else [],
    )


def sweep(*, frozen: float = 0.090, executor_frozen: float = 0.001) -> list[Step]:
    steps = []
    for load, p99 in ((0.30, 0.004), (0.60, 0.009), (0.85, 0.060), (0.95, 0.200)):
        steps.append(step("blocking", load, p99, frozen if p99 > 0.05 else 0.0005, 0.100))
        steps.append(step("executor", load, 0.005, executor_frozen, 0.002))
        steps.append(step("executor", load, 0.040, 0.010, 0.015, threads=6))
    return steps


def test_the_tail_took_off_where_ping_p99_tripled_and_passed_10_ms() -> None:
    lowest, high = took_off(sweep())

    assert lowest is not None
    assert lowest.utilization == 0.30
    assert [s.utilization for s in high] == [0.85, 0.95]  # 60 %: 9 ms, not yet


def test_a_disturbed_lowest_step_does_not_raise_the_bar_for_the_others() -> None:
    # A neighbour's work made the 30 % step's tail 50 ms: 60 % (9 ms) is the reference then.
    steps = [s for s in sweep() if s.utilization != 0.30]
    steps.append(step("blocking", 0.30, 0.050, 0.0005, 0.100))
    lowest, high = took_off(steps)

    assert lowest is not None
    assert lowest.utilization == 0.60
    assert [s.utilization for s in high] == [0.85, 0.95]


def test_the_claim_holds_when_the_cache_froze_ping_and_executor_mode_removed_it() -> None:
    steps = sweep()
    found = checks(steps)
    text = verdict(steps)

    assert [c.holds for c in found] == [True, True]
    assert [len(c.others) for c in found] == [1, 1]  # the 6-thread pool, shown beside
    assert "took off at 85% of the loop (340 cache req/s)" in text
    assert "M/D/1 predicts" in text
    assert "(the pool-size trade-off)" in text
    assert text.splitlines()[-1].startswith("VERDICT: HOLDS at 2 of 2 loads")


def test_the_verdict_names_the_reads_line_from_the_heaviest_load_with_stalls() -> None:
    text = verdict(sweep())

    assert (
        "the line: stallwatch charges 12 blocking stalls (500 ms) to /cache/{key} at "
        "demo_app/cache.py:154 in read_blocking"
    ) in text


def test_the_claim_fails_when_no_stall_names_the_read() -> None:
    steps = [dataclasses.replace(s, stall_lines=[]) for s in sweep()]
    elsewhere = [
        dataclasses.replace(s, stall_lines=[StallLine(CACHE, "blocking", "/x/app.py:9 in f", 1, 1)])
        for s in sweep()
    ]

    assert "no line named" in verdict(steps)
    assert verdict(steps).splitlines()[-1].startswith("VERDICT: FAILS at 2 of 2")
    assert "-- not the read's line" in verdict(elsewhere)
    assert verdict(elsewhere).splitlines()[-1].startswith("VERDICT: FAILS")


def test_the_claim_fails_when_executor_mode_leaves_the_frozen_time() -> None:
    text = verdict(sweep(executor_frozen=0.050))

    assert "-> FAILS" in text
    assert text.splitlines()[-1].startswith("VERDICT: FAILS at 0 of 2 loads")


def test_the_claim_fails_when_the_frozen_time_is_not_most_of_pings_time() -> None:
    assert verdict(sweep(frozen=0.030)).splitlines()[-1].startswith("VERDICT: FAILS")


def test_no_takeoff_is_said_plainly_with_what_to_try() -> None:
    flat = [s for s in sweep() if s.utilization <= 0.60]

    assert verdict(flat).startswith("VERDICT: not shown: blocking mode's /ping p99 never reached")


def test_the_table_prints_the_load_the_rate_and_the_prediction_beside_the_tail() -> None:
    text = table(sweep())
    lines = text.splitlines()
    first = next(line for line in lines if line.startswith("blocking     85%"))
    probe_row = lines[lines.index(first) + 1]

    assert first.split()[:4] == ["blocking", "85%", "340", CACHE]
    theory = queueing.wait_quantile(0.99, 0.85, 0.0025) * 1e3
    assert f"{theory:.1f} |" in probe_row
    assert "/ping (probe)" in probe_row

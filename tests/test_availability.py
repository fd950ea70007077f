"""The availability math: chi-square bounds, intervals, rate estimates, the birth-death model, the report."""

from __future__ import annotations

import json
import math
import random
from fractions import Fraction

import pytest

from haproxy_ai.availability import (
    ADMIN_STATES,
    DOWN_STATES,
    SECONDS_PER_YEAR,
    UP_STATES,
    Interval,
    chi2_ppf,
    downtime_per_year,
    failure_rate,
    intervals,
    mean_time_to_failure,
    observed_fraction_at_least,
    p_at_least,
    poisson_rate,
    pool_distribution,
    pool_report,
    repair_rate,
    replica_availability,
    replicas_needed,
    simulate,
)
from haproxy_ai.health.state import State

Transitions = list[tuple[float, str, str]]
Histories = dict[str, tuple[float, Transitions, str]]


# ---------------------------------------------------------------- chi-square


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 2, 7.377758908),
        (0.025, 2, 0.0506356),
        (0.975, 10, 20.48317735),
        (0.025, 10, 3.246972780),
        (0.025, 20, 9.590777392),
        (0.975, 22, 36.78071208),
        (0.95, 1, 3.841458821),
        (0.99, 10, 23.20925116),
    ],
)
def test_chi2_ppf_table_values(p: float, df: int, expected: float) -> None:
    assert chi2_ppf(p, df) == pytest.approx(expected, rel=1e-6)


def _chi2_cdf_even(x: float, df: int) -> float:
    """Closed form for even df = 2m: 1 - exp(-x/2) * sum_{j<m} (x/2)^j / j!."""
    half = x / 2.0
    term, total = 1.0, 0.0
    for j in range(df // 2):
        total += term
        term *= half / (j + 1)
    return 1.0 - math.exp(-half) * total


def test_chi2_ppf_inverts_the_cdf() -> None:
    assert chi2_ppf(0.025, 2) == pytest.approx(-2.0 * math.log(0.975), rel=1e-12)
    assert chi2_ppf(0.975, 2) == pytest.approx(-2.0 * math.log(0.025), rel=1e-12)
    for df in (2, 4, 8, 22, 60, 200, 402):
        for p in (0.01, 0.025, 0.3, 0.5, 0.9, 0.975):
            assert _chi2_cdf_even(chi2_ppf(p, df), df) == pytest.approx(p, rel=1e-9)
    assert chi2_ppf(0.0, 4) == 0.0
    assert chi2_ppf(1.0, 4) == math.inf
    with pytest.raises(ValueError):
        chi2_ppf(0.5, 0)


# ---------------------------------------------------------------- intervals


def _spans(ivs: list[Interval]) -> list[tuple[float, float, str]]:
    return [(iv.start, iv.end, iv.state) for iv in ivs]


def test_state_classes_cover_every_backend_state() -> None:
    assert UP_STATES | DOWN_STATES | ADMIN_STATES == {s.value for s in State}
    assert not (UP_STATES & DOWN_STATES or UP_STATES & ADMIN_STATES or DOWN_STATES & ADMIN_STATES)


def test_intervals_basic_and_clipping() -> None:
    history: Transitions = [(5.0, "healthy", "unhealthy"), (8.0, "unhealthy", "healthy")]
    assert _spans(intervals(history, 0.0, 10.0)) == [(0, 5, "up"), (5, 8, "down"), (8, 10, "up")]
    # the state at start comes from the last transition before it; later ones are ignored
    assert _spans(intervals(history, 6.0, 10.0)) == [(6, 8, "down"), (8, 10, "up")]
    assert _spans(intervals(history, 0.0, 7.0)) == [(0, 5, "up"), (5, 7, "down")]
    assert _spans(intervals(history, 8.0, 10.0)) == [(8, 10, "up")]  # a transition at start applies
    assert _spans(intervals(list(reversed(history)), 0.0, 10.0)) == [(0, 5, "up"), (5, 8, "down"), (8, 10, "up")]
    assert _spans(intervals([], 0.0, 4.0, initial="ejected")) == [(0, 4, "down")]
    assert intervals(history, 3.0, 3.0) == []
    with pytest.raises(ValueError):
        intervals(history, 3.0, 2.0)
    with pytest.raises(ValueError):
        intervals([(1.0, "healthy", "on-fire")], 0.0, 2.0)


def test_intervals_merge_same_class() -> None:
    history: Transitions = [
        (2.0, "healthy", "cooldown"),
        (3.0, "cooldown", "healthy"),
        (4.0, "healthy", "ejected"),
        (6.0, "ejected", "unhealthy"),
        (7.0, "unhealthy", "healthy"),
        (7.0, "healthy", "unhealthy"),  # zero-length up blip: dropped, the down spans join
    ]
    assert _spans(intervals(history, 0.0, 10.0)) == [(0, 4, "up"), (4, 10, "down")]


def test_admin_time_is_excluded_and_is_no_event() -> None:
    history: Transitions = [
        (2.0, "healthy", "draining"),
        (4.0, "draining", "unhealthy"),  # leaving admin into down: not a failure
        (6.0, "unhealthy", "healthy"),  # a repair
        (8.0, "healthy", "disabled"),
        (9.0, "disabled", "healthy"),
    ]
    ivs = intervals(history, 0.0, 10.0)
    assert _spans(ivs) == [(0, 2, "up"), (2, 4, "admin"), (4, 6, "down"), (6, 8, "up"), (8, 9, "admin"), (9, 10, "up")]
    lam, mu = failure_rate(ivs), repair_rate(ivs)
    assert (lam.events, lam.exposure) == (0, 5.0)
    assert (mu.events, mu.exposure) == (1, 2.0)


# ---------------------------------------------------------------- rate estimates


def _cycles(count: int, up: float, down: float) -> Transitions:
    history: Transitions = []
    t = 0.0
    for _ in range(count):
        t += up
        history.append((t, "healthy", "unhealthy"))
        t += down
        history.append((t, "unhealthy", "healthy"))
    return history


def test_rates_from_known_counts() -> None:
    history = _cycles(10, up=100.0, down=10.0)
    ivs = intervals(history, 0.0, 1100.0)
    lam = failure_rate(ivs)
    assert (lam.events, lam.exposure, lam.rate) == (10, 1000.0, 0.01)
    # the classic exact Poisson interval for 10 events: [4.795, 18.39]
    assert lam.low == pytest.approx(4.795389 / 1000, rel=1e-5)
    assert lam.high == pytest.approx(18.390356 / 1000, rel=1e-5)
    assert lam.low < lam.rate < lam.high
    mu = repair_rate(ivs)
    # the last repair is exactly at the window's end: no up span follows it, so it is not (yet) an event
    assert (mu.events, mu.exposure) == (9, 100.0)
    assert mu.rate == pytest.approx(0.09)
    assert mu.low < 0.09 < mu.high
    mu = repair_rate(intervals(history, 0.0, 1101.0))
    assert (mu.events, mu.exposure, mu.rate) == (10, 100.0, 0.1)


def test_censoring_and_no_events() -> None:
    # still down at the end: exposure without a repair
    ivs = intervals([(100.0, "healthy", "ejected")], 0.0, 150.0)
    lam, mu = failure_rate(ivs), repair_rate(ivs)
    assert (lam.events, lam.exposure, mu.events, mu.exposure) == (1, 100.0, 0, 50.0)
    assert mu.rate == 0.0 and mu.low == 0.0
    assert mu.high == pytest.approx(-math.log(0.025) / 50.0, rel=1e-9)  # 3.689 / T
    # no exposure at all
    none = repair_rate(intervals([], 0.0, 10.0))
    assert (none.rate, none.low, none.high, none.events, none.exposure) == (0.0, 0.0, math.inf, 0, 0.0)
    assert poisson_rate(1, 10.0).low == pytest.approx(0.0253178 / 10.0, rel=1e-5)
    with pytest.raises(ValueError):
        poisson_rate(1, 0.0)


def _synthetic_history(
    rng: random.Random, lam: float, mu: float, cycles: int
) -> tuple[Transitions, float, float, float, int]:
    """Alternating exponential up/down spans, with cooldown blips and admin stints that must not count."""
    history: Transitions = []
    t = 0.0
    up_total = down_total = 0.0
    admin_rate = lam / 2.0
    failures = 0
    state = "healthy"
    while failures < cycles:
        to_fail, to_admin = rng.expovariate(lam), rng.expovariate(admin_rate)
        if to_admin < to_fail:  # an operator drains it for a while (memoryless: the up clock restarts)
            t += to_admin
            up_total += to_admin
            history.append((t, state, "draining"))
            t += rng.expovariate(1 / 300)
            history.append((t, "draining", "healthy"))
            state = "healthy"
            continue
        if rng.random() < 0.3:  # back-pressure just before the failure: still up time
            history.append((t + to_fail / 2, state, "cooldown"))
            state = "cooldown"
        t += to_fail
        up_total += to_fail
        down = "ejected" if rng.random() < 0.5 else "unhealthy"
        history.append((t, state, down))
        failures += 1
        repair = rng.expovariate(mu)
        t += repair
        down_total += repair
        history.append((t, down, "healthy"))
        state = "healthy"
    return history, t, up_total, down_total, failures


def test_recovers_known_rates_from_a_long_history() -> None:
    lam, mu = 1 / 600, 1 / 60
    history, end, up_total, down_total, failures = _synthetic_history(random.Random(20240611), lam, mu, 2000)
    ivs = intervals(history, 0.0, end + 60.0)  # the last repair must open an up span to count
    lam_est, mu_est = failure_rate(ivs), repair_rate(ivs)
    assert lam_est.events == mu_est.events == failures
    assert lam_est.exposure == pytest.approx(up_total + 60.0, rel=1e-9)
    assert mu_est.exposure == pytest.approx(down_total, rel=1e-9)
    assert lam_est.rate == pytest.approx(lam, rel=0.1)
    assert mu_est.rate == pytest.approx(mu, rel=0.1)
    assert lam_est.low < lam < lam_est.high
    assert mu_est.low < mu < mu_est.high


# ---------------------------------------------------------------- the model


def test_single_replica() -> None:
    lam, mu = 0.2, 3.0
    assert replica_availability(lam, mu) == pytest.approx(mu / (lam + mu))
    assert pool_distribution(1, lam, mu) == pytest.approx([lam / (lam + mu), mu / (lam + mu)])
    assert replica_availability(0.0, 0.0) == 1.0
    assert replica_availability(1.0, 0.0) == 0.0
    assert mean_time_to_failure(1, lam, mu, 1) == pytest.approx(1 / lam)


def test_two_of_three_independent_repair_is_binomial() -> None:
    lam, mu = 0.5, 4.0
    a = mu / (lam + mu)
    dist = pool_distribution(3, lam, mu)
    assert sum(dist) == pytest.approx(1.0)
    assert dist == pytest.approx([(1 - a) ** 3, 3 * a * (1 - a) ** 2, 3 * a**2 * (1 - a), a**3])
    assert p_at_least(dist, 2) == pytest.approx(3 * a**2 * (1 - a) + a**3)
    assert p_at_least(dist, 0) == 1.0
    assert p_at_least(dist, 4) == 0.0


@pytest.mark.parametrize(
    ("crews", "expected"),
    [
        # pi[k+1] / pi[k] = min(3 - k, crews) * mu / ((k + 1) * lam) with lam = 1, mu = 2
        (1, [Fraction(3, 19), Fraction(6, 19), Fraction(6, 19), Fraction(4, 19)]),  # weights 1, 2, 2, 4/3
        (2, [Fraction(3, 55), Fraction(12, 55), Fraction(24, 55), Fraction(16, 55)]),  # weights 1, 4, 8, 16/3
        (3, [Fraction(1, 27), Fraction(6, 27), Fraction(12, 27), Fraction(8, 27)]),  # = independent, a = 2/3
    ],
)
def test_limited_repair_crews(crews: int, expected: list[Fraction]) -> None:
    assert pool_distribution(3, 1.0, 2.0, crews) == pytest.approx([float(f) for f in expected], rel=1e-12)


def test_distribution_edge_cases_and_large_n() -> None:
    assert pool_distribution(4, 0.0, 1.0) == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert pool_distribution(4, 1.0, 0.0) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert pool_distribution(0, 1.0, 1.0) == [1.0]
    for crews in (None, 1, 7):
        dist = pool_distribution(200, 1e-4, 10.0, crews)
        assert all(math.isfinite(p) and p >= 0.0 for p in dist)
        assert math.fsum(dist) == pytest.approx(1.0)
    big = pool_distribution(200, 1.0, 1.0)  # Binomial(200, 1/2): mode at 100
    assert max(range(201), key=big.__getitem__) == 100
    assert big[100] == pytest.approx(math.comb(200, 100) / 2**200, rel=1e-9)
    with pytest.raises(ValueError):
        pool_distribution(3, -1.0, 1.0)
    with pytest.raises(ValueError):
        pool_distribution(3, 1.0, 1.0, crews=0)


def test_downtime_per_year() -> None:
    assert SECONDS_PER_YEAR == 31_557_600.0
    assert downtime_per_year(1.0) == 0.0
    assert downtime_per_year(0.9999) == pytest.approx(3155.76)
    with pytest.raises(ValueError):
        downtime_per_year(1.5)


def _mttf_dense(n: int, lam: float, mu: float, k_min: int, crews: int | None) -> float:
    """Solve the first-passage system by plain Gaussian elimination (an independent check)."""
    states = list(range(k_min, n + 1))
    size = len(states)
    rows = [[0.0] * (size + 1) for _ in range(size)]
    for i, k in enumerate(states):
        deaths, births = k * lam, (n - k if crews is None else min(n - k, crews)) * mu
        rows[i][i] = deaths + births
        if i > 0:
            rows[i][i - 1] = -deaths
        if i + 1 < size:
            rows[i][i + 1] = -births
        rows[i][size] = 1.0
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(size):
            if r != col and rows[r][col]:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [x - factor * y for x, y in zip(rows[r], rows[col], strict=True)]
    return rows[size - 1][size] / rows[size - 1][size - 1]


def test_mean_time_to_failure() -> None:
    lam, mu = 0.01, 0.5
    assert mean_time_to_failure(2, lam, mu, 1) == pytest.approx((3 * lam + mu) / (2 * lam**2))
    assert mean_time_to_failure(3, lam, mu, 3) == pytest.approx(1 / (3 * lam))
    assert mean_time_to_failure(2, lam, 0.0, 1) == pytest.approx(1 / (2 * lam) + 1 / lam)
    for n, k_min, crews in [(3, 2, None), (5, 2, 1), (6, 3, 2), (4, 1, None)]:
        assert mean_time_to_failure(n, lam, mu, k_min, crews) == pytest.approx(
            _mttf_dense(n, lam, mu, k_min, crews), rel=1e-9
        )
    assert mean_time_to_failure(3, 0.0, mu, 2) == math.inf
    assert mean_time_to_failure(1, lam, mu, 2) == 0.0
    assert mean_time_to_failure(200, 1.0, 1e6, 1) == math.inf  # overflows to inf, no exception


def _needed(target: float, k_min: int, lam: float, mu: float) -> int:
    n = replicas_needed(target, k_min, lam, mu)
    assert n is not None
    return n


def test_replicas_needed() -> None:
    lam, mu = 1.0, 9.0  # a = 0.9: P(at least 1 of n) = 1 - 0.1^n
    assert replicas_needed(0.95, 1, lam, mu) == 2
    assert replicas_needed(0.9985, 1, lam, mu) == 3
    assert replicas_needed(0.5, 3, 0.0, 1.0) == 3  # never fails: k_min is enough
    assert replicas_needed(0.5, 1, 1.0, 0.0) is None  # never repaired
    assert replicas_needed(0.9, 1, lam, mu, max_n=0) is None
    # one repair crew, lambda > mu: P(at least 1) saturates at 1 - exp(-1/2) ~ 0.39 however many replicas
    assert replicas_needed(0.3, 1, 1.0, 0.5, crews=1) is not None
    assert replicas_needed(0.5, 1, 1.0, 0.5, crews=1) is None
    needed = [_needed(t, 2, 0.01, 1.0) for t in (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)]
    assert needed == sorted(needed) and needed[0] < needed[-1]
    by_lambda = [_needed(0.9999, 2, lam, 1.0) for lam in (0.001, 0.01, 0.05, 0.2)]
    assert by_lambda == sorted(by_lambda) and by_lambda[0] < by_lambda[-1]
    for n in needed:
        assert p_at_least(pool_distribution(n, 0.01, 1.0), 2) >= 0.9 > p_at_least(pool_distribution(1, 0.01, 1.0), 2)


def test_simulation_agrees_with_the_chain() -> None:
    lam, mu = 1.0, 4.0
    rng = random.Random(7)
    expected = p_at_least(pool_distribution(3, lam, mu), 2)
    assert simulate(3, lam, mu, 2, 20_000.0, rng) == pytest.approx(expected, abs=0.01)
    expected_one_crew = p_at_least(pool_distribution(3, lam, mu, 1), 2)
    assert expected_one_crew < expected
    assert simulate(3, lam, mu, 2, 20_000.0, rng, crews=1) == pytest.approx(expected_one_crew, abs=0.01)
    assert simulate(3, 0.0, mu, 2, 100.0, rng) == 1.0
    assert simulate(3, lam, mu, 4, 100.0, rng) == 0.0


# ---------------------------------------------------------------- observed reality


def test_observed_fraction_at_least() -> None:
    a = [Interval(0, 10, "up"), Interval(10, 20, "down")]
    b = [Interval(0, 5, "up"), Interval(5, 15, "admin"), Interval(15, 20, "up")]
    c = [Interval(12, 20, "down")]  # added late, never up
    assert observed_fraction_at_least([a, b, c], 1, 0, 20) == pytest.approx(0.75)
    assert observed_fraction_at_least([a, b, c], 2, 0, 20) == pytest.approx(0.25)
    assert observed_fraction_at_least([a, b, c], 3, 0, 20) == 0.0
    assert observed_fraction_at_least([a, b, c], 0, 0, 20) == 1.0
    assert observed_fraction_at_least([a, b, c], 1, 5, 15) == pytest.approx(0.5)
    assert observed_fraction_at_least([], 1, 0, 20) == 0.0
    with pytest.raises(ValueError):
        observed_fraction_at_least([a], 1, 5, 5)


# ---------------------------------------------------------------- the report


def _dumps(report: object) -> str:
    return json.dumps(report, allow_nan=False)


def test_report_with_no_events() -> None:
    histories: Histories = {"a": (0.0, [], "healthy"), "b": (1800.0, [], "cooldown")}
    report = pool_report(histories, 3600.0, k_min=1)
    _dumps(report)
    assert report["window"] == {"start": 0.0, "end": 3600.0, "seconds": 3600.0}
    a = report["backends"]["a"]
    assert (a["failures"], a["repairs"], a["up_s"], a["down_s"]) == (0, 0, 3600.0, 0.0)
    assert a["mtbf_s"] is None and a["mttr_s"] is None
    assert a["lambda_per_hour"]["rate"] == 0.0
    assert a["lambda_per_hour"]["high"] == pytest.approx(-math.log(0.025), rel=1e-9)  # 3.69 per hour of up time
    assert a["mu_per_hour"] == {"rate": 0.0, "low": 0.0, "high": None}
    assert a["availability"] == a["observed_availability"] == 1.0
    pool = report["pool"]
    assert pool["n"] == 2 and pool["model_basis"] == "no-failures"
    assert pool["lambda_per_hour"]["high"] == pytest.approx(-math.log(0.025) / 1.5, rel=1e-9)  # 5400 s of up time
    assert pool["replica_availability"] == 1.0 and pool["p_at_least_k"] == 1.0
    assert pool["expected_downtime_per_year_s"] == 0.0
    assert pool["mean_time_to_pool_failure_s"] is None  # infinite
    assert pool["replicas_needed_for_target"] == 1
    assert pool["observed_fraction_at_least_k"] == 1.0
    assert report["pool"]["observed_fraction_at_least_k"] == 1.0
    assert report["assumptions"] and all(isinstance(s, str) for s in report["assumptions"])


def test_report_with_no_data() -> None:
    cases: list[Histories] = [{}, {"a": (100.0, [], "disabled")}]
    for histories in cases:
        report = pool_report(histories, 100.0, k_min=2, crews=1)
        _dumps(report)
        pool = report["pool"]
        assert pool["model_basis"] == "no-data"
        assert pool["p_at_least_k"] is None and pool["observed_fraction_at_least_k"] is None
    report = pool_report({"a": (0.0, [], "disabled")}, 100.0, k_min=1)
    assert report["backends"]["a"]["admin_s"] == 100.0
    assert report["backends"]["a"]["observed_availability"] is None
    assert report["pool"]["n"] == 0 and report["pool"]["observed_fraction_at_least_k"] == 0.0


def test_report_with_events() -> None:
    a: Transitions = [(1000.0, "healthy", "unhealthy"), (1100.0, "unhealthy", "healthy")]
    a += [(3000.0, "healthy", "ejected"), (3300.0, "ejected", "healthy")]
    b: Transitions = [(2000.0, "healthy", "unhealthy"), (2200.0, "unhealthy", "healthy")]
    b += [(3500.0, "healthy", "draining")]  # draining now: out of n, and its admin time is excluded
    c: Transitions = []
    now = 4000.0
    histories: Histories = {"a": (0.0, a, "healthy"), "b": (0.0, b, "draining"), "c": (0.0, c, "healthy")}
    report = pool_report(histories, now, k_min=2, crews=1, target=0.999)
    _dumps(report)
    ra, rb = report["backends"]["a"], report["backends"]["b"]
    assert (ra["failures"], ra["repairs"], ra["up_s"], ra["down_s"]) == (2, 2, 3600.0, 400.0)
    assert ra["mtbf_s"] == 1800.0 and ra["mttr_s"] == 200.0
    assert ra["availability"] == pytest.approx(0.9) and ra["observed_availability"] == pytest.approx(0.9)
    assert ra["lambda_per_hour"]["rate"] == pytest.approx(2.0) and ra["mu_per_hour"]["rate"] == pytest.approx(18.0)
    assert (rb["up_s"], rb["down_s"], rb["admin_s"]) == (3300.0, 200.0, 500.0)

    pool = report["pool"]
    lam, mu = 3 / (3600.0 + 3300.0 + 4000.0), 3 / 600.0  # pooled: total events / total exposure
    assert pool["model_basis"] == "estimated" and pool["n"] == 2
    assert pool["lambda_per_hour"]["rate"] == pytest.approx(lam * 3600)
    assert pool["mu_per_hour"]["rate"] == pytest.approx(mu * 3600)
    assert pool["replica_availability"] == pytest.approx(mu / (lam + mu))
    p_k = p_at_least(pool_distribution(2, lam, mu, 1), 2)
    assert pool["p_at_least_k"] == pytest.approx(p_k)
    assert pool["expected_downtime_per_year_s"] == pytest.approx(downtime_per_year(p_k))
    assert pool["mean_time_to_pool_failure_s"] == pytest.approx(mean_time_to_failure(2, lam, mu, 2, 1))
    assert pool["replicas_needed_for_target"] == replicas_needed(0.999, 2, lam, mu, 1)
    # measured: a's and b's down and admin spans never overlap, so 2 of 3 were always up ...
    assert pool["observed_fraction_at_least_k"] == 1.0
    # ... and all 3 except during a's and b's down time and b's admin time
    down_or_admin = 400.0 + 200.0 + 500.0
    all_three = pool_report(histories, now, k_min=3)["pool"]["observed_fraction_at_least_k"]
    assert all_three == pytest.approx((now - down_or_admin) / now)


def test_report_failures_without_repairs_falls_back_to_observed() -> None:
    histories: Histories = {
        "a": (0.0, [(3000.0, "healthy", "unhealthy")], "unhealthy"),
        "b": (0.0, [], "healthy"),
    }
    report = pool_report(histories, 4000.0, k_min=1)
    _dumps(report)
    a = report["backends"]["a"]
    assert a["availability_basis"] == "observed" and a["availability"] == pytest.approx(0.75)
    assert a["mttr_s"] is None
    pool = report["pool"]
    assert pool["model_basis"] == "observed-availability"
    observed = 7000.0 / 8000.0
    assert pool["replica_availability"] == pytest.approx(observed)
    assert pool["model_mu_per_hour"] == pytest.approx(3600.0 / 1000.0)  # 1 failure / 1000 s down
    assert pool["mu_per_hour"]["rate"] == 0.0 and pool["mu_per_hour"]["high"] is not None
    assert 0.0 < pool["p_at_least_k"] < 1.0
    assert pool["mean_time_to_pool_failure_s"] is not None


def test_report_backend_never_up() -> None:
    # started down and never recovered: no failure was observed, but the model must not claim 100%
    histories: Histories = {"dead": (0.0, [], "unhealthy"), "ok": (0.0, [], "healthy")}
    report = pool_report(histories, 1000.0, k_min=1)
    _dumps(report)
    pool = report["pool"]
    assert pool["model_basis"] == "no-failures"
    assert pool["replica_availability"] == pytest.approx(0.5)
    assert pool["p_at_least_k"] == pytest.approx(0.75)  # binomial(2, 1/2)
    assert pool["mean_time_to_pool_failure_s"] is None
    assert pool["observed_fraction_at_least_k"] == 1.0
    # the state before the first transition is its from_state, not "healthy"
    report = pool_report({"x": (0.0, [(10.0, "unhealthy", "healthy")], "healthy")}, 20.0, k_min=1)
    assert report["backends"]["x"]["down_s"] == 10.0 and report["backends"]["x"]["repairs"] == 1

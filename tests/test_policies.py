"""Request policies: budgets, retry rules, hedge delay and brownout guard, the admission queue.

The synchronous policies run on a FakeClock; the queue tests run one event loop per test and
observe results by awaiting the waiters' tasks, never by sleeping.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from haproxy_ai.clock import FakeClock
from haproxy_ai.outcome import Outcome
from haproxy_ai.policies import (
    PRIORITIES,
    BrownoutGuard,
    Budget,
    HedgeDelay,
    PriorityWaitQueue,
    QueueTimeout,
    RetryPolicy,
    Shed,
)
from haproxy_ai.settings import BudgetSettings, HedgeSettings, RetrySettings, parse_settings

# --- helpers ---------------------------------------------------------------------------------


def _retry_settings(**retry: Any) -> RetrySettings:
    return parse_settings({"backends": ["http://a:1"], "retry": retry}).retry


def _hedge_settings(**hedge: Any) -> HedgeSettings:
    return parse_settings({"backends": ["http://a:1"], "hedge": hedge}).hedge


def _budget_settings(**budget: Any) -> BudgetSettings:
    return _retry_settings(budget=budget).budget


def _budget(clock: FakeClock, **budget: Any) -> Budget:
    return Budget(_budget_settings(**budget), clock)


def _drain(budget: Budget, limit: int = 100_000) -> int:
    """Spend until refused; the limit only turns a broken budget into a failure, not a hang."""
    spent = 0
    while spent < limit and budget.try_spend():
        spent += 1
    return spent


# --- Budget ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "min_per_second", "window", "start"),
    [
        (0.2, 10.0, 10.0, 1000.0),
        (0.2, 10.0, 10.0, 1000.37),  # not aligned to a bucket edge
        (0.5, 0.0, 10.0, 1003.3),
        (0.1, 1.0, 5.0, 1000.9),
        (0.0, 2.0, 1.0, 1000.05),
        (1.0, 0.0, 30.0, 1000.0),
    ],
)
def test_budget_spends_at_most_ratio_of_deposits_plus_floor(
    ratio: float, min_per_second: float, window: float, start: float
) -> None:
    clock = FakeClock(start=start)
    budget = _budget(clock, ratio=ratio, min_per_second=min_per_second, window=f"{window}s")
    n = 1000
    spent = 0
    for _ in range(n):  # N deposits spread over (just under) one window, spending greedily
        budget.deposit()
        spent += _drain(budget)
        clock.advance(window / n * 0.999)
    bound = ratio * n + min_per_second * window
    assert spent <= bound + 1
    # ... and the budget is not stingier than promised either.
    assert spent >= math.floor(bound + 1e-9) - 1
    assert budget.available() < 1


def test_budget_holds_over_every_sliding_window() -> None:
    """Over several windows of steady traffic and greedy spending, no window-long span ever
    holds more spends than ratio x (deposits in that span, widened by one bucket) + floor."""
    clock = FakeClock(start=1000.123)
    ratio, floor, window, buckets = 0.2, 2.0 * 5.0, 5.0, 10
    budget = Budget(_budget_settings(ratio=ratio, min_per_second=2.0, window="5s"), clock, buckets=buckets)
    deposits: list[float] = []
    spends: list[float] = []
    rng = random.Random(7)
    for _ in range(3000):  # ~20 windows
        clock.advance(rng.uniform(0.0, 0.067))
        budget.deposit()
        deposits.append(clock.monotonic())
        spends.extend([clock.monotonic()] * _drain(budget))
    slack = window / buckets
    for start in spends:
        in_window = sum(1 for t in spends if start <= t < start + window)
        funded = sum(1 for t in deposits if start - slack <= t < start + window)
        assert in_window <= ratio * funded + floor + 1


def test_budget_min_per_second_alone_allows_spending_without_deposits() -> None:
    clock = FakeClock()
    budget = _budget(clock, ratio=0.2, min_per_second=2.0, window="5s")
    assert budget.available() == pytest.approx(10.0)
    assert _drain(budget) == 10
    assert budget.available() == 0.0
    assert not budget.try_spend()


def test_budget_zero_everything_never_spends() -> None:
    budget = _budget(FakeClock(), ratio=0.0, min_per_second=0.0)
    for _ in range(100):
        budget.deposit()
    assert not budget.try_spend()
    assert budget.available() == 0.0


def test_budget_refusal_records_nothing() -> None:
    clock = FakeClock()
    budget = _budget(clock, ratio=0.5, min_per_second=0.0)
    budget.deposit()
    assert budget.available() == pytest.approx(0.5)
    for _ in range(5):
        assert not budget.try_spend()
    assert budget.available() == pytest.approx(0.5)  # refusals did not push it negative
    budget.deposit()
    assert budget.try_spend()
    assert budget.available() == pytest.approx(0.0)


def test_budget_spends_age_out_after_the_window() -> None:
    clock = FakeClock(start=1000.4)
    budget = _budget(clock, ratio=0.0, min_per_second=1.0, window="10s")
    assert _drain(budget) == 10
    clock.advance(5.0)
    assert not budget.try_spend()  # half a window later the spends still count
    clock.advance(5.0 + 1.0)  # window + one bucket: the spends are all older than the window
    assert budget.available() == pytest.approx(10.0)
    assert _drain(budget) == 10


def test_budget_deposits_age_out_after_the_window() -> None:
    clock = FakeClock()
    budget = _budget(clock, ratio=1.0, min_per_second=0.0, window="10s")
    for _ in range(5):
        budget.deposit()
    assert budget.available() == pytest.approx(5.0)
    clock.advance(9.0)
    assert budget.available() == pytest.approx(5.0)
    clock.advance(2.0)
    assert budget.available() == 0.0
    clock.advance(1000.0)  # a long idle gap resets cleanly too
    budget.deposit()
    assert budget.available() == pytest.approx(1.0)


# --- RetryPolicy.condition -------------------------------------------------------------------

_BEFORE_HEADERS = {
    Outcome.CONNECT_FAILED: "connect_failed",
    Outcome.CONNECT_TIMEOUT: "connect_timeout",
    Outcome.RESET: "reset",
    Outcome.FIRST_BYTE_TIMEOUT: "first_byte_timeout",
}


@pytest.mark.parametrize(
    "on",
    [
        ["connect_failed", "connect_timeout", "reset", "first_byte_timeout"],
        ["connect_failed"],
        ["reset", "first_byte_timeout"],
        [],
    ],
)
@pytest.mark.parametrize("outcome", list(Outcome))
def test_retry_condition_errors_map_through_on(on: list[str], outcome: Outcome) -> None:
    policy = RetryPolicy(_retry_settings(retry_on=on), random.Random(0))
    name = _BEFORE_HEADERS.get(outcome)
    expected = name if name in on else None
    assert policy.condition(outcome, None) == expected


@pytest.mark.parametrize(
    ("statuses", "outcome", "status", "expected"),
    [
        # defaults: 500, 502-504
        (None, Outcome.SERVER_ERROR, 500, "status_500"),
        (None, Outcome.SERVER_ERROR, 501, None),
        (None, Outcome.SERVER_ERROR, 502, "status_502"),
        (None, Outcome.SERVER_ERROR, 503, "status_503"),
        (None, Outcome.SERVER_ERROR, 504, "status_504"),
        (None, Outcome.SERVER_ERROR, 505, None),
        (None, Outcome.THROTTLED, 429, None),  # 429 is opt-in
        (None, Outcome.CLIENT_ERROR, 404, None),
        (None, Outcome.CLIENT_ERROR, 400, None),
        (None, Outcome.SUCCESS, 200, None),
        # 429 opted in, plus a whole class
        (["429", "5xx"], Outcome.THROTTLED, 429, "status_429"),
        (["429", "5xx"], Outcome.SERVER_ERROR, 501, "status_501"),
        (["429", "5xx"], Outcome.CLIENT_ERROR, 408, None),
        (["408", "429"], Outcome.CLIENT_ERROR, 408, "status_408"),
        (["408", "429"], Outcome.SERVER_ERROR, 503, None),
        # a status in the list never revives an outcome that is not a plain response
        (["2xx", "5xx"], Outcome.SUCCESS, 200, None),
        (["5xx"], Outcome.IDLE_TIMEOUT, 500, None),
        (["5xx"], Outcome.TOTAL_TIMEOUT, 500, None),
        (["5xx"], Outcome.CLIENT_GONE, 500, None),
        (["5xx"], Outcome.RESET, 200, None),  # a reset after headers is mid-body
        (["5xx"], Outcome.SERVER_ERROR, None, None),
    ],
)
def test_retry_condition_statuses(
    statuses: list[str] | None, outcome: Outcome, status: int | None, expected: str | None
) -> None:
    settings = _retry_settings() if statuses is None else _retry_settings(statuses=statuses)
    assert RetryPolicy(settings, random.Random(0)).condition(outcome, status) == expected


@pytest.mark.parametrize("outcome", [Outcome.IDLE_TIMEOUT, Outcome.TOTAL_TIMEOUT, Outcome.CLIENT_GONE])
def test_retry_condition_after_headers_failures_are_never_retried(outcome: Outcome) -> None:
    policy = RetryPolicy(_retry_settings(statuses=["1xx", "2xx", "3xx", "4xx", "5xx"]), random.Random(0))
    assert policy.condition(outcome, None) is None
    assert policy.condition(outcome, 200) is None


# --- RetryPolicy.backoff ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "cap", "retry_number", "expected_cap"),
    [
        ("25ms", "250ms", 1, 0.025),
        ("25ms", "250ms", 2, 0.05),
        ("25ms", "250ms", 3, 0.1),
        ("25ms", "250ms", 4, 0.2),
        ("25ms", "250ms", 5, 0.25),  # 0.4 capped
        ("25ms", "250ms", 9, 0.25),
        ("25ms", "250ms", 0, 0.025),  # below 1 counts as the first retry
        ("100ms", "1s", 3, 0.4),
        ("1s", "100ms", 1, 0.1),  # the cap wins from the start
    ],
)
def test_retry_backoff_full_jitter_bounds(base: str, cap: str, retry_number: int, expected_cap: float) -> None:
    policy = RetryPolicy(_retry_settings(backoff_base=base, backoff_max=cap), random.Random(1234))
    draws = [policy.backoff(retry_number) for _ in range(4000)]
    assert all(0.0 <= d <= expected_cap + 1e-12 for d in draws)
    # Full jitter spreads over the whole range: near both ends, mean near the middle.
    assert min(draws) < 0.02 * expected_cap
    assert max(draws) > 0.98 * expected_cap
    assert sum(draws) / len(draws) == pytest.approx(expected_cap / 2, rel=0.05)


def test_retry_backoff_zero_base_and_huge_retry_number() -> None:
    assert RetryPolicy(_retry_settings(backoff_base=0), random.Random(0)).backoff(3) == 0.0
    huge = RetryPolicy(_retry_settings(), random.Random(0)).backoff(10_000)
    assert 0.0 <= huge <= 0.25


# --- RetryPolicy.decide ----------------------------------------------------------------------

_YES: dict[str, Any] = {
    "outcome": Outcome.CONNECT_FAILED,
    "status": None,
    "attempts_made": 1,
    "method": "POST",
    "opt_out": False,
    "replayable": True,
    "remaining": math.inf,
    "retry_after": None,
}


def _empty_budget() -> Budget:
    return _budget(FakeClock(), ratio=0.0, min_per_second=0.0)


# Each row breaks its own check *and* every later one, so only the order picks the reason.
_DECIDE_ROWS: list[tuple[dict[str, Any], dict[str, Any], bool, str]] = [
    (
        {"enabled": False},
        {"opt_out": True, "method": "PATCH", "replayable": False, "outcome": Outcome.SUCCESS, "status": 200},
        True,
        "disabled",
    ),
    ({}, {"opt_out": True, "method": "PATCH", "replayable": False, "outcome": Outcome.SUCCESS}, True, "opt_out"),
    ({}, {"method": "PATCH", "replayable": False, "outcome": Outcome.SUCCESS}, True, "method_not_retryable"),
    ({}, {"method": "post", "outcome": Outcome.SUCCESS}, True, "method_not_retryable"),  # case-sensitive
    ({}, {"replayable": False, "outcome": Outcome.SUCCESS, "attempts_made": 3}, True, "body_not_replayable"),
    ({}, {"outcome": Outcome.SUCCESS, "status": 200, "attempts_made": 3, "remaining": 0.0}, True, "not_retryable"),
    ({}, {"outcome": Outcome.IDLE_TIMEOUT, "attempts_made": 3}, True, "not_retryable"),
    ({}, {"attempts_made": 3, "remaining": 0.0}, True, "attempts_exhausted"),
    ({"attempts": 1}, {}, True, "attempts_exhausted"),
    ({}, {"remaining": 0.0}, True, "deadline"),
    ({}, {"remaining": -1.0}, True, "deadline"),
    ({}, {}, True, "budget_exhausted"),
]


@pytest.mark.parametrize(("retry", "overrides", "empty_budget", "reason"), _DECIDE_ROWS)
def test_retry_decide_reasons_in_order(
    retry: dict[str, Any], overrides: dict[str, Any], empty_budget: bool, reason: str
) -> None:
    policy = RetryPolicy(_retry_settings(**retry), random.Random(0))
    clock = FakeClock()
    budget = _empty_budget() if empty_budget else _budget(clock)
    before = budget.available()
    decision = policy.decide(**{**_YES, **overrides}, budget=budget)
    assert (decision.retry, decision.delay, decision.reason) == (False, 0.0, reason)
    assert budget.available() == before  # a "no" never spends budget


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({}, "connect_failed"),
        ({"outcome": Outcome.CONNECT_TIMEOUT}, "connect_timeout"),
        ({"outcome": Outcome.RESET}, "reset"),
        ({"outcome": Outcome.FIRST_BYTE_TIMEOUT, "attempts_made": 2}, "first_byte_timeout"),
        ({"outcome": Outcome.SERVER_ERROR, "status": 503}, "status_503"),
        ({"method": "GET", "remaining": 5.0}, "connect_failed"),
    ],
)
def test_retry_decide_yes_spends_one(overrides: dict[str, Any], reason: str) -> None:
    budget = _budget(FakeClock(), ratio=0.0, min_per_second=1.0, window="10s")
    decision = RetryPolicy(_retry_settings(), random.Random(0)).decide(**{**_YES, **overrides}, budget=budget)
    assert decision.retry
    assert decision.reason == reason
    assert 0.0 <= decision.delay <= 0.25
    assert budget.available() == pytest.approx(9.0)


def test_retry_decide_delay_is_backoff_of_attempts_made() -> None:
    """attempts_made counts attempts so far, so the first retry (after 1 attempt) uses
    retry number 1, and the n-th retry uses n."""
    settings = _retry_settings(attempts=5)
    for attempts_made in (1, 2, 3, 4):
        deciding = RetryPolicy(settings, random.Random(99))
        reference = RetryPolicy(settings, random.Random(99))
        decision = deciding.decide(**{**_YES, "attempts_made": attempts_made}, budget=_budget(FakeClock()))
        assert decision.delay == reference.backoff(attempts_made)
        assert decision.delay <= min(0.25, 0.025 * 2 ** (attempts_made - 1))


def test_retry_decide_retry_after_does_not_add_to_the_delay() -> None:
    settings = _retry_settings()
    plain = RetryPolicy(settings, random.Random(5)).decide(**_YES, budget=_budget(FakeClock()))
    told = RetryPolicy(settings, random.Random(5)).decide(
        **{**_YES, "retry_after": 30.0, "remaining": 1.0}, budget=_budget(FakeClock())
    )
    assert told.retry
    assert told.delay == plain.delay


def test_retry_decide_deadline_compares_the_backoff_with_the_time_left() -> None:
    settings = _retry_settings(backoff_base="100ms", backoff_max="100ms")
    delay = RetryPolicy(settings, random.Random(3)).backoff(1)
    for remaining, expected in ((delay + 1e-6, True), (delay, False), (delay / 2, False)):
        budget = _budget(FakeClock())
        decision = RetryPolicy(settings, random.Random(3)).decide(**{**_YES, "remaining": remaining}, budget=budget)
        assert decision.retry is expected
        assert decision.reason == ("connect_failed" if expected else "deadline")


def test_retry_decide_budget_runs_out_then_refuses() -> None:
    clock = FakeClock()
    budget = _budget(clock, ratio=0.0, min_per_second=0.3, window="10s")  # three retries per window
    policy = RetryPolicy(_retry_settings(), random.Random(0))
    reasons = [policy.decide(**_YES, budget=budget).reason for _ in range(5)]
    assert reasons == ["connect_failed"] * 3 + ["budget_exhausted"] * 2
    clock.advance(11.0)
    assert policy.decide(**_YES, budget=budget).retry


# --- HedgeDelay ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "min_delay", "expected"),
    [("200ms", "50ms", 0.2), ("10ms", "50ms", 0.05), ("1s", "0s", 1.0)],
)
def test_hedge_delay_fixed(delay: str, min_delay: str, expected: float) -> None:
    hedge = HedgeDelay(_hedge_settings(delay=delay, min_delay=min_delay), FakeClock())
    assert hedge.delay() == pytest.approx(expected)  # no samples needed
    hedge.observe(5.0)
    assert hedge.delay() == pytest.approx(expected)


@pytest.mark.parametrize(("percentile", "expected"), [("p50", 0.10), ("p95", 0.19), ("p99", 0.20), ("p5", 0.01)])
def test_hedge_delay_percentile_nearest_rank(percentile: str, expected: float) -> None:
    hedge = HedgeDelay(_hedge_settings(delay=percentile, min_delay="0s", min_samples=20), FakeClock())
    for i in range(20, 0, -1):  # order of arrival must not matter
        hedge.observe(i / 100)
    assert hedge.delay() == pytest.approx(expected)


def test_hedge_delay_waits_for_min_samples() -> None:
    hedge = HedgeDelay(_hedge_settings(delay="p95", min_delay="0s", min_samples=20), FakeClock())
    for i in range(1, 20):
        hedge.observe(i / 100)
        assert hedge.delay() is None
    for bad in (math.nan, -1.0, math.inf):  # ignored: they do not count toward min_samples
        hedge.observe(bad)
    assert hedge.delay() is None
    hedge.observe(0.20)
    assert hedge.delay() == pytest.approx(0.19)


def test_hedge_delay_min_delay_floors_the_percentile() -> None:
    hedge = HedgeDelay(_hedge_settings(delay="p95", min_delay="50ms", min_samples=5), FakeClock())
    for _ in range(5):
        hedge.observe(0.001)
    assert hedge.delay() == pytest.approx(0.05)


def test_hedge_delay_caches_for_refresh_seconds() -> None:
    clock = FakeClock()
    hedge = HedgeDelay(_hedge_settings(delay="p95", min_delay="0s", min_samples=20), clock, size=20, refresh=1.0)
    for i in range(1, 21):
        hedge.observe(i / 100)
    assert hedge.delay() == pytest.approx(0.19)
    for _ in range(20):  # the ring now holds only the slow samples
        hedge.observe(5.0)
    assert hedge.delay() == pytest.approx(0.19)  # cached
    clock.advance(0.999)
    assert hedge.delay() == pytest.approx(0.19)  # still cached
    clock.advance(0.001)
    assert hedge.delay() == pytest.approx(5.0)  # recomputed from the new samples


def test_hedge_delay_ring_keeps_only_the_last_size_samples() -> None:
    clock = FakeClock()
    hedge = HedgeDelay(_hedge_settings(delay="p50", min_delay="0s", min_samples=1), clock, size=10, refresh=1.0)
    for _ in range(10):
        hedge.observe(9.0)
    for i in range(1, 11):
        hedge.observe(i / 10)
    clock.advance(1.0)
    assert hedge.delay() == pytest.approx(0.5)  # the 9.0s were overwritten
    for _ in range(3):
        hedge.observe(9.0)  # overwrite the three oldest (0.1-0.3): p50 of 0.4..1.0 + 3x9.0 is 0.8
    clock.advance(1.0)
    assert hedge.delay() == pytest.approx(0.8)


# --- BrownoutGuard ---------------------------------------------------------------------------


def test_brownout_needs_min_requests() -> None:
    guard = BrownoutGuard(_hedge_settings(brownout_threshold=0.5), FakeClock(), min_requests=20)
    for _ in range(19):
        guard.record(would_hedge=True)
        assert guard.allows()
    guard.record(would_hedge=True)
    assert not guard.allows()


@pytest.mark.parametrize(
    ("threshold", "would_hedge", "total", "allows"),
    [
        (0.5, 10, 20, True),  # exactly at the threshold is not over it
        (0.5, 11, 20, False),
        (0.25, 5, 20, True),
        (0.25, 6, 20, False),
        (1.0, 40, 40, True),  # a threshold of 1 never trips
        (0.5, 0, 100, True),
    ],
)
def test_brownout_threshold(threshold: float, would_hedge: int, total: int, allows: bool) -> None:
    guard = BrownoutGuard(_hedge_settings(brownout_threshold=threshold), FakeClock(), min_requests=20)
    for i in range(total):
        guard.record(would_hedge=i < would_hedge)
    assert guard.allows() is allows


def test_brownout_window_ages_out() -> None:
    clock = FakeClock(start=1000.5)
    guard = BrownoutGuard(_hedge_settings(brownout_threshold=0.5), clock, window=10.0, min_requests=20)
    for _ in range(20):
        guard.record(would_hedge=True)
    assert not guard.allows()
    clock.advance(6.0)
    for _ in range(20):  # healthy traffic dilutes the slow burst to exactly 0.5
        guard.record(would_hedge=False)
    assert guard.allows()
    clock.advance(5.0)  # the slow burst ages out; 20 healthy requests remain
    assert guard.allows()
    for _ in range(21):
        guard.record(would_hedge=True)
    assert not guard.allows()
    clock.advance(11.0)  # everything ages out: below min_requests again
    assert guard.allows()


# --- PriorityWaitQueue -----------------------------------------------------------------------


def _run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=5.0))


async def _until(predicate: Callable[[], bool]) -> None:
    """Yield to the loop until the waiters started so far have enqueued (no real sleeping)."""
    for _ in range(100):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def _next_done(pending: set[asyncio.Task[str]]) -> str:
    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1, "one wake_one must release exactly one waiter"
    task = done.pop()
    pending.discard(task)
    return task.result()


async def _waiter(queue: PriorityWaitQueue, label: str, priority: int, deadline: float, patience: float = 5.0) -> str:
    await queue.wait(priority, deadline, patience)
    return label


def test_queue_serves_priority_then_deadline_then_arrival() -> None:
    async def main() -> None:
        queue = PriorityWaitQueue(max_size=10)
        arrivals = [
            ("low", PRIORITIES["low"], 1.0),
            ("normal-late", PRIORITIES["normal"], 9.0),
            ("high-first", PRIORITIES["high"], 7.0),
            ("normal-early", PRIORITIES["normal"], 3.0),
            ("high-second", PRIORITIES["high"], 7.0),  # same key as high-first, arrived later
            ("normal-early-2", PRIORITIES["normal"], 3.0),
            ("normal-no-deadline", PRIORITIES["normal"], math.inf),
        ]
        pending: set[asyncio.Task[str]] = set()
        for label, priority, deadline in arrivals:
            pending.add(asyncio.create_task(_waiter(queue, label, priority, deadline)))
            await _until(lambda: queue.depth == len(pending))  # fix the arrival order
        assert queue.depth_by_priority() == {0: 2, 1: 4, 2: 1}
        order = []
        while pending:
            assert queue.wake_one()
            order.append(await _next_done(pending))
        assert order == [
            "high-first",
            "high-second",
            "normal-early",
            "normal-early-2",
            "normal-late",
            "normal-no-deadline",
            "low",
        ]
        assert not queue.wake_one()
        assert queue.depth == 0
        assert queue.depth_by_priority() == {0: 0, 1: 0, 2: 0}

    _run(main)


@pytest.mark.parametrize(
    ("newcomer", "shed", "shed_priority"),
    [
        ((2, 1.0), "newcomer", "low"),  # lower priority than everyone queued: refused at once
        ((1, 9.0), "newcomer", "normal"),  # ties with the worst queued: the newest goes
        ((1, 10.0), "newcomer", "normal"),  # same priority, later deadline
        ((1, 7.0), "late", "normal"),  # same priority, earlier deadline: the latest deadline goes
        ((0, 100.0), "late", "normal"),  # higher priority: the worst queued goes
    ],
)
def test_queue_sheds_the_worst_when_full(newcomer: tuple[int, float], shed: str, shed_priority: str) -> None:
    async def main() -> None:
        queue = PriorityWaitQueue(max_size=2)
        early = asyncio.create_task(_waiter(queue, "early", 1, 5.0))
        late = asyncio.create_task(_waiter(queue, "late", 1, 9.0))
        await _until(lambda: queue.depth == 2)
        incoming = asyncio.create_task(_waiter(queue, "newcomer", *newcomer))
        victim = {"newcomer": incoming, "late": late}[shed]
        with pytest.raises(Shed) as info:
            await victim
        assert info.value.priority == shed_priority
        assert queue.depth == 2  # full again: the survivors (and the newcomer, if it stayed)
        survivors = {early, late, incoming} - {victim}
        while survivors:
            assert queue.wake_one()
            await _next_done(survivors)
        assert not queue.wake_one()

    _run(main)


def test_queue_max_size_zero_refuses_at_once() -> None:
    async def main() -> None:
        queue = PriorityWaitQueue(max_size=0)
        with pytest.raises(Shed) as info:
            await queue.wait(PRIORITIES["high"], 0.0, 5.0)
        assert info.value.priority == "high"
        assert queue.depth == 0
        assert not queue.wake_one()

    _run(main)


def test_queue_timeout_removes_the_entry() -> None:
    async def main() -> None:
        queue = PriorityWaitQueue(max_size=10)
        patient = asyncio.create_task(_waiter(queue, "patient", 2, 1.0))
        await _until(lambda: queue.depth == 1)
        with pytest.raises(QueueTimeout):
            await queue.wait(PRIORITIES["high"], 0.0, 0.05)
        assert queue.depth == 1
        assert queue.depth_by_priority()[0] == 0
        assert queue.wake_one()  # the timed-out high entry is skipped: the turn goes to "patient"
        assert await patient == "patient"
        assert not queue.wake_one()

    _run(main)


def test_queue_cancellation_removes_the_entry() -> None:
    async def main() -> None:
        queue = PriorityWaitQueue(max_size=10)
        task = asyncio.create_task(_waiter(queue, "gone", 1, 1.0))
        await _until(lambda: queue.depth == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert queue.depth == 0
        assert queue.depth_by_priority()[1] == 0
        assert not queue.wake_one()

    _run(main)


def test_queue_wake_one_skips_cancelled_waiters() -> None:
    async def main() -> None:
        queue = PriorityWaitQueue(max_size=10)
        first = asyncio.create_task(_waiter(queue, "first", 0, 1.0))
        second = asyncio.create_task(_waiter(queue, "second", 1, 1.0))
        await _until(lambda: queue.depth == 2)
        first.cancel()  # cancelled but not yet resumed: its entry is still in the heap
        assert queue.wake_one()
        assert await second == "second"
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not queue.wake_one()

    _run(main)


def test_queue_woken_then_cancelled_passes_the_turn_on() -> None:
    async def main() -> None:
        queue = PriorityWaitQueue(max_size=10)
        first = asyncio.create_task(_waiter(queue, "first", 0, 1.0))
        second = asyncio.create_task(_waiter(queue, "second", 1, 1.0))
        await _until(lambda: queue.depth == 2)
        assert queue.wake_one()  # the turn goes to "first" ...
        first.cancel()  # ... which is cancelled before it can resume
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second == "second"  # no second wake_one needed
        assert queue.depth == 0

    _run(main)


def test_queue_stays_compact_under_churn() -> None:
    async def main() -> None:
        queue = PriorityWaitQueue(max_size=1000)
        for _ in range(50):
            tasks = [asyncio.create_task(_waiter(queue, "x", i % 3, float(i))) for i in range(20)]
            await _until(lambda: queue.depth == 20)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert queue.depth == 0
        # 1000 dead entries were made without a single wake_one; they must not all be kept.
        assert len(queue._best) + len(queue._worst) < 200
        assert not queue.wake_one()

    _run(main)

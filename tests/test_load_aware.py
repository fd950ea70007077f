"""The load-aware balancer over scraped replica metrics: pure, table-driven, fake clock, no I/O."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from haproxy_ai.backends import Backend, ReplicaLoad
from haproxy_ai.balancers import LoadAware, make_balancer
from haproxy_ai.clock import FakeClock
from haproxy_ai.settings import BalancerSettings, ScrapeSettings

SCRAPING = ScrapeSettings(enabled=True, stale_after=1.0, max_waiting=8.0, max_kv_cache=0.9)


def _backends(*weights: int) -> list[Backend]:
    return [Backend(f"b{i}", f"http://127.0.0.1:{9000 + i}", w) for i, w in enumerate(weights)]


def _weights(backends: Sequence[Backend]) -> list[float]:
    return [float(b.weight) for b in backends]


def _scrape(
    backend: Backend,
    clock: FakeClock,
    *,
    waiting: float | None = 0.0,
    kv: float | None = 0.1,
    running: float | None = 1.0,
) -> None:
    """What the scraper writes after a successful scrape."""
    backend.stats.load = ReplicaLoad(clock.monotonic(), waiting, running, kv, backend.stats.inflight)


@pytest.mark.parametrize(
    ("case", "load", "age", "inflight", "expected"),
    [
        ("never scraped", None, 0.0, 0, True),
        ("fresh and idle", (0.0, 0.1, 0), 0.0, 0, False),
        ("exactly stale_after old is still fresh", (0.0, 0.1, 0), 1.0, 0, False),
        ("older than stale_after", (0.0, 0.1, 0), 1.001, 0, True),
        ("queue at max_waiting", (8.0, 0.1, 0), 0.0, 0, True),
        ("queue just under max_waiting", (7.0, 0.1, 0), 0.0, 0, False),
        ("kv cache at max_kv_cache", (0.0, 0.9, 0), 0.0, 0, True),
        ("kv cache not exported", (0.0, None, 0), 0.0, 0, False),
        ("queue not exported, proxy sent 8 since", (None, 0.1, 0), 0.0, 8, True),
        ("7 queued + 1 sent since the scrape", (7.0, 0.1, 2), 0.0, 3, True),
        ("7 queued, requests finished since the scrape", (7.0, 0.1, 5), 0.0, 1, False),
    ],
)
def test_saturated(
    case: str, load: tuple[float | None, float | None, int] | None, age: float, inflight: int, expected: bool
) -> None:
    clock = FakeClock()
    balancer = LoadAware(SCRAPING, clock=clock)
    (backend,) = _backends(1)
    if load is not None:
        waiting, kv, at_scrape = load
        backend.stats.load = ReplicaLoad(clock.monotonic(), waiting, 2.0, kv, at_scrape)
    backend.stats.inflight = inflight
    clock.advance(age)
    assert balancer.saturated(backend) is expected, case


def test_without_scraping_a_missing_load_is_not_saturation() -> None:
    balancer = LoadAware(ScrapeSettings(enabled=False), clock=FakeClock())
    (backend,) = _backends(1)
    backend.stats.inflight = 100
    assert not balancer.saturated(backend)


@pytest.mark.parametrize(
    ("case", "a", "b", "expected"),
    [
        # (waiting, kv, proxy in-flight) per replica; both scraped now with inflight_at_scrape = inflight.
        ("shorter queue wins", (3.0, 0.2, 0), (1.0, 0.2, 0), "b"),
        ("emptier kv cache wins", (0.0, 0.7, 0), (0.0, 0.2, 0), "b"),
        ("queue outweighs kv at equal weights", (2.0, 0.1, 0), (0.0, 0.3, 0), "b"),
        ("equal scrape: fewer proxy requests in flight wins", (1.0, 0.2, 5), (1.0, 0.2, 2), "b"),
        ("saturated by queue is skipped however cheap otherwise", (8.0, 0.0, 0), (7.0, 0.8, 9), "b"),
        ("saturated by kv is skipped", (0.0, 0.95, 0), (6.0, 0.5, 0), "b"),
    ],
)
def test_ranking(case: str, a: tuple[float, float, int], b: tuple[float, float, int], expected: str) -> None:
    clock = FakeClock()
    balancer = LoadAware(SCRAPING, clock=clock)
    backends = _backends(1, 1)
    for backend, (waiting, kv, inflight) in zip(backends, (a, b), strict=True):
        backend.stats.inflight = inflight
        _scrape(backend, clock, waiting=waiting, kv=kv)
    want = backends[0] if expected == "a" else backends[1]
    for seed in range(20):
        assert balancer.pick(backends, _weights(backends), (), random.Random(seed)) is want, case


def test_avoids_a_replica_whose_queue_grows() -> None:
    clock = FakeClock()
    balancer = LoadAware(SCRAPING, clock=clock)
    a, b = _backends(1, 1)
    rng = random.Random(0)
    queue_a = 0.0
    picks: list[Backend | None] = []
    for _ in range(10):
        # Another client floods a: its queue grows by one per scrape interval.
        queue_a += 1.0
        _scrape(a, clock, waiting=queue_a)
        _scrape(b, clock, waiting=0.0)
        picks.append(balancer.pick([a, b], [1, 1], (), rng))
        clock.advance(0.25)
    assert picks.count(b) == 10


def test_stale_load_counts_as_saturated() -> None:
    clock = FakeClock()
    balancer = LoadAware(SCRAPING, clock=clock)
    a, b = _backends(1, 1)
    _scrape(a, clock, waiting=0.0)
    _scrape(b, clock, waiting=4.0)
    assert balancer.pick([a, b], [1, 1], (), random.Random(0)) is a
    clock.advance(0.9)
    _scrape(b, clock, waiting=4.0)  # b keeps being scraped; a's scraper stalls
    clock.advance(0.2)  # a's load is now 1.1 s old
    assert balancer.saturated(a) and not balancer.saturated(b)
    assert all(balancer.pick([a, b], [1, 1], (), random.Random(s)) is b for s in range(20))


def test_requests_sent_since_the_scrape_spread_a_burst() -> None:
    clock = FakeClock()
    balancer = LoadAware(SCRAPING, clock=clock)
    backends = _backends(1, 1, 1, 1)
    for b in backends:
        _scrape(b, clock, waiting=0.0)
    # b0 looked a little less busy at the scrape; a burst of 16 arrives before the next one.
    _scrape(backends[0], clock, waiting=0.0, kv=0.0)
    rng = random.Random(1)
    counts: Counter[str] = Counter()
    for _ in range(16):
        picked = balancer.pick(backends, _weights(backends), (), rng)
        assert picked is not None
        picked.stats.start()
        counts[picked.name] += 1
    assert counts == {"b0": 4, "b1": 4, "b2": 4, "b3": 4}, counts
    # None of them is saturated yet: 4 estimated in queue each, max_waiting is 8.
    assert not any(balancer.saturated(b) for b in backends)


def test_burst_fills_replicas_then_falls_back_to_least_in_flight() -> None:
    clock = FakeClock()
    balancer = LoadAware(SCRAPING, clock=clock)
    a, b = _backends(1, 1)
    _scrape(a, clock, waiting=6.0)
    _scrape(b, clock, waiting=0.0)
    rng = random.Random(2)
    sequence = []
    for _ in range(12):
        picked = balancer.pick([a, b], [1, 1], (), rng)
        assert picked is not None
        picked.stats.start()
        sequence.append(picked.name)
    # b takes requests until its estimate reaches a's 6 queued; they then alternate until both
    # estimate max_waiting (8) queued; once all are saturated the least in flight (a) wins.
    assert sequence == ["b1"] * 6 + ["b0", "b1", "b0", "b1"] + ["b0", "b0"]
    assert balancer.saturated(a) and balancer.saturated(b)


@pytest.mark.parametrize(
    ("case", "inflight", "weights", "expected"),
    [
        ("least in flight", (5, 2, 9), (1, 1, 1), {"b1"}),
        ("in flight per weight", (5, 2, 9), (1, 1, 4), {"b2"}),  # (9+1)/4 = 2.5 < (2+1)/1
        ("ties are drawn", (3, 3, 9), (1, 1, 1), {"b0", "b1"}),
    ],
)
def test_all_saturated_falls_back_to_least_in_flight(
    case: str, inflight: tuple[int, ...], weights: tuple[int, ...], expected: set[str]
) -> None:
    balancer = LoadAware(SCRAPING, clock=FakeClock())  # nothing scraped: all saturated
    backends = _backends(*weights)
    for b, n in zip(backends, inflight, strict=True):
        b.stats.inflight = n
    picks = {balancer.pick(backends, _weights(backends), (), random.Random(s)).name for s in range(40)}  # type: ignore[union-attr]
    assert picks == expected, case


def test_exclude_is_respected() -> None:
    clock = FakeClock()
    balancer = LoadAware(SCRAPING, clock=clock)
    a, b, c = _backends(1, 1, 1)
    for backend, waiting in ((a, 0.0), (b, 1.0), (c, 2.0)):
        _scrape(backend, clock, waiting=waiting)
    rng = random.Random(0)
    assert balancer.pick([a, b, c], [1, 1, 1], [a], rng) is b
    assert balancer.pick([a, b, c], [1, 1, 1], [a, b], rng) is c
    assert balancer.pick([a, b, c], [1, 1, 1], [a, b, c], rng) is None
    assert balancer.pick([], [], (), rng) is None
    # Excluded ones are never the all-saturated fallback either.
    clock.advance(5.0)
    assert balancer.pick([a, b, c], [1, 1, 1], [a, b], rng) is c


def test_equal_idle_replicas_follow_weights() -> None:
    clock = FakeClock()
    balancer = LoadAware(SCRAPING, clock=clock)
    backends = _backends(2, 1)
    rng = random.Random(3)
    counts: Counter[str] = Counter()
    for _ in range(60):
        for b in backends:
            _scrape(b, clock, waiting=0.0, kv=0.0)  # a fresh scrape: the engines report idle
        picked = balancer.pick(backends, _weights(backends), (), rng)
        assert picked is not None
        picked.stats.start()
        counts[picked.name] += 1
    # Weighted least-connections; the draws on equal costs make it +-1, not exact.
    assert abs(counts["b0"] - 40) <= 1, counts


def test_without_scraping_it_is_weighted_least_in_flight() -> None:
    balancer = make_balancer(
        BalancerSettings(type="load_aware"), clock=FakeClock(), scrape=ScrapeSettings(enabled=False)
    )
    assert isinstance(balancer, LoadAware)
    backends = _backends(1, 1, 2)
    backends[0].stats.inflight = 3
    backends[1].stats.inflight = 1
    backends[2].stats.inflight = 4
    # Costs per weight: b0 (3 + 1) / 1, b1 (1 + 1) / 1, b2 (4 + 1) / 2.
    assert balancer.pick(backends, _weights(backends), (), random.Random(0)) is backends[1]
    assert balancer.pick(backends, _weights(backends), [backends[1]], random.Random(0)) is backends[2]


def test_score() -> None:
    clock = FakeClock()
    settings = ScrapeSettings(enabled=True, max_waiting=8.0, max_kv_cache=0.8, queue_weight=2.0, kv_cache_weight=1.0)
    balancer = LoadAware(settings, clock=clock)
    (b,) = _backends(1)
    b.stats.inflight = 3
    b.stats.load = ReplicaLoad(clock.monotonic(), 2.0, 4.0, 0.4, 1)
    # 2 * (2 + (3 - 1)) / 8 + 1 * 0.4 / 0.8 + 0.001 * (3 + 1)
    assert balancer.score(b) == pytest.approx(1.0 + 0.5 + 0.004)

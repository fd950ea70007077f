"""Balancer policies: pure, synchronous, table-driven; no I/O."""

from __future__ import annotations

import random
from collections import Counter

from haproxy_ai.backends import Backend, BackendStats
from haproxy_ai.balancers import PeakEwmaP2C, SmoothWeightedRoundRobin


def _backends(*weights: int) -> list[Backend]:
    return [Backend(f"b{i}", f"http://127.0.0.1:{9000 + i}", w) for i, w in enumerate(weights)]


def test_smooth_round_robin_interleaves_by_weight() -> None:
    a, b, c = _backends(5, 1, 1)
    rr = SmoothWeightedRoundRobin()
    picks = [rr.pick([a, b, c], [5, 1, 1], (), random.Random(0)) for _ in range(7)]
    # nginx's smooth sequence for 5:1:1 — the heavy backend's turns are spread out.
    assert [p.name for p in picks if p] == ["b0", "b0", "b1", "b0", "b2", "b0", "b0"]


def test_round_robin_exclude_and_empty() -> None:
    a, b = _backends(1, 1)
    rr = SmoothWeightedRoundRobin()
    assert all(rr.pick([a, b], [1, 1], [a], random.Random(0)) is b for _ in range(5))
    assert rr.pick([a, b], [1, 1], [a, b], random.Random(0)) is None
    assert rr.pick([], [], (), random.Random(0)) is None


def test_p2c_equal_load_follows_weights() -> None:
    backends = _backends(1, 2, 5)
    p2c = PeakEwmaP2C()
    rng = random.Random(42)
    counts = Counter(p2c.pick(backends, [b.weight for b in backends], (), rng).name for _ in range(16000))  # type: ignore[union-attr]
    for backend in backends:
        assert abs(counts[backend.name] / 16000 - backend.weight / 8) < 0.02, counts


def test_p2c_avoids_the_loaded_and_the_slow() -> None:
    fast, busy = _backends(1, 1)
    busy.stats.inflight = 10
    p2c = PeakEwmaP2C()
    rng = random.Random(1)
    assert all(p2c.pick([fast, busy], [1, 1], (), rng) is fast for _ in range(200))

    quick, slow = _backends(1, 1)
    quick.stats.observe(0.010, now=0.0)
    slow.stats.observe(0.500, now=0.0)
    assert all(p2c.pick([quick, slow], [1, 1], (), rng) is quick for _ in range(200))


def test_p2c_single_and_excluded() -> None:
    a, b = _backends(1, 1)
    p2c = PeakEwmaP2C()
    rng = random.Random(3)
    assert p2c.pick([a], [1], (), rng) is a
    assert p2c.pick([a, b], [1, 1], [b], rng) is a
    assert p2c.pick([a, b], [1, 1], [a, b], rng) is None


def test_peak_ewma_rises_at_once_and_decays_gradually() -> None:
    stats = BackendStats(decay=10.0)
    stats.observe(0.1, now=0.0)
    stats.observe(1.0, now=1.0)
    assert stats.ewma == 1.0  # a slower sample takes over immediately
    stats.observe(0.1, now=11.0)  # one decay period later: blended, not reset
    assert stats.ewma is not None and 0.1 < stats.ewma < 1.0
    assert abs(stats.ewma - (1.0 * 0.36788 + 0.1 * 0.63212)) < 1e-3

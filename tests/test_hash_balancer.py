"""Rendezvous hashing with bounded load: pure, table-driven, no I/O."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Collection, Sequence

import pytest

from haproxy_ai.backends import Backend, ReplicaLoad
from haproxy_ai.balancers import RendezvousHash, SmoothWeightedRoundRobin, make_balancer
from haproxy_ai.clock import FakeClock
from haproxy_ai.settings import BalancerSettings, ScrapeSettings

KEYS = [f"session-{i}".encode() for i in range(10_000)]


def _backends(*weights: int, prefix: str = "b") -> list[Backend]:
    return [Backend(f"{prefix}{i}", f"http://127.0.0.1:{9000 + i}", w) for i, w in enumerate(weights)]


def _weights(backends: Sequence[Backend]) -> list[float]:
    return [float(b.weight) for b in backends]


def _owners(balancer: RendezvousHash, backends: Sequence[Backend]) -> dict[bytes, Backend | None]:
    rng = random.Random(0)
    weights = _weights(backends)
    return {key: balancer.pick(backends, weights, (), rng, key) for key in KEYS}


class Recording:
    """A fallback that records its calls and answers with the last candidate."""

    def __init__(self) -> None:
        self.calls: list[bytes | None] = []

    def pick(
        self,
        candidates: Sequence[Backend],
        weights: Sequence[float],
        exclude: Collection[Backend],
        rng: random.Random,
        key: bytes | None = None,
    ) -> Backend | None:
        self.calls.append(key)
        left = [b for b in candidates if b not in exclude]
        return left[-1] if left else None


def test_same_key_same_backend_whatever_the_rng() -> None:
    backends = _backends(1, 1, 1, 1)
    balancer = RendezvousHash(0, Recording())
    for key in KEYS[:200]:
        picks = {balancer.pick(backends, _weights(backends), (), random.Random(seed), key) for seed in range(5)}
        assert len(picks) == 1
    # A fresh instance (another proxy, or after a restart) agrees: the mapping is a function of names.
    again = RendezvousHash(0, Recording())
    assert _owners(again, backends) == _owners(balancer, backends)


def test_equal_replicas_share_keys_evenly() -> None:
    backends = _backends(1, 1, 1, 1)
    counts = Counter(b.name for b in _owners(RendezvousHash(0, Recording()), backends).values() if b)
    mean = len(KEYS) / len(backends)
    assert all(abs(counts[b.name] - mean) <= 0.15 * mean for b in backends), counts


def test_weights_are_respected() -> None:
    backends = _backends(2, 1)
    counts = Counter(b.name for b in _owners(RendezvousHash(0, Recording()), backends).values() if b)
    assert abs(counts["b0"] / len(KEYS) - 2 / 3) < 0.03, counts


def test_adding_a_replica_moves_about_one_nth_and_only_to_it() -> None:
    balancer = RendezvousHash(0, Recording())
    four = _backends(1, 1, 1, 1)
    fifth = Backend("b4", "http://127.0.0.1:9004")
    before = _owners(balancer, four)
    after = _owners(balancer, [*four, fifth])
    moved = [key for key in KEYS if after[key] is not before[key]]
    assert 0.12 <= len(moved) / len(KEYS) <= 0.28
    assert all(after[key] is fifth for key in moved)


def test_removing_a_replica_moves_only_its_keys() -> None:
    balancer = RendezvousHash(0, Recording())
    backends = _backends(1, 1, 1, 1)
    gone = backends[2]
    before = _owners(balancer, backends)
    after = _owners(balancer, [b for b in backends if b is not gone])
    for key in KEYS:
        if before[key] is gone:
            assert after[key] is not gone
        else:
            assert after[key] is before[key]


def test_owner_follows_the_name_not_the_address() -> None:
    balancer = RendezvousHash(0, Recording())
    backends = _backends(1, 1, 1)
    moved = [Backend(b.name, f"http://10.0.0.{i}:8000", b.weight) for i, b in enumerate(backends)]
    by_name = {key: b.name for key, b in _owners(balancer, backends).items() if b}
    assert by_name == {key: b.name for key, b in _owners(balancer, moved).items() if b}


def test_rank_starts_with_the_owner_and_exclude_gives_the_next() -> None:
    backends = _backends(1, 1, 1, 1)
    balancer = RendezvousHash(1.25, Recording())
    rng = random.Random(0)
    for key in KEYS[:100]:
        order = balancer.rank(backends, _weights(backends), key)
        assert sorted(b.name for b in order) == [b.name for b in backends]
        for i in range(len(order)):
            assert balancer.pick(backends, _weights(backends), order[:i], rng, key) is order[i]
        assert balancer.pick(backends, _weights(backends), order, rng, key) is None


Saturated = Callable[[Backend], bool] | None


@pytest.mark.parametrize(
    ("case", "factor", "inflight", "saturated", "expected"),
    [
        # inflight: (owner, the others). T = 10: cap = ceil(1.25 * 11 / 4) = 4, the owner is past it.
        ("owner over its bound spills to the next", 1.25, (10, 0), "none", 1),
        # T = 12: cap = ceil(1.25 * 13 / 4) = 5.
        ("owner under its bound keeps the key", 1.25, (3, 3), "none", 0),
        ("owner just under its bound keeps the key", 1.25, (4, 3), "none", 0),
        # T = 14: cap = ceil(1.25 * 15 / 4) = 5.
        ("owner at its bound spills", 1.25, (5, 3), "none", 1),
        # An idle cluster: cap = ceil(1.25 * 2 / 4) = 1, so a second concurrent request spills.
        ("one request in flight already fills an idle owner", 1.25, (1, 0), "none", 1),
        ("factor 0 is unbounded", 0.0, (10, 0), "none", 0),
        ("saturated owner spills", 1.25, (0, 0), "owner", 1),
        ("saturated owner and second spill further", 1.25, (0, 0), "owner+second", 2),
        ("all saturated: the owner, as it is within bound", 1.25, (0, 0), "all", 0),
        ("all saturated: still within bound", 1.25, (10, 0), "all", 1),
        ("factor 0 and all saturated: the owner", 0.0, (10, 0), "all", 0),
    ],
)
def test_bound_and_saturation(
    case: str, factor: float, inflight: tuple[int, int], saturated: str, expected: int
) -> None:
    backends = _backends(1, 1, 1, 1)
    key = b"conversation-42"
    order = RendezvousHash(0, Recording()).rank(backends, _weights(backends), key)
    for i, b in enumerate(order):
        b.stats.inflight = inflight[0] if i == 0 else inflight[1]
    rules: dict[str, Saturated] = {
        "none": None,
        "owner": lambda b: b is order[0],
        "owner+second": lambda b: b in (order[0], order[1]),
        "all": lambda b: True,
    }
    balancer = RendezvousHash(factor, Recording(), rules[saturated])
    assert balancer.pick(backends, _weights(backends), (), random.Random(0), key) is order[expected], case


@pytest.mark.parametrize(("factor", "weights"), [(1.25, (1, 1, 1, 1)), (1.0, (1, 1, 1)), (1.5, (3, 1, 1, 1))])
def test_hot_key_never_exceeds_the_bound(factor: float, weights: tuple[int, ...]) -> None:
    backends = _backends(*weights)
    w = _weights(backends)
    total_weight = sum(w)
    balancer = RendezvousHash(factor, Recording())
    rng = random.Random(7)
    hot = b"everyone-shares-this-system-prompt"
    for step in range(400):
        key = hot if rng.random() < 0.8 else rng.choice(KEYS)  # mostly one hot key
        picked = balancer.pick(backends, w, (), rng, key)
        assert picked is not None
        picked.stats.start()
        total = step + 1
        for b, weight in zip(backends, w, strict=True):
            assert b.stats.inflight <= math.ceil(factor * total * weight / total_weight), (step, b.name)
    # The hot key was spread, not piled on its owner: the owner holds about its bounded share.
    owner = balancer.rank(backends, w, hot)[0]
    owner_share = w[backends.index(owner)] / total_weight
    assert owner.stats.inflight >= 0.8 * 400 * owner_share
    assert sum(1 for b in backends if b.stats.inflight) >= 2


def test_bound_holds_for_each_pick_while_requests_also_finish() -> None:
    backends = _backends(1, 1, 1, 1)
    w = _weights(backends)
    balancer = RendezvousHash(1.25, Recording())
    rng = random.Random(11)
    for _ in range(2000):
        picked = balancer.pick(backends, w, (), rng, b"hot" if rng.random() < 0.9 else rng.choice(KEYS))
        assert picked is not None
        picked.stats.start()
        total = sum(b.stats.inflight for b in backends)
        assert picked.stats.inflight <= math.ceil(1.25 * total / 4)
        if rng.random() < 0.45:
            rng.choice([b for b in backends if b.stats.inflight]).stats.finish()


def test_key_none_goes_to_the_fallback() -> None:
    backends = _backends(1, 1, 1)
    fallback = Recording()
    balancer = RendezvousHash(1.25, fallback)
    assert balancer.pick(backends, _weights(backends), [backends[2]], random.Random(0)) is backends[1]
    assert balancer.pick(backends, _weights(backends), (), random.Random(0), None) is backends[2]
    assert fallback.calls == [None, None]
    balancer.pick(backends, _weights(backends), (), random.Random(0), b"k")
    assert len(fallback.calls) == 2


def test_empty_and_all_excluded() -> None:
    backends = _backends(1, 1)
    balancer = RendezvousHash(1.25, Recording())
    assert balancer.pick([], [], (), random.Random(0), b"k") is None
    assert balancer.pick(backends, _weights(backends), backends, random.Random(0), b"k") is None


def test_factor_below_one_with_nothing_eligible_takes_the_owner() -> None:
    backends = _backends(1, 1)
    for b in backends:
        b.stats.inflight = 5
    balancer = RendezvousHash(0.5, Recording())
    key = b"k"
    # cap = ceil(0.5 * 11 / 2) = 3 for both; both are at 5.
    assert (
        balancer.pick(backends, _weights(backends), (), random.Random(0), key)
        is balancer.rank(backends, _weights(backends), key)[0]
    )


def test_negative_factor_is_rejected() -> None:
    with pytest.raises(ValueError, match="balance_factor"):
        RendezvousHash(-1.0, Recording())


@pytest.mark.parametrize(
    ("fallback", "enabled", "fallback_type", "spills_on_saturation"),
    [
        ("p2c", False, "PeakEwmaP2C", False),
        ("round_robin", True, "SmoothWeightedRoundRobin", True),
        ("load_aware", True, "LoadAware", True),
        ("load_aware", False, "LoadAware", False),
    ],
)
def test_make_balancer_builds_the_hash(
    fallback: str, enabled: bool, fallback_type: str, spills_on_saturation: bool
) -> None:
    clock = FakeClock()
    balancer = make_balancer(
        BalancerSettings(type="hash", hash_fallback=fallback, hash_balance_factor=1.25),
        clock=clock,
        scrape=ScrapeSettings(enabled=enabled),
    )
    assert isinstance(balancer, RendezvousHash)
    assert type(balancer._fallback).__name__ == fallback_type
    backends = _backends(1, 1, 1)
    owner = balancer.rank(backends, _weights(backends), b"k")[0]
    # Only the non-owners have a fresh, idle scrape: with scraping on, the unscraped owner is
    # saturated and the key spills; with it off there is no saturation test at all.
    for b in backends:
        if b is not owner:
            b.stats.load = ReplicaLoad(at=clock.monotonic(), waiting=0, running=0, kv_cache=0.1)
    picked = balancer.pick(backends, _weights(backends), (), random.Random(0), b"k")
    assert (picked is not owner) is spills_on_saturation


def test_make_balancer_kinds_and_unknown() -> None:
    clock = FakeClock()
    scrape = ScrapeSettings()
    assert isinstance(
        make_balancer(BalancerSettings(type="round_robin"), clock=clock, scrape=scrape), SmoothWeightedRoundRobin
    )
    with pytest.raises(ValueError, match="unknown balancer"):
        make_balancer(BalancerSettings(type="nope"), clock=clock, scrape=scrape)

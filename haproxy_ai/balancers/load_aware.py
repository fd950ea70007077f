"""Least-loaded by the replicas' own metrics: engine queue depth and KV-cache use (vLLM, TGI).

The proxy's in-flight count says little about an inference replica shared with other clients
or other proxies, or one whose batch is full of long generations. The replica's scraped queue
and KV-cache use do; this balancer ranks on them and keeps traffic off saturated replicas.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Final

from ..backends import Backend, BackendStats
from ..clock import Clock
from ..settings import ScrapeSettings

__all__ = ["LoadAware"]

# Score per proxy request in flight: small next to one queued request (1 / max_waiting, 0.125
# by default), so it only decides between replicas whose scraped load is equal (an idle
# cluster), where it makes this weighted least-connections.
_INFLIGHT_TIE: Final = 1e-3
# Relative difference under which two costs count as equal and the rng decides.
_EQUAL: Final = 1e-9


class LoadAware:
    """Picks the non-saturated candidate with the lowest load cost.

    **Saturated** (with scraping enabled): no scraped load (never scraped, or the last scrape
    failed), a load older than ``stale_after``, an estimated queue of at least ``max_waiting``,
    or KV-cache use of at least ``max_kv_cache``. The estimated queue is the scraped
    ``waiting`` (0 if the replica does not export it) plus the proxy's requests sent since that
    scrape, ``max(0, inflight - inflight_at_scrape)``: those are not in the replica's numbers
    yet, so a burst between two scrapes spreads out instead of herding onto the replica that
    looked idle.

    **Score** (``score``): ``queue_weight * est_waiting / max_waiting + kv_cache_weight * kv /
    max_kv_cache + 0.001 * (inflight + 1)``. ``pick`` divides it by the candidate's effective
    weight, so a replica of weight 2 counts as half as loaded as one of weight 1 at the same
    numbers (weight is capacity), and an idle cluster degenerates to weighted least-connections
    (HAProxy's ``(inflight + 1) / weight``). Costs equal to within 1e-9 are drawn uniformly
    with ``rng``.

    **All saturated**: the least ``(inflight + 1) / weight`` rather than no pick (the queue and
    retry stages decide what happens to an overloaded cluster, not the balancer).

    **Scraping disabled** (``settings.enabled`` false): nothing writes ``stats.load``, so a
    missing load is not saturation; every in-flight request counts as queued and the ranking is
    weighted least in-flight.

    Pure and synchronous: reads ``clock.monotonic()`` and the backends' stats, no I/O.
    """

    __slots__ = ("_clock", "_kv_scale", "_max_kv", "_max_waiting", "_queue_scale", "_require_load", "_stale_after")

    def __init__(self, settings: ScrapeSettings, *, clock: Clock) -> None:
        self._clock = clock
        self._require_load = settings.enabled
        self._stale_after = settings.stale_after
        self._max_waiting = settings.max_waiting
        self._max_kv = settings.max_kv_cache
        self._queue_scale = settings.queue_weight / settings.max_waiting
        self._kv_scale = settings.kv_cache_weight / settings.max_kv_cache

    def saturated(self, backend: Backend) -> bool:
        """Whether ``backend`` should get no new request while others can take it (see class
        docstring). Usable as ``RendezvousHash``'s ``saturated``."""
        return self._assess(backend.stats, self._clock.monotonic())[0]

    def score(self, backend: Backend) -> float:
        """The load cost before weighting; lower is better, >= 0.001."""
        return self._assess(backend.stats, self._clock.monotonic())[1]

    def _assess(self, stats: BackendStats, now: float) -> tuple[bool, float]:
        load = stats.load
        inflight = stats.inflight
        tie = _INFLIGHT_TIE * (inflight + 1)
        if load is None:
            # Unscraped: all the proxy's own requests are the best guess at the queue.
            return self._require_load, self._queue_scale * inflight + tie
        waiting = (load.waiting or 0.0) + max(0, inflight - load.inflight_at_scrape)
        kv = load.kv_cache or 0.0
        saturated = now - load.at > self._stale_after or waiting >= self._max_waiting or kv >= self._max_kv
        return saturated, self._queue_scale * waiting + self._kv_scale * kv + tie

    def pick(
        self,
        candidates: Sequence[Backend],
        weights: Sequence[float],
        exclude: Collection[Backend],
        rng: random.Random,
        key: bytes | None = None,
    ) -> Backend | None:
        """See the class docstring; ``key`` is ignored. None only when every candidate is
        excluded."""
        now = self._clock.monotonic()
        best: Backend | None = None
        best_cost = 0.0
        ties = 0
        any_left = False
        for backend, weight in zip(candidates, weights, strict=True):
            if exclude and backend in exclude:
                continue
            any_left = True
            saturated, score = self._assess(backend.stats, now)
            if saturated or weight <= 0:
                continue
            best, best_cost, ties = _consider(backend, score / weight, best, best_cost, ties, rng)
        if best is not None or not any_left:
            return best
        return _least_inflight(candidates, weights, exclude, rng)


def _consider(
    backend: Backend, cost: float, best: Backend | None, best_cost: float, ties: int, rng: random.Random
) -> tuple[Backend | None, float, int]:
    """One step of a single-pass argmin whose ties are broken uniformly (reservoir sampling:
    the k-th equal candidate replaces the choice with probability 1/k)."""
    if best is None or cost < best_cost * (1.0 - _EQUAL):
        return backend, cost, 1
    if cost <= best_cost * (1.0 + _EQUAL):
        ties += 1
        if rng.random() * ties < 1.0:
            return backend, best_cost, ties
    return best, best_cost, ties


def _least_inflight(
    candidates: Sequence[Backend], weights: Sequence[float], exclude: Collection[Backend], rng: random.Random
) -> Backend | None:
    best: Backend | None = None
    best_cost = 0.0
    ties = 0
    for backend, weight in zip(candidates, weights, strict=True):
        if exclude and backend in exclude:
            continue
        # A weightless candidate sorts last, but is still better than no pick at all.
        cost = (backend.stats.inflight + 1) / weight if weight > 0 else float("inf")
        best, best_cost, ties = _consider(backend, cost, best, best_cost, ties, rng)
    return best

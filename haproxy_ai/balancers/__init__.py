"""Balancers: small synchronous policies, ``pick(candidates, weights, exclude, rng, key) -> Backend | None``."""

from __future__ import annotations

from ..clock import Clock
from ..settings import BalancerSettings, ScrapeSettings
from .base import Balancer
from .hash import RendezvousHash
from .load_aware import LoadAware
from .p2c import PeakEwmaP2C
from .round_robin import SmoothWeightedRoundRobin

__all__ = ["Balancer", "LoadAware", "PeakEwmaP2C", "RendezvousHash", "SmoothWeightedRoundRobin", "make_balancer"]


def make_balancer(settings: BalancerSettings, *, clock: Clock, scrape: ScrapeSettings) -> Balancer:
    """The balancer ``settings.type`` names, built from its settings.

    ``hash`` falls back to ``settings.hash_fallback`` for requests without a key, and spills
    past saturated replicas (``LoadAware.saturated``) only when ``scrape.enabled``: without
    scraped metrics it has no saturation signal and only the load bound applies.
    ``load_aware`` with scraping disabled ranks by the proxy's own in-flight count (see
    ``LoadAware``). Raises ValueError for an unknown type.
    """
    # Stateless and cheap; one instance serves as the balancer, the hash fallback and the
    # hash's saturation test alike.
    load_aware = LoadAware(scrape, clock=clock)
    if settings.type == "hash":
        fallback = _simple(settings.hash_fallback, settings, load_aware)
        return RendezvousHash(settings.hash_balance_factor, fallback, load_aware.saturated if scrape.enabled else None)
    return _simple(settings.type, settings, load_aware)


def _simple(kind: str, settings: BalancerSettings, load_aware: LoadAware) -> Balancer:
    if kind == "round_robin":
        return SmoothWeightedRoundRobin()
    if kind == "p2c":
        return PeakEwmaP2C(cost_tolerance=settings.cost_tolerance)
    if kind == "load_aware":
        return load_aware
    raise ValueError(f"unknown balancer {kind!r}")

"""Balancers: small synchronous policies, ``pick(candidates, exclude, rng) -> Backend | None``."""

from __future__ import annotations

from .base import Balancer
from .p2c import PeakEwmaP2C
from .round_robin import SmoothWeightedRoundRobin

__all__ = ["Balancer", "PeakEwmaP2C", "SmoothWeightedRoundRobin", "make_balancer"]


def make_balancer(kind: str, *, cost_tolerance: float = 0.2) -> Balancer:
    if kind == "round_robin":
        return SmoothWeightedRoundRobin()
    if kind == "p2c":
        return PeakEwmaP2C(cost_tolerance=cost_tolerance)
    raise ValueError(f"unknown balancer {kind!r}")

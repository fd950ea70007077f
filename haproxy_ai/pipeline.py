"""The one place the request-path stage order is written, outermost first."""

from __future__ import annotations

import random

from .backends import Registry
from .balancers import make_balancer
from .clock import Clock
from .metrics import Metrics
from .settings import Settings
from .stages import Attempt, Balance
from .types import Handler, OutcomeSink
from .upstream import Upstream

__all__ = ["build_pipeline"]


def build_pipeline(
    settings: Settings,
    *,
    registry: Registry,
    upstream: Upstream,
    clock: Clock,
    metrics: Metrics,
    rng: random.Random,
    sink: OutcomeSink,
) -> Handler:
    passive = settings.health.passive
    attempt = Attempt(
        upstream=upstream,
        clock=clock,
        metrics=metrics,
        sink=sink,
        first_byte=settings.timeouts.first_byte,
        idle=settings.timeouts.idle,
        stall_timeout=passive.stall_timeout if passive.enabled else None,
    )
    balancer = make_balancer(settings.balancer.type, cost_tolerance=settings.balancer.cost_tolerance)
    # Balance is the outermost stage for now; retries and hedging will wrap it, since each
    # retry or hedge must pick again (and avoid the backends already tried).
    return Balance(attempt, registry=registry, balancer=balancer, rng=rng)

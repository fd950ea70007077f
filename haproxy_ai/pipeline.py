"""The one place the request-path stage order is written, outermost first."""

from __future__ import annotations

import random

from .backends import Registry
from .balancers import make_balancer
from .clock import Clock
from .metrics import Metrics
from .settings import Settings
from .stages import Attempt, Balance
from .types import Handler
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
) -> Handler:
    attempt = Attempt(
        upstream=upstream,
        clock=clock,
        metrics=metrics,
        first_byte=settings.timeouts.first_byte,
        idle=settings.timeouts.idle,
    )
    balancer = make_balancer(settings.balancer.type, cost_tolerance=settings.balancer.cost_tolerance)
    # Balance is the outermost stage for now; retries and hedging will wrap it, since each
    # retry or hedge must pick again (and avoid the backends already tried).
    return Balance(attempt, registry=registry, balancer=balancer, rng=rng)

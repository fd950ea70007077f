"""The one place the request-path stage order is written, outermost first:

    Admission  -> Retry -> Hedge -> Balance -> Attempt -> upstream

- Admission is outermost so a shed request costs nothing below it, and a request holds its
  global slot across all of its retries and hedges.
- Retry wraps Hedge: a hedged race that fails as a whole is retried like a single attempt, and
  both share one view of the backends tried (``ctx.attempts``).
- Hedge wraps Balance: every hedge picks its own backend, avoiding the ones already tried.
- Balance wraps Attempt: the per-backend limit queue sits where the backend is chosen.
A stage that is switched off in the config is left out, so it costs nothing.
"""

from __future__ import annotations

import random

from .backends import Registry
from .balancers import make_balancer
from .clock import Clock
from .metrics import Metrics, track_queue_depth
from .policies import BrownoutGuard, Budget, HedgeDelay, PriorityWaitQueue, RetryPolicy
from .settings import Settings
from .stages import Admission, Attempt, Balance, Hedge, Retry
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
    limits, retry, hedge, timeouts = settings.limits, settings.retry, settings.hedge, settings.timeouts
    retry_policy = RetryPolicy(retry, rng)
    hedge_delay = HedgeDelay(hedge, clock) if hedge.enabled else None
    backend_queue = PriorityWaitQueue(limits.max_queue) if limits.backend_max_in_flight else None

    balance: Balance | None = None

    def attempt_ended() -> None:
        if balance is not None:
            balance.notify()

    per_try = retry.per_try_timeout if retry.enabled and retry.per_try_timeout else timeouts.first_byte
    attempt = Attempt(
        upstream=upstream,
        clock=clock,
        metrics=metrics,
        sink=sink,
        first_byte=min(per_try, timeouts.first_byte),
        idle=timeouts.idle,
        stall_timeout=settings.health.passive.stall_timeout if settings.health.passive.enabled else None,
        forward_deadline_header=timeouts.forward_deadline_header,
        on_first_byte=hedge_delay.observe if hedge_delay is not None else None,
        on_finish=attempt_ended if backend_queue is not None else None,
    )
    balance = Balance(
        attempt,
        registry=registry,
        balancer=make_balancer(settings.balancer.type, cost_tolerance=settings.balancer.cost_tolerance),
        rng=rng,
        max_per_backend=limits.backend_max_in_flight,
        queue=backend_queue,
        queue_timeout=limits.queue_timeout,
        clock=clock,
        metrics=metrics,
    )
    handler: Handler = balance
    if hedge_delay is not None:
        handler = Hedge(
            handler,
            methods=frozenset(hedge.methods),
            max_hedges=hedge.max_hedges,
            delay=hedge_delay,
            guard=BrownoutGuard(hedge, clock),
            budget=Budget(hedge.budget, clock),
            retry_policy=retry_policy,
            registry=registry,
            clock=clock,
            metrics=metrics,
        )
    if retry.enabled:
        handler = Retry(
            handler,
            policy=retry_policy,
            budget=Budget(retry.budget, clock),
            registry=registry,
            clock=clock,
            metrics=metrics,
            # The longest pause a replica may impose on a request is the cooldown cap it gets.
            max_wait=settings.health.passive.max_cooldown,
        )
    if limits.max_in_flight:
        global_queue = PriorityWaitQueue(limits.max_queue)
        track_queue_depth(metrics, global_queue.depth_by_priority)
        handler = Admission(
            handler,
            max_in_flight=limits.max_in_flight,
            queue=global_queue,
            queue_timeout=limits.queue_timeout,
            clock=clock,
            metrics=metrics,
        )
    elif backend_queue is not None:
        track_queue_depth(metrics, backend_queue.depth_by_priority)
    return handler

"""The one place the request-path stage order is written, outermost first:

    Admission -> [Router] -> Retry -> Hedge -> Balance -> Attempt -> upstream

- Admission is outermost so a shed request costs nothing below it, and a request holds its
  global slot across all of its retries and hedges.
- The router (only with named pools) sits inside admission, so ``limits.max_in_flight`` bounds
  the proxy as a whole, and above retry: a request is retried and hedged inside the pool it
  was routed to, never moved to a pool that serves another model.
- Retry wraps Hedge: a hedged race that fails as a whole is retried like a single attempt, and
  both share one view of the backends tried (``ctx.attempts``).
- Hedge wraps Balance: every hedge picks its own backend, avoiding the ones already tried.
- Balance wraps Attempt: the per-backend limit queue sits where the backend is chosen.
A stage that is switched off in the config is left out, so it costs nothing.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .backends import Registry
from .balancers import make_balancer
from .clock import Clock
from .metrics import Metrics, track_queue_depth
from .policies import BrownoutGuard, Budget, HedgeDelay, PriorityWaitQueue, RetryPolicy
from .routing import affinity_key
from .settings import PoolSettings, Settings
from .stages import Admission, Attempt, Balance, Hedge, Retry
from .types import Handler, OutcomeSink
from .upstream import Upstream

__all__ = ["PoolPipeline", "build_pool_pipeline", "wrap_admission"]


@dataclass(frozen=True, slots=True)
class PoolPipeline:
    handler: Handler
    queue: PriorityWaitQueue | None  # the per-backend limit queue, when the pool has a limit


def build_pool_pipeline(
    pool: PoolSettings,
    settings: Settings,
    *,
    registry: Registry,
    upstream: Upstream,
    clock: Clock,
    metrics: Metrics,
    rng: random.Random,
    sink: OutcomeSink,
) -> PoolPipeline:
    """Retry -> Hedge -> Balance -> Attempt for one pool, with the pool's own policies and budgets."""
    limits, timeouts = settings.limits, settings.timeouts
    retry, hedge = pool.retry, pool.hedge
    retry_policy = RetryPolicy(retry, rng)
    hedge_delay = HedgeDelay(hedge, clock) if hedge.enabled else None
    max_per_backend = pool.backend_max_in_flight
    backend_queue = PriorityWaitQueue(limits.max_queue) if max_per_backend else None

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
        stall_timeout=pool.health.passive.stall_timeout if pool.health.passive.enabled else None,
        forward_deadline_header=timeouts.forward_deadline_header,
        on_first_byte=hedge_delay.observe if hedge_delay is not None else None,
        on_finish=attempt_ended if backend_queue is not None else None,
    )
    balancer = pool.balancer
    balance = Balance(
        attempt,
        registry=registry,
        balancer=make_balancer(balancer, clock=clock, scrape=pool.scrape),
        rng=rng,
        max_per_backend=max_per_backend,
        queue=backend_queue,
        queue_timeout=limits.queue_timeout,
        clock=clock,
        metrics=metrics,
        key_of=functools.partial(affinity_key, kind=balancer.hash_key, chars=balancer.hash_prefix_chars)
        if balancer.type == "hash"
        else None,
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
            pool=pool.name,
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
            max_wait=pool.health.passive.max_cooldown,
            pool=pool.name,
        )
    return PoolPipeline(handler, backend_queue)


def wrap_admission(
    handler: Handler,
    settings: Settings,
    *,
    clock: Clock,
    metrics: Metrics,
    backend_queues: Sequence[PriorityWaitQueue] = (),
) -> Handler:
    """The global admission stage around ``handler`` (the router or the one pool), when
    ``limits.max_in_flight`` is set; and the queue-depth gauges either way."""
    limits = settings.limits
    if limits.max_in_flight:
        global_queue = PriorityWaitQueue(limits.max_queue)
        track_queue_depth(metrics, global_queue.depth_by_priority)
        return Admission(
            handler,
            max_in_flight=limits.max_in_flight,
            queue=global_queue,
            queue_timeout=limits.queue_timeout,
            clock=clock,
            metrics=metrics,
        )
    if backend_queues:
        queues = tuple(backend_queues)

        def depth() -> dict[int, int]:
            total: dict[int, int] = {}
            for queue in queues:
                for priority, count in queue.depth_by_priority().items():
                    total[priority] = total.get(priority, 0) + count
            return total

        track_queue_depth(metrics, depth)
    return handler

"""Waiting for capacity in a priority queue, shared by the global and per-backend limits."""

from __future__ import annotations

from ..clock import Clock
from ..context import RequestContext
from ..errors import Overloaded
from ..metrics import Metrics
from ..policies import PRIORITIES, PriorityWaitQueue, QueueTimeout, Shed

__all__ = ["wait_for_capacity"]

_NAMES = {number: name for name, number in PRIORITIES.items()}


async def wait_for_capacity(
    queue: PriorityWaitQueue, ctx: RequestContext, *, patience: float, clock: Clock, metrics: Metrics, what: str
) -> None:
    """Wait for a turn (priority, then earliest deadline); raise Overloaded (503 + Retry-After)
    when shed from a full queue or after ``patience`` seconds (never past the request's deadline)."""
    name = _NAMES[ctx.priority]
    started = clock.monotonic()
    try:
        await queue.wait(ctx.priority, ctx.deadline, min(patience, max(ctx.deadline - started, 0.0)))
    except Shed:
        metrics.shed.labels(name, "queue_full").inc()
        raise Overloaded(f"overloaded: {what}; {name}-priority request shed (queue full)") from None
    except QueueTimeout:
        metrics.shed.labels(name, "queue_timeout").inc()
        raise Overloaded(f"overloaded: {what}; no capacity within {patience:g}s") from None
    finally:
        metrics.queue_wait.observe(clock.monotonic() - started)

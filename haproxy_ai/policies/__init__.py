"""Request policies: retry and hedge decisions, their budgets, and the admission wait queue.

Everything here but the queue is small, synchronous and pure: it takes an injected clock and
rng and never sleeps or does I/O, so the stages that own the waiting stay thin and the rules
are testable with a fake clock. The queue is a small asyncio primitive.
"""

from __future__ import annotations

from .budget import Budget
from .hedge import BrownoutGuard, HedgeDelay
from .queue import PRIORITIES, PriorityWaitQueue, QueueTimeout, Shed
from .retry import RetryDecision, RetryPolicy

__all__ = [
    "PRIORITIES",
    "BrownoutGuard",
    "Budget",
    "HedgeDelay",
    "PriorityWaitQueue",
    "QueueTimeout",
    "RetryDecision",
    "RetryPolicy",
    "Shed",
]

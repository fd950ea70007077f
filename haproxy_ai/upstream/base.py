from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from ..backends import Backend
from ..clock import Clock
from ..errors import FirstByteTimeout, IdleTimeout, ProxyError, TotalTimeout
from ..types import ProxyRequest, UpstreamResponse

__all__ = ["AttemptTimeouts", "Upstream"]


@dataclass(frozen=True, slots=True)
class AttemptTimeouts:
    """Bounds for one attempt. ``deadline`` is the request's absolute monotonic deadline: every
    wait is capped by what is left of it, and a wait cut short by it raises TotalTimeout."""

    first_byte: float
    idle: float
    deadline: float = math.inf

    def budget(self, limit: float, clock: Clock) -> tuple[float, bool]:
        """(seconds to wait, whether the request deadline rather than ``limit`` binds)."""
        left = self.deadline - clock.monotonic()
        if left < limit:
            return max(left, 0.0), True
        return limit, False

    def first_byte_error(self, by_deadline: bool, backend: Backend) -> ProxyError:
        if by_deadline:
            return TotalTimeout("request deadline exceeded waiting for response headers", backend=backend.name)
        return FirstByteTimeout(
            f"backend {backend.name} sent no response headers within {self.first_byte:g}s", backend=backend.name
        )

    def idle_error(self, by_deadline: bool, backend: Backend) -> ProxyError:
        if by_deadline:
            return TotalTimeout("request deadline exceeded while streaming the response", backend=backend.name)
        return IdleTimeout(f"backend {backend.name} sent nothing for {self.idle:g}s mid-response", backend=backend.name)


class Upstream(Protocol):
    async def start(self) -> None:
        """Create the pooled client; called once from the app's lifespan, inside the event loop."""
        ...

    async def send(self, backend: Backend, request: ProxyRequest, timeouts: AttemptTimeouts) -> UpstreamResponse:
        """Send ``request`` to ``backend`` and return once response headers arrived.

        Raises ConnectFailed, ConnectTimeout, FirstByteTimeout, TotalTimeout or UpstreamReset;
        never a client-library exception.
        """
        ...

    async def aclose(self) -> None: ...

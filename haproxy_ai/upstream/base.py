from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..backends import Backend
from ..errors import FirstByteTimeout, IdleTimeout
from ..types import ProxyRequest, UpstreamResponse

__all__ = ["AttemptTimeouts", "Upstream"]


@dataclass(frozen=True, slots=True)
class AttemptTimeouts:
    """Bounds for one attempt. The request's total deadline is enforced above the upstream
    (one timer per request in the app), so these are only the per-attempt waits."""

    first_byte: float  # request sent -> response headers
    idle: float  # longest gap between two body chunks

    def first_byte_error(self, backend: Backend) -> FirstByteTimeout:
        return FirstByteTimeout(
            f"backend {backend.name} sent no response headers within {self.first_byte:g}s", backend=backend.name
        )

    def idle_error(self, backend: Backend) -> IdleTimeout:
        return IdleTimeout(f"backend {backend.name} sent nothing for {self.idle:g}s mid-response", backend=backend.name)


class Upstream(Protocol):
    async def start(self) -> None:
        """Create the pooled client; called once from the app's lifespan, inside the event loop."""
        ...

    async def send(self, backend: Backend, request: ProxyRequest, timeouts: AttemptTimeouts) -> UpstreamResponse:
        """Send ``request`` to ``backend`` and return once response headers arrived.

        Raises ConnectFailed, ConnectTimeout, FirstByteTimeout or UpstreamReset; never a
        client-library exception. Cancellation propagates (and closes the connection).
        """
        ...

    async def aclose(self) -> None: ...

"""Leaf vocabulary shared by stages, upstreams and the app: request, response and handler types."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .backends import Backend
    from .context import AttemptRecord, RequestContext
    from .outcome import Outcome

__all__ = ["Handler", "OutcomeSink", "ProxyRequest", "UpstreamResponse", "content_length"]


@dataclass(slots=True)
class ProxyRequest:
    """A request as it will be sent upstream: hop-by-hop headers already removed, body buffered
    (so the retry and hedge stages can replay it on another backend)."""

    method: str
    target: str  # origin-form: path plus "?query", exactly as received
    headers: list[tuple[str, str]]
    body: bytes


class UpstreamResponse(Protocol):
    """Response headers from one backend, with the body still to be streamed.

    ``chunks()`` yields body bytes as they arrive and raises a ProxyError (IdleTimeout,
    UpstreamReset) if the backend stalls or breaks. ``aclose()`` must be called exactly once;
    when the body was not read to the end it closes the connection instead of returning it to
    the pool, which is what tells the replica to stop generating. ``abandoned=True`` says the
    proxy dropped the response on purpose (a hedge that lost, a status about to be retried),
    so the attempt is not judged by it.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    # The attempt that produced this response (None below the attempt stage), so the response
    # headers and logs name the backend that actually answered, whatever hedges happened.
    attempt: AttemptRecord | None

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self, *, abandoned: bool = False) -> None: ...


Handler = Callable[[ProxyRequest, "RequestContext"], Awaitable[UpstreamResponse]]


class OutcomeSink(Protocol):
    """Receives each finished attempt's classified outcome (passive health checking).

    Called synchronously on the request path: implementations must not block or await.
    """

    def record(
        self,
        backend: Backend,
        outcome: Outcome,
        *,
        first_byte: float | None = None,
        retry_after: float | None = None,
    ) -> None: ...

    def stalled(self, backend: Backend) -> None:
        """A response body went silent for the configured stall timeout after its headers."""
        ...


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared body length of a response, or None for an open-ended (streamed) body."""
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None

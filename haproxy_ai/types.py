"""Leaf vocabulary shared by stages, upstreams and the app: request, response and handler types."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .context import RequestContext

__all__ = ["Handler", "ProxyRequest", "UpstreamResponse"]


@dataclass(slots=True)
class ProxyRequest:
    """A request as it will be sent upstream: hop-by-hop headers already removed, body buffered
    (so a later stage may replay it on another backend)."""

    method: str
    target: str  # origin-form: path plus "?query", exactly as received
    headers: list[tuple[str, str]]
    body: bytes


class UpstreamResponse(Protocol):
    """Response headers from one backend, with the body still to be streamed.

    ``chunks()`` yields body bytes as they arrive and raises a ProxyError (IdleTimeout,
    TotalTimeout, UpstreamReset) if the backend stalls or breaks. ``aclose()`` must be called
    exactly once; when the body was not read to the end it closes the connection instead of
    returning it to the pool, which is what tells the replica to stop generating.
    """

    status: int
    headers: list[tuple[bytes, bytes]]

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


Handler = Callable[[ProxyRequest, "RequestContext"], Awaitable[UpstreamResponse]]

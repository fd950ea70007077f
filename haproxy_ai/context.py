"""Per-request state that travels through the pipeline alongside the request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends import Backend
    from .outcome import Outcome

__all__ = ["AttemptRecord", "RequestContext"]


@dataclass(slots=True)
class AttemptRecord:
    """What happened on one attempt to one backend (monotonic seconds)."""

    backend: Backend
    started: float
    headers_at: float | None = None
    ended: float | None = None
    outcome: Outcome | None = None
    status: int | None = None


@dataclass(slots=True)
class RequestContext:
    request_id: str
    received: float  # monotonic
    deadline: float  # monotonic; inf when there is no total timeout
    client: str | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    # Time spent waiting on upstreams before response headers; subtracted to get proxy overhead.
    upstream_wait: float = 0.0
    # Set when the client disconnected before the response was complete.
    client_gone: bool = False
    # Set when the request's total deadline fired (the request task is being cancelled).
    deadline_hit: bool = False
    priority: int = 1  # 0 high, 1 normal, 2 low
    opt_out: bool = False  # the client asked for no retries or hedges
    hedge_seen: bool = False  # the hedge stage counted this request (once, however often it is retried)
    pool: str = ""  # the pool the router chose ("" until routed; "default" without named pools)
    # The JSON request body, parsed at most once per request (by the router or an affinity key)
    # and shared by every retry and hedge; None when the body is not a JSON object.
    body_doc: dict[str, Any] | None = None
    body_parsed: bool = False
    affinity: bytes | None = None  # the hash balancer's key, computed once per request
    affinity_done: bool = False

    @property
    def tried(self) -> list[Backend]:
        return [a.backend for a in self.attempts]

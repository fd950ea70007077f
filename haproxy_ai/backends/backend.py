"""One replica: its fixed identity (immutable) and its live load statistics (mutable counters)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["Backend", "BackendStats", "ReplicaLoad"]


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One scrape of a replica's own Prometheus metrics (vLLM, TGI), as the balancers read it.

    ``None`` means the replica does not export that signal. ``inflight_at_scrape`` is the
    proxy's own in-flight count to this replica when the scrape was taken: requests sent since
    (``inflight - inflight_at_scrape``) are not in the replica's numbers yet, so a burst between
    two scrapes is counted instead of herding onto the replica that looked idle.
    """

    at: float  # clock.monotonic() when the scrape finished
    waiting: float | None  # requests queued in the engine (vllm:num_requests_waiting, tgi_queue_size)
    running: float | None  # requests in the running batch
    kv_cache: float | None  # KV-cache use, 0..1
    inflight_at_scrape: int = 0


class BackendStats:
    """Load signals the balancers read: in-flight requests and a peak-EWMA of time to first byte.

    Mutated only from the event loop thread (no locks needed): ``start``/``finish`` bracket an
    attempt, ``observe`` feeds a header latency. Peak-EWMA (Finagle/linkerd): a slower sample
    replaces the average at once, a faster one is blended in with decay ``exp(-dt/tau)`` so a
    replica that turned slow is avoided immediately and trusted again gradually.
    """

    __slots__ = ("_last", "_tau", "ewma", "inflight", "load", "requests")

    def __init__(self, decay: float = 10.0) -> None:
        self.inflight = 0
        self.requests = 0
        self.ewma: float | None = None
        self._tau = decay
        self._last = 0.0
        # The latest scrape of the replica's own metrics; written only by its metrics scraper.
        self.load: ReplicaLoad | None = None

    def start(self) -> None:
        self.inflight += 1
        self.requests += 1

    def finish(self) -> None:
        self.inflight -= 1

    def observe(self, latency: float, now: float) -> None:
        if self.ewma is None or latency > self.ewma:
            self.ewma = latency
        else:
            dt = max(now - self._last, 0.0)
            w = math.exp(-dt / self._tau) if self._tau > 0 else 0.0
            self.ewma = self.ewma * w + latency * (1.0 - w)
        self._last = now


@dataclass(frozen=True, eq=False)
class Backend:
    """A replica as configured. Identity is the object; ``name`` is unique across all pools."""

    name: str
    url: str
    weight: int = 1
    stats: BackendStats = field(default_factory=BackendStats, repr=False, compare=False)
    pool: str = "default"  # the pool it serves in; names are unique across pools
    scheme: str = field(init=False)
    host: str = field(init=False)
    port: int = field(init=False)
    base_path: str = field(init=False)
    origin: str = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        host = parts.hostname or ""
        hostport = f"[{host}]" if ":" in host else host
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "base_path", parts.path.rstrip("/"))
        object.__setattr__(self, "origin", f"{scheme}://{hostport}:{port}")

    def target(self, raw_path: str) -> str:
        """The absolute upstream URL for an origin-form request target (path plus query)."""
        return f"{self.origin}{self.base_path}{raw_path}"

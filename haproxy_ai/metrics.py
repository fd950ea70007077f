"""Every Prometheus metric, defined once, in a registry owned by one proxy instance.

Label children are resolved when a backend is first seen and cached, so the request path does
a dict lookup and an ``inc``/``observe``, never a ``labels()`` call with string formatting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .backends import Backend, Registry
from .outcome import Outcome

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)


class Metrics:
    def __init__(self, backends: Registry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "haproxy_ai_requests", "Requests answered to clients, by status code.", ["code"], registry=r
        )
        self.request_duration = Histogram(
            "haproxy_ai_request_duration_seconds",
            "Time from request received to the last response byte sent.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "haproxy_ai_proxy_overhead_seconds",
            "Time spent in the proxy before the response headers went out, excluding upstream waits.",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "haproxy_ai_upstream_attempts",
            "Attempts to backends, by classified outcome.",
            ["backend", "outcome"],
            registry=r,
        )
        self.ttfb = Histogram(
            "haproxy_ai_upstream_ttfb_seconds",
            "Time from sending a request to a backend until its response headers.",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.client_disconnects = Counter(
            "haproxy_ai_client_disconnects",
            "Clients that went away before the response was complete (upstream cancelled).",
            registry=r,
        )
        self.truncated = Counter(
            "haproxy_ai_truncated_responses",
            "Responses cut short by a backend failure after headers were sent.",
            registry=r,
        )
        self._inflight = Gauge(
            "haproxy_ai_backend_inflight", "Requests in flight to each backend.", ["backend"], registry=r
        )
        self._weight = Gauge("haproxy_ai_backend_weight", "Configured weight of each backend.", ["backend"], registry=r)
        self._routable = Gauge(
            "haproxy_ai_backend_routable", "1 if the backend may receive traffic now.", ["backend"], registry=r
        )
        self._codes: dict[int, Any] = {}
        self._attempt_children: dict[tuple[str, Outcome], Any] = {}
        self._ttfb_children: dict[str, Any] = {}
        if backends is not None:
            self.track(backends)

    def track(self, registry: Registry) -> None:
        """Export per-backend gauges read live from the registry at scrape time."""
        for backend in registry.snapshot().backends:
            name = backend.name
            self._inflight.labels(name).set_function(_inflight_of(backend))
            self._weight.labels(name).set(backend.weight)
            self._routable.labels(name).set_function(_routable_in(registry, backend))

    def response(self, code: int, duration: float) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self.requests.labels(str(code))
        child.inc()
        self.request_duration.observe(duration)

    def attempt(self, backend: Backend, outcome: Outcome, ttfb: float | None) -> None:
        key = (backend.name, outcome)
        child = self._attempt_children.get(key)
        if child is None:
            child = self._attempt_children[key] = self.attempts.labels(backend.name, outcome.value)
        child.inc()
        if ttfb is not None:
            hist = self._ttfb_children.get(backend.name)
            if hist is None:
                hist = self._ttfb_children[backend.name] = self.ttfb.labels(backend.name)
            hist.observe(ttfb)


def _inflight_of(backend: Backend) -> Callable[[], float]:
    return lambda: float(backend.stats.inflight)


def _routable_in(registry: Registry, backend: Backend) -> Callable[[], float]:
    return lambda: 1.0 if backend in registry.snapshot().routable else 0.0

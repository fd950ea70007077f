"""Every Prometheus metric, defined once, in a registry owned by one proxy instance.

Label children are resolved when a backend is first seen and cached, so the request path does
a dict lookup and an ``inc``/``observe``, never a ``labels()`` call with string formatting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .backends import Backend
from .outcome import Outcome

if TYPE_CHECKING:
    from .health.state import BackendHealth, State

__all__ = ["Metrics", "MirrorMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)
_AVAILABILITY_GAUGES = (
    ("p_at_least_k", "haproxy_ai_availability_pool", "Model: P(at least min_healthy backends healthy)."),
    ("replica_availability", "haproxy_ai_availability_replica", "Model: steady-state availability of one replica."),
    ("observed_fraction_at_least_k", "haproxy_ai_availability_observed", "Measured: time share with min_healthy up."),
    ("expected_downtime_per_year_s", "haproxy_ai_availability_downtime_per_year_seconds", "Model: downtime/year."),
    ("mean_time_to_pool_failure_s", "haproxy_ai_availability_mean_time_to_failure_seconds", "Model: MTTF of the pool."),
    ("replicas_needed_for_target", "haproxy_ai_availability_replicas_needed", "Model: replicas for the target."),
)
_STATES = ("healthy", "cooldown", "ejected", "unhealthy", "draining", "disabled")


class _WeightSource(Protocol):
    def get(self, name: str) -> BackendHealth: ...

    def effective_weight(self, record: BackendHealth, now: float | None = None) -> float: ...


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "haproxy_ai_requests",
            "Requests answered to clients, by pool and status code (pool is empty when none was chosen).",
            ["pool", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "haproxy_ai_request_duration_seconds",
            "Time from request received to the last response byte sent, by pool.",
            ["pool"],
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
            ["pool", "backend", "outcome"],
            registry=r,
        )
        self.responses = Counter(
            "haproxy_ai_backend_responses",
            "Responses received from each backend, by status class (2xx, 4xx, 5xx...).",
            ["pool", "backend", "code_class"],
            registry=r,
        )
        self.ttfb = Histogram(
            "haproxy_ai_upstream_ttfb_seconds",
            "Time from sending a request to a backend until the first body byte (for streams: the first token).",
            ["pool", "backend"],
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
            "Responses cut short by a backend failure or the deadline after headers were sent.",
            registry=r,
        )
        # Resilience
        self.retries = Counter(
            "haproxy_ai_retries", "Retries, by pool and the condition retried.", ["pool", "reason"], registry=r
        )
        self.retry_budget_exhausted = Counter(
            "haproxy_ai_retry_budget_exhausted",
            "Retries refused because the pool's retry budget was spent.",
            ["pool"],
            registry=r,
        )
        self.hedges = Counter(
            "haproxy_ai_hedges",
            "Hedged attempts: fired, won (the hedge answered first), cancelled (a loser stopped), "
            "budget_exhausted and brownout (a hedge that was due but not sent).",
            ["pool", "result"],
            registry=r,
        )
        self.shed = Counter(
            "haproxy_ai_shed_requests",
            "Requests shed with 503 by admission control.",
            ["priority", "reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "haproxy_ai_queue_wait_seconds",
            "Time requests waited for capacity (global limit or a backend slot).",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.queue_depth = Gauge(
            "haproxy_ai_queue_depth", "Requests waiting for capacity now, by priority.", ["priority"], registry=r
        )
        # Health
        self.probes = Counter(
            "haproxy_ai_health_probes", "Active health probes, by result.", ["pool", "backend", "result"], registry=r
        )
        self.ejections = Counter(
            "haproxy_ai_ejections",
            "Passive ejections (outlier detection), by reason.",
            ["pool", "backend", "reason"],
            registry=r,
        )
        self.ejections_skipped = Counter(
            "haproxy_ai_ejections_skipped",
            "Ejections not carried out because max_ejection_percent of the pool was already ejected.",
            ["pool", "backend"],
            registry=r,
        )
        self.stalls = Counter(
            "haproxy_ai_stream_stalls",
            "Streams silent for stall_timeout after their headers.",
            ["pool", "backend"],
            registry=r,
        )
        self.panic = Gauge(
            "haproxy_ai_panic_mode",
            "1 while too few of the pool's backends are healthy and all enabled ones are used.",
            ["pool"],
            registry=r,
        )
        self._state = Gauge(
            "haproxy_ai_backend_state",
            "1 for the backend's current state, 0 for the others.",
            ["pool", "backend", "state"],
            registry=r,
        )
        self._up = Gauge(
            "haproxy_ai_backend_up", "1 if the backend is healthy, else 0.", ["pool", "backend"], registry=r
        )
        self._inflight = Gauge(
            "haproxy_ai_backend_inflight", "Requests in flight to each backend.", ["pool", "backend"], registry=r
        )
        self._weight = Gauge(
            "haproxy_ai_backend_weight",
            "Effective weight of each backend (after slow start).",
            ["pool", "backend"],
            registry=r,
        )
        # Routing
        self.routed = Counter(
            "haproxy_ai_routed_requests",
            "Requests sent to each pool, by how the pool was chosen.",
            ["pool", "by"],
            registry=r,
        )
        self.unknown_models = Counter(
            "haproxy_ai_unknown_model_requests", "Requests refused with 404 for a model no pool serves.", registry=r
        )
        self.model_fetches = Counter(
            "haproxy_ai_model_list_fetches",
            "Fetches of a pool's model list from its replicas, by result.",
            ["pool", "result"],
            registry=r,
        )
        # Replica metrics scraped for load-aware picks
        self.scrapes = Counter(
            "haproxy_ai_replica_scrapes",
            "Scrapes of replicas' own metrics, by result.",
            ["pool", "backend", "result"],
            registry=r,
        )
        self.replica_waiting = Gauge(
            "haproxy_ai_replica_waiting",
            "Requests queued in the replica's engine, as last scraped.",
            ["pool", "backend"],
            registry=r,
        )
        self.replica_kv_cache = Gauge(
            "haproxy_ai_replica_kv_cache_usage",
            "The replica's KV-cache use (0..1), as last scraped.",
            ["pool", "backend"],
            registry=r,
        )
        self._codes: dict[tuple[str, int], Any] = {}
        self._durations: dict[str, Any] = {}
        self._attempt_children: dict[tuple[str, Outcome], Any] = {}
        self._response_children: dict[tuple[str, int], Any] = {}
        self._ttfb_children: dict[str, Any] = {}

    # -- availability ------------------------------------------------------------------------------

    def track_availability(self, report: Callable[[], dict[str, Any]]) -> None:
        """Export the availability model's headline numbers, read from ``report()`` at scrape time."""

        def pool(key: str) -> Callable[[], float]:
            def read() -> float:
                value = report().get("pool", {}).get(key)
                return float(value) if isinstance(value, int | float) else float("nan")

            return read

        for key, name, doc in _AVAILABILITY_GAUGES:
            Gauge(name, doc, registry=self.registry).set_function(pool(key))

    # -- per-backend series ----------------------------------------------------------------------

    def track_backend(self, backend: Backend, health: _WeightSource) -> None:
        """Export gauges for ``backend``, read live at scrape time."""
        pool, name = backend.pool, backend.name
        self._inflight.labels(pool, name).set_function(_inflight_of(backend))
        self._weight.labels(pool, name).set_function(_weight_of(health, name))

    def forget_backend(self, backend: Backend) -> None:
        pool, name = backend.pool, backend.name
        for gauge in (self._inflight, self._weight, self._up, self.replica_waiting, self.replica_kv_cache):
            _remove(gauge, pool, name)
        for state in _STATES:
            _remove(self._state, pool, name, state)
        for akey in [k for k in self._attempt_children if k[0] == name]:
            del self._attempt_children[akey]
        for rkey in [k for k in self._response_children if k[0] == name]:
            del self._response_children[rkey]
        self._ttfb_children.pop(name, None)

    def set_state(self, backend: Backend, state: State) -> None:
        for value in _STATES:
            self._state.labels(backend.pool, backend.name, value).set(1 if value == state.value else 0)
        self._up.labels(backend.pool, backend.name).set(1 if state.value == "healthy" else 0)

    # -- request path ------------------------------------------------------------------------------

    def response(self, code: int, duration: float, pool: str = "") -> None:
        child = self._codes.get((pool, code))
        if child is None:
            child = self._codes[(pool, code)] = self.requests.labels(pool, str(code))
        child.inc()
        hist = self._durations.get(pool)
        if hist is None:
            hist = self._durations[pool] = self.request_duration.labels(pool)
        hist.observe(duration)

    def attempt(self, backend: Backend, outcome: Outcome, status: int | None, ttfb: float | None) -> None:
        key = (backend.name, outcome)
        child = self._attempt_children.get(key)
        if child is None:
            child = self._attempt_children[key] = self.attempts.labels(backend.pool, backend.name, outcome.value)
        child.inc()
        if status is not None:
            rkey = (backend.name, status // 100)
            rchild = self._response_children.get(rkey)
            if rchild is None:
                rchild = self._response_children[rkey] = self.responses.labels(
                    backend.pool, backend.name, f"{status // 100}xx"
                )
            rchild.inc()
        if ttfb is not None:
            hist = self._ttfb_children.get(backend.name)
            if hist is None:
                hist = self._ttfb_children[backend.name] = self.ttfb.labels(backend.pool, backend.name)
            hist.observe(ttfb)


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


def _inflight_of(backend: Backend) -> Callable[[], float]:
    return lambda: float(backend.stats.inflight)


def _weight_of(health: _WeightSource, name: str) -> Callable[[], float]:
    def read() -> float:
        try:
            return health.effective_weight(health.get(name))
        except KeyError:
            return 0.0

    return read


class MirrorMetrics:
    """The mirror pipeline's metrics. Invariant once the queue is empty:
    enqueued = spooled + dropped{queue_full, spool_full, spool_error}; and per sink,
    spooled = shipped + pending + dropped{evicted}."""

    def __init__(self, registry: CollectorRegistry, sinks: list[str]) -> None:
        r = registry
        self.enqueued = Counter(
            "haproxy_ai_mirror_records_enqueued", "Records accepted into the mirror's memory queue.", registry=r
        )
        self.skipped = Counter(
            "haproxy_ai_mirror_records_skipped",
            "Requests not recorded on purpose, by reason (sampled, path).",
            ["reason"],
            registry=r,
        )
        self.spooled = Counter("haproxy_ai_mirror_records_spooled", "Records written to the spool.", registry=r)
        self.shipped = Counter(
            "haproxy_ai_mirror_records_shipped", "Records delivered to each sink.", ["sink"], registry=r
        )
        self.dropped = Counter(
            "haproxy_ai_mirror_records_dropped",
            "Records lost, by reason: queue_full, spool_full, spool_error, evicted (drop_oldest).",
            ["reason"],
            registry=r,
        )
        self.sink_errors = Counter(
            "haproxy_ai_mirror_sink_errors", "Failed deliveries to each sink (retried).", ["sink"], registry=r
        )
        self.queue_depth = Gauge("haproxy_ai_mirror_queue_depth", "Records waiting for the spool writer.", registry=r)
        self.spool_bytes = Gauge("haproxy_ai_mirror_spool_bytes", "Bytes in the spool's segments.", registry=r)
        self.spool_segments = Gauge("haproxy_ai_mirror_spool_segments", "Segment files in the spool.", registry=r)
        self.pending = Gauge(
            "haproxy_ai_mirror_sink_pending", "Spooled records not yet delivered to each sink.", ["sink"], registry=r
        )
        self.lag = Gauge(
            "haproxy_ai_mirror_sink_lag_seconds",
            "Age of the oldest record not yet delivered to each sink (0 when caught up).",
            ["sink"],
            registry=r,
        )
        self.sink_up = Gauge(
            "haproxy_ai_mirror_sink_up", "1 if the last delivery to the sink worked.", ["sink"], registry=r
        )
        # Children resolved once, so the request path never formats labels.
        self.queue_full = self.dropped.labels("queue_full")
        for reason in ("queue_full", "spool_full", "spool_error", "evicted"):
            self.dropped.labels(reason)
        self.sampled_out = self.skipped.labels("sampled")
        self.path_out = self.skipped.labels("path")
        for sink in sinks:
            self.shipped.labels(sink)
            self.sink_errors.labels(sink)
            self.pending.labels(sink)
            self.lag.labels(sink)
            self.sink_up.labels(sink).set(1)


def track_queue_depth(metrics: Metrics, depth_by_priority: Callable[[], dict[int, int]]) -> None:
    """Export a wait queue's depth per priority, read at scrape time."""
    for number, name in enumerate(("high", "normal", "low")):
        metrics.queue_depth.labels(name).set_function(_depth_of(depth_by_priority, number))


def _depth_of(depth_by_priority: Callable[[], dict[int, int]], priority: int) -> Callable[[], float]:
    return lambda: float(depth_by_priority().get(priority, 0))

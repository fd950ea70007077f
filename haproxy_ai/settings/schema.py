"""The config schema: frozen dataclasses, one per top-level section.

Each field's metadata names its kind (how to parse it), a one-line doc, and its bounds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SECTIONS",
    "AdminSettings",
    "BackendSettings",
    "BalancerSettings",
    "BudgetSettings",
    "HealthSettings",
    "HedgeSettings",
    "LimitSettings",
    "ListenSettings",
    "MirrorSettings",
    "PassiveSettings",
    "PoolSettings",
    "RedactSettings",
    "RouteSettings",
    "RoutingSettings",
    "ScrapeSettings",
    "Settings",
    "SinkSettings",
    "StatusRanges",
    "TimeoutSettings",
    "UpstreamSettings",
]


def _f(default: Any, kind: str, doc: str, **bounds: Any) -> Any:
    return field(default=default, metadata={"kind": kind, "doc": doc, **bounds})


def _section(cls: type[Any], doc: str) -> Any:
    return field(default_factory=cls, metadata={"kind": "section", "cls": cls, "doc": doc})


_PRIORITIES = ("high", "normal", "low")

# Status ranges (inclusive); "2xx" parses to ((200, 299),).
StatusRanges = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class ListenSettings:
    host: str = _f("127.0.0.1", "str", "address of the data listener (0.0.0.0 for all interfaces)")
    port: int = _f(8080, "int", "data port (0 = pick a free one)", min=0, max=65535)
    backlog: int = _f(2048, "int", "listen(2) backlog", min=1)
    shutdown_grace: float = _f(30.0, "duration", "on SIGTERM, how long open requests may finish", min=0)
    access_log: bool = _f(False, "bool", "log one line per request")
    trusted_proxies: tuple[str, ...] = _f(
        (), "strings", "CIDRs of proxies whose X-Forwarded-For names the client (in records and logs)"
    )


@dataclass(frozen=True, slots=True)
class AdminSettings:
    enabled: bool = _f(True, "bool", "serve /metrics, /healthz, /readyz and /admin/*")
    host: str = _f("127.0.0.1", "str", "admin address; keep it off public interfaces")
    port: int = _f(9901, "int", "admin port (0 = pick a free one)", min=0, max=65535)
    token: str = _f("", "secret", "bearer token required by /admin/* (env HAPROXY_AI_ADMIN_TOKEN)")


@dataclass(frozen=True, slots=True)
class ActiveCheckSettings:
    enabled: bool = _f(True, "bool", "probe each backend periodically")
    method: str = _f("GET", "choice", "probe method", choices=("GET", "HEAD", "POST"))
    path: str = _f("/health", "path", "probe path (ignored when `model` is set)")
    expected_statuses: StatusRanges = _f(((200, 299),), "statuses", "statuses that pass, e.g. 2xx, 200-204, [200, 3xx]")
    body_contains: str = _f("", "str", "the probe body must contain this text (empty = any body)")
    model: str = _f("", "str", "probe GET /v1/models instead and require this model id to be listed")
    interval: float = _f(2.0, "duration", "time between probes of a steady backend", gt=0)
    fast_interval: float = _f(0.5, "duration", "time between probes while a backend is down or changing", gt=0)
    timeout: float = _f(1.0, "duration", "a probe slower than this fails", gt=0)
    rise: int = _f(2, "int", "consecutive passes to mark a backend up", min=1, max=100)
    fall: int = _f(3, "int", "consecutive failures to mark a backend down", min=1, max=100)
    jitter: float = _f(
        0.1, "float", "random +- fraction of the interval (sidecars' probes must not align)", min=0, max=1
    )


@dataclass(frozen=True, slots=True)
class PassiveSettings:
    enabled: bool = _f(True, "bool", "eject backends on failures seen in live traffic")
    consecutive_failures: int = _f(5, "int", "eject after this many failures in a row (0 = off)", min=0)
    failure_rate: float = _f(0.5, "float", "eject when the failure fraction in the window reaches this", gt=0, max=1)
    failure_rate_window: float = _f(30.0, "duration", "sliding window for the failure rate", gt=0)
    failure_rate_min_requests: int = _f(20, "int", "the rate counts only with at least this many requests", min=1)
    base_ejection_time: float = _f(30.0, "duration", "first ejection length; the n-th lasts n times this", gt=0)
    max_ejection_time: float = _f(300.0, "duration", "cap on one ejection's length", gt=0)
    max_ejection_percent: float = _f(50.0, "float", "never eject more of the pool than this (min. one)", min=0, max=100)
    throttle_is_failure: bool = _f(False, "bool", "count 429 as a failure (default: back-pressure, not failure)")
    stall_timeout: float = _f(30.0, "duration", "a stream silent this long after headers counts as a failure", gt=0)
    slow_first_byte_factor: float = _f(
        10.0, "float", "a first byte this many times slower than the pool's norm is a failure (0 = off)", min=0
    )
    slow_first_byte_min: float = _f(5.0, "duration", "... and only when slower than this absolute floor", min=0)
    max_cooldown: float = _f(60.0, "duration", "cap on a Retry-After cooldown", min=0)


@dataclass(frozen=True, slots=True)
class HealthSettings:
    active: ActiveCheckSettings = _section(ActiveCheckSettings, "active HTTP probes")
    passive: PassiveSettings = _section(PassiveSettings, "outlier detection from live traffic")
    panic_threshold: float = _f(
        0.5, "float", "below this routable fraction, balance over every enabled backend (0 = never)", min=0, max=1
    )
    slow_start: float = _f(30.0, "duration", "after recovery, weight ramps from 10% to full over this (0 = off)", min=0)
    history_size: int = _f(100, "int", "state transitions kept per backend", min=1, max=100_000)


@dataclass(frozen=True, slots=True)
class BackendSettings:
    url: str = _f("", "str", "http(s)://host:port[/base-path] of the replica")
    name: str = _f("", "str", "unique name (default: host:port)")
    weight: int = _f(1, "int", "relative share of traffic", gt=0, max=1_000_000)
    health_check: tuple[tuple[str, Any], ...] = _f(
        (), "overrides", "per-backend overrides of health.active keys", cls=ActiveCheckSettings
    )


_BALANCERS = ("p2c", "round_robin", "hash", "load_aware")


@dataclass(frozen=True, slots=True)
class BalancerSettings:
    type: str = _f(
        "p2c",
        "choice",
        "p2c (peak-EWMA + in-flight), round_robin, hash (affinity with bounded load) or load_aware (replica metrics)",
        choices=_BALANCERS,
    )
    ewma_decay: float = _f(10.0, "duration", "p2c: how fast a replica that sped up is trusted again", gt=0)
    cost_tolerance: float = _f(
        0.2, "float", "p2c: keep the weighted first pick unless the other is this much cheaper", min=0
    )
    hash_key: str = _f(
        "header:x-session-id",
        "hash_key",
        "hash: what a request is hashed on: header:NAME, prompt (its first hash_prefix_chars) or system_prompt",
    )
    hash_prefix_chars: int = _f(1024, "int", "hash: characters of the prompt that form the key", min=1)
    hash_balance_factor: float = _f(
        1.25, "float", "hash: no replica takes more than this x the mean in-flight load (0 = unbounded)", min=0
    )
    hash_fallback: str = _f(
        "p2c", "choice", "hash: balancer for requests without a key", choices=("p2c", "round_robin", "load_aware")
    )


@dataclass(frozen=True, slots=True)
class ScrapeSettings:
    enabled: bool = _f(False, "bool", "scrape each replica's Prometheus metrics for load_aware and hash picks")
    path: str = _f("/metrics", "path", "the replicas' metrics path")
    interval: float = _f(0.25, "duration", "time between scrapes of one replica", gt=0)
    timeout: float = _f(0.5, "duration", "a scrape slower than this fails", gt=0)
    stale_after: float = _f(1.0, "duration", "older metrics count as saturated", gt=0)
    waiting_metrics: tuple[str, ...] = _f(
        ("vllm:num_requests_waiting", "tgi_queue_size"), "strings", "gauges of requests queued in the engine (summed)"
    )
    running_metrics: tuple[str, ...] = _f(
        ("vllm:num_requests_running", "tgi_batch_current_size"), "strings", "gauges of requests in the running batch"
    )
    kv_cache_metrics: tuple[str, ...] = _f(
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), "strings", "gauges of KV-cache use, 0..1 (max)"
    )
    max_waiting: float = _f(8.0, "float", "a replica with this many requests queued is saturated", gt=0)
    max_kv_cache: float = _f(0.9, "float", "a replica whose KV cache is this full is saturated", gt=0, max=1)
    queue_weight: float = _f(1.0, "float", "load_aware: weight of queue depth (waiting / max_waiting)", min=0)
    kv_cache_weight: float = _f(1.0, "float", "load_aware: weight of KV-cache use (kv / max_kv_cache)", min=0)


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    client: str = _f("aiohttp", "choice", "aiohttp (fast path) or httpx", choices=("aiohttp", "httpx"))
    max_connections_per_backend: int = _f(512, "int", "connection pool size per replica", min=1)
    keepalive_timeout: float = _f(
        4.0, "duration", "close idle pooled connections after this; keep below the replicas' own (5s in uvicorn)", gt=0
    )
    backend_header: bool = _f(True, "bool", "add x-haproxy-ai-backend: NAME to responses")
    server_timing: bool = _f(True, "bool", "add Server-Timing: proxy;dur=..., upstream;dur=... to responses")


@dataclass(frozen=True, slots=True)
class TimeoutSettings:
    connect: float = _f(5.0, "duration", "TCP connect to a replica", gt=0)
    first_byte: float = _f(300.0, "duration", "request sent -> response headers (a first token can take long)", gt=0)
    idle: float = _f(120.0, "duration", "longest gap between two response body chunks", gt=0)
    total: float = _f(1800.0, "duration", "whole request including the streamed body (0 = no limit)", min=0)
    client_header: float = _f(10.0, "duration", "receive a request's line and headers within this, else 408", gt=0)
    client_body: float = _f(30.0, "duration", "longest gap while receiving a request body, else 408", gt=0)
    client_send: float = _f(
        60.0, "duration", "a streaming client that reads nothing this long is cut off (the replica stops)", gt=0
    )
    deadline_header: str = _f(
        "x-request-timeout", "str", "request header that may shorten the total deadline, e.g. 30s ('' = ignore)"
    )
    forward_deadline_header: str = _f("", "str", "send the remaining deadline (seconds) upstream in this header")


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_request_body: int = _f(10 * 1024 * 1024, "size", "larger request bodies get 413", min=0)
    max_url_bytes: int = _f(8192, "size", "longer request targets get 414", min=256)
    max_header_count: int = _f(100, "int", "requests with more header fields get 431", min=8, max=10_000)
    max_header_bytes: int = _f(32768, "size", "requests whose header fields total more get 431", min=1024)
    max_in_flight: int = _f(0, "int", "requests in the proxy at once; more wait in the queue (0 = no limit)", min=0)
    backend_max_in_flight: int = _f(0, "int", "per backend (HAProxy maxconn); more wait in the queue (0 = none)", min=0)
    max_queue: int = _f(1024, "int", "waiting requests; when full the lowest priority is shed with 503", min=0)
    queue_timeout: float = _f(10.0, "duration", "longest wait in the queue before a 503", gt=0)
    priority_header: str = _f("x-priority", "str", "request header carrying high, normal or low")
    default_priority: str = _f("normal", "choice", "priority of requests without the header", choices=_PRIORITIES)


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    ratio: float = _f(0.2, "float", "extra attempts allowed per request over the window", min=0)
    min_per_second: float = _f(10.0, "float", "extra attempts always allowed per second", min=0)
    window: float = _f(10.0, "duration", "sliding window the ratio is measured over", gt=0)


@dataclass(frozen=True, slots=True)
class RetrySettings:
    enabled: bool = _f(True, "bool", "retry failed attempts on another backend")
    attempts: int = _f(3, "int", "attempts in total, the first included", min=1, max=10)
    per_try_timeout: float = _f(0.0, "duration", "response headers per attempt (0 = timeouts.first_byte)", min=0)
    retry_on: tuple[str, ...] = _f(
        ("connect_failed", "connect_timeout", "reset", "first_byte_timeout"),
        "words",
        "failures before headers that are retried",
        choices=("connect_failed", "connect_timeout", "reset", "first_byte_timeout"),
    )
    statuses: StatusRanges = _f(
        ((500, 500), (502, 504)), "statuses", "response statuses that are retried (429 is opt-in)"
    )
    methods: tuple[str, ...] = _f(
        ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST"),
        "words",
        "methods that may be replayed (inference POSTs are stateless)",
        choices=("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST", "PATCH", "TRACE"),
    )
    opt_out_header: str = _f("x-haproxy-ai-no-retry", "str", "a request with this header is never retried or hedged")
    backoff_base: float = _f(0.025, "duration", "first retry waits up to this (full jitter), doubling", min=0)
    backoff_max: float = _f(0.25, "duration", "cap on one backoff", min=0)
    budget: BudgetSettings = _section(BudgetSettings, "retries <= ratio x requests + min_per_second")


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    enabled: bool = _f(False, "bool", "send a second attempt when the first is slow; the first answer wins")
    delay: tuple[str, float] = _f(
        ("percentile", 95.0), "delay", "fixed (200ms) or a percentile of recent time to first byte (p95)"
    )
    min_delay: float = _f(0.05, "duration", "never hedge sooner than this", min=0)
    max_hedges: int = _f(1, "int", "extra attempts per request", min=1, max=4)
    min_samples: int = _f(20, "int", "adaptive delay: first-byte samples needed before hedging", min=1)
    brownout_threshold: float = _f(
        0.5, "float", "stop hedging while more than this fraction of requests would hedge", gt=0, max=1
    )
    methods: tuple[str, ...] = _f(
        ("GET", "POST"), "words", "methods that may be hedged", choices=("GET", "HEAD", "OPTIONS", "POST", "PUT")
    )
    budget: BudgetSettings = field(
        default_factory=lambda: BudgetSettings(ratio=0.1, min_per_second=1.0),
        metadata={"kind": "section", "cls": BudgetSettings, "doc": "hedges <= ratio x requests + min_per_second"},
    )


@dataclass(frozen=True, slots=True)
class AvailabilitySettings:
    min_healthy: int = _f(1, "int", "the pool is up while at least this many backends are healthy", min=1)
    repair_crews: int = _f(0, "int", "repairs at a time in the model (0 = every replica independently)", min=0)
    target: float = _f(0.9999, "float", "availability target for the replicas-needed what-if", gt=0, max=1)


_SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key")
_SECRET_PARAMS = ("key", "api_key", "api-key", "apikey", "access_token", "token", "sig", "signature")
# Well-known credential shapes: OpenAI/Anthropic-style keys, bearer tokens, AWS access key ids,
# Hugging Face and GitHub tokens, Google API keys.
_SECRET_PATTERNS = (
    r"\bsk-[A-Za-z0-9_-]{16,}",
    r"\b(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"\bhf_[A-Za-z0-9]{30,}",
    r"\bgh[pousr]_[A-Za-z0-9]{36,}",
    r"\bAIza[0-9A-Za-z_-]{35}",
)


@dataclass(frozen=True, slots=True)
class RedactSettings:
    headers: tuple[str, ...] = _f(_SECRET_HEADERS, "strings", "header values replaced (case-insensitive names)")
    query_params: tuple[str, ...] = _f(_SECRET_PARAMS, "strings", "query parameter values replaced")
    body_fields: tuple[str, ...] = _f(
        (), "strings", "JSON body fields replaced, as dotted paths with * wildcards (user, metadata.*.token)"
    )
    patterns: tuple[str, ...] = _f(_SECRET_PATTERNS, "strings", "regexes replaced wherever they appear")
    replacement: str = _f("[REDACTED]", "str", "what a redacted value becomes")


@dataclass(frozen=True, slots=True)
class SinkSettings:
    type: str = _f("", "choice", "file or postgres", choices=("file", "postgres"))
    name: str = _f("", "str", "unique name, used for its checkpoint and metrics (default: the type)")
    dir: str = _f("", "str", "file: directory that receives closed segments (e.g. a backup volume)")
    compress: bool = _f(True, "bool", "file: gzip the segments it writes")
    dsn: str = _f("", "secret", "postgres: connection string (or libpq PG* env vars)")
    table: str = _f("haproxy_ai_requests", "str", "postgres: table, created when missing")
    batch_size: int = _f(500, "int", "records per delivery", min=1, max=100_000)
    connect_timeout: float = _f(5.0, "duration", "postgres: connecting", gt=0)
    statement_timeout: float = _f(10.0, "duration", "postgres: one batch insert", gt=0)
    max_backoff: float = _f(30.0, "duration", "longest wait between retries while the sink is down", gt=0)


@dataclass(frozen=True, slots=True)
class MirrorSettings:
    enabled: bool = _f(False, "bool", "record every request/response to the spool (and sinks)")
    spool_dir: str = _f("haproxy-ai-spool", "str", "local spool directory: segment files of JSON lines")
    instance: str = _f("", "str", "this proxy's name in records (default: hostname)")
    sample_rate: float = _f(1.0, "float", "fraction of requests recorded", min=0, max=1)
    paths: tuple[str, ...] = _f(("/",), "strings", "record only requests whose path starts with one of these")
    exclude_paths: tuple[str, ...] = _f((), "strings", "never record requests whose path starts with one of these")
    max_request_body: int = _f(1024 * 1024, "size", "request body bytes kept per record", min=0)
    max_response_body: int = _f(1024 * 1024, "size", "response body bytes kept per record", min=0)
    queue_size: int = _f(10_000, "int", "records waiting for the spool writer", min=1)
    queue_max_bytes: int = _f(64 * 1024 * 1024, "size", "body bytes waiting for the spool writer", min=1)
    on_queue_full: str = _f("drop", "choice", "drop (never slow requests) or block", choices=("drop", "block"))
    fsync_interval: float = _f(0.2, "duration", "longest time a spooled record waits for fsync", gt=0)
    segment_max_bytes: int = _f(64 * 1024 * 1024, "size", "rotate the open segment at this size", min=4096)
    segment_max_age: float = _f(60.0, "duration", "... or at this age, so file sinks receive it", gt=0)
    spool_max_bytes: int = _f(1024 * 1024 * 1024, "size", "bound on the spool's disk use", min=65536)
    on_spool_full: str = _f(
        "drop_newest",
        "choice",
        "drop_newest or drop_oldest (unshipped) records",
        choices=("drop_newest", "drop_oldest"),
    )
    retention: float = _f(
        0.0, "duration", "keep segments this long after every sink has them (0 = delete at once)", min=0
    )
    flush_timeout: float = _f(5.0, "duration", "on shutdown, how long sinks may take to catch up", min=0)
    redact: RedactSettings = _section(RedactSettings, "secrets removed from every record, log and error")
    sinks: tuple[SinkSettings, ...] = field(
        default=(), metadata={"kind": "sinks", "doc": "where spooled records are shipped: [{type: postgres, dsn: ...}]"}
    )


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """One pool: replicas serving the same models, with its own balancer, health, retry and
    hedge settings (each a partial override of the top-level section of that name)."""

    name: str = _f("", "str", "the pool's name (its key under `pools`)")
    backends: tuple[BackendSettings, ...] = field(
        default=(), metadata={"kind": "backends", "doc": "the pool's replicas, like the top-level backends list"}
    )
    models: tuple[str, ...] = _f((), "strings", "models this pool serves (added to those its replicas list)")
    discover_models: bool = _f(True, "bool", "learn the pool's models from its replicas' GET /v1/models")
    balancer: BalancerSettings = _section(BalancerSettings, "overrides of the top-level balancer section")
    scrape: ScrapeSettings = _section(ScrapeSettings, "overrides of the top-level scrape section")
    health: HealthSettings = _section(HealthSettings, "overrides of the top-level health section")
    retry: RetrySettings = _section(RetrySettings, "overrides of the top-level retry section")
    hedge: HedgeSettings = _section(HedgeSettings, "overrides of the top-level hedge section")
    backend_max_in_flight: int = _f(
        0, "int", "per backend of this pool (default: limits.backend_max_in_flight); more wait in the queue", min=0
    )


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """A route: every condition given must match; the first matching route names the pool."""

    pool: str = _f("", "str", "the pool that receives matching requests")
    path_prefix: str = _f("", "str", "the request path starts with this ('' = any)")
    methods: tuple[str, ...] = _f(
        (),
        "words",
        "the request method is one of these (empty = any)",
        choices=("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"),
    )
    headers: tuple[tuple[str, str], ...] = field(
        default=(), metadata={"kind": "headers", "doc": "header: value pairs that must all match (values may be globs)"}
    )
    model: tuple[str, ...] = _f((), "strings", "the body's `model` is one of these names or globs (llama-*)")


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    routes: tuple[RouteSettings, ...] = field(
        default=(), metadata={"kind": "routes", "doc": "first match wins: [{model: llama-*, pool: llama}, ...]"}
    )
    models: tuple[tuple[str, str], ...] = field(
        default=(), metadata={"kind": "model_map", "doc": "model name or glob -> pool, tried after routes"}
    )
    default_pool: str = _f("", "str", "pool for requests without a model that match no route (default: the first)")
    unknown_model: str = _f(
        "reject",
        "choice",
        "a model no pool serves: reject (404 listing the models) or default (send to default_pool)",
        choices=("reject", "default"),
    )
    serve_models: bool = _f(True, "bool", "answer GET /v1/models with the union of every pool's models")
    models_refresh: float = _f(30.0, "duration", "how long a pool's fetched model list is trusted", gt=0)
    models_timeout: float = _f(2.0, "duration", "fetching a replica's /v1/models", gt=0)


@dataclass(frozen=True, slots=True)
class Settings:
    listen: ListenSettings = field(default_factory=ListenSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    backends: tuple[BackendSettings, ...] = ()
    balancer: BalancerSettings = field(default_factory=BalancerSettings)
    scrape: ScrapeSettings = field(default_factory=ScrapeSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    hedge: HedgeSettings = field(default_factory=HedgeSettings)
    availability: AvailabilitySettings = field(default_factory=AvailabilitySettings)
    mirror: MirrorSettings = field(default_factory=MirrorSettings)
    # Named pools; empty means one pool, "default", made of `backends` and the top-level sections.
    pools: tuple[PoolSettings, ...] = ()
    routing: RoutingSettings = field(default_factory=RoutingSettings)

    @property
    def routed(self) -> bool:
        """Whether requests are routed between named pools (otherwise one pool takes everything)."""
        return bool(self.pools)

    def pool_defaults(self, name: str = "") -> PoolSettings:
        """A pool that inherits the top-level sections: what a named pool's keys override."""
        return PoolSettings(
            name=name,
            balancer=self.balancer,
            scrape=self.scrape,
            health=self.health,
            retry=self.retry,
            hedge=self.hedge,
            backend_max_in_flight=self.limits.backend_max_in_flight,
        )

    def effective_pools(self) -> tuple[PoolSettings, ...]:
        """The pools to run: the named ones, or the one default pool of the top-level sections."""
        if self.pools:
            return self.pools
        return (dataclasses.replace(self.pool_defaults("default"), backends=self.backends, discover_models=False),)


SECTIONS: dict[str, type[Any]] = {
    "listen": ListenSettings,
    "admin": AdminSettings,
    "balancer": BalancerSettings,
    "scrape": ScrapeSettings,
    "upstream": UpstreamSettings,
    "timeouts": TimeoutSettings,
    "limits": LimitSettings,
    "health": HealthSettings,
    "retry": RetrySettings,
    "hedge": HedgeSettings,
    "availability": AvailabilitySettings,
    "mirror": MirrorSettings,
    "routing": RoutingSettings,
}

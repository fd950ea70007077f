"""The config schema: frozen dataclasses, one per top-level section.

Each field's metadata names its kind (how to parse it), a one-line doc, and its bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SECTIONS",
    "AdminSettings",
    "BackendSettings",
    "BalancerSettings",
    "HealthSettings",
    "LimitSettings",
    "ListenSettings",
    "PassiveSettings",
    "Settings",
    "StatusRanges",
    "TimeoutSettings",
    "UpstreamSettings",
]


def _f(default: Any, kind: str, doc: str, **bounds: Any) -> Any:
    return field(default=default, metadata={"kind": kind, "doc": doc, **bounds})


def _section(cls: type[Any], doc: str) -> Any:
    return field(default_factory=cls, metadata={"kind": "section", "cls": cls, "doc": doc})


# Status ranges (inclusive); "2xx" parses to ((200, 299),).
StatusRanges = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class ListenSettings:
    host: str = _f("127.0.0.1", "str", "address of the data listener (0.0.0.0 for all interfaces)")
    port: int = _f(8080, "int", "data port (0 = pick a free one)", min=0, max=65535)
    backlog: int = _f(2048, "int", "listen(2) backlog", min=1)
    shutdown_grace: float = _f(30.0, "duration", "on SIGTERM, how long open requests may finish", min=0)
    access_log: bool = _f(False, "bool", "log one line per request")


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


@dataclass(frozen=True, slots=True)
class BalancerSettings:
    type: str = _f("p2c", "choice", "p2c (peak-EWMA + in-flight) or round_robin", choices=("p2c", "round_robin"))
    ewma_decay: float = _f(10.0, "duration", "p2c: how fast a replica that sped up is trusted again", gt=0)
    cost_tolerance: float = _f(
        0.2, "float", "p2c: keep the weighted first pick unless the other is this much cheaper", min=0
    )


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


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_request_body: int = _f(10 * 1024 * 1024, "size", "larger request bodies get 413", min=0)


@dataclass(frozen=True, slots=True)
class Settings:
    listen: ListenSettings = field(default_factory=ListenSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    backends: tuple[BackendSettings, ...] = ()
    balancer: BalancerSettings = field(default_factory=BalancerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    health: HealthSettings = field(default_factory=HealthSettings)


SECTIONS: dict[str, type[Any]] = {
    "listen": ListenSettings,
    "admin": AdminSettings,
    "balancer": BalancerSettings,
    "upstream": UpstreamSettings,
    "timeouts": TimeoutSettings,
    "limits": LimitSettings,
    "health": HealthSettings,
}

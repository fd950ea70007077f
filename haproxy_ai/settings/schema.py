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
    "LimitSettings",
    "ListenSettings",
    "Settings",
    "TimeoutSettings",
    "UpstreamSettings",
]


def _f(default: Any, kind: str, doc: str, **bounds: Any) -> Any:
    return field(default=default, metadata={"kind": kind, "doc": doc, **bounds})


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


@dataclass(frozen=True, slots=True)
class BackendSettings:
    url: str = _f("", "str", "http(s)://host:port[/base-path] of the replica")
    name: str = _f("", "str", "unique name (default: host:port)")
    weight: int = _f(1, "int", "relative share of traffic", gt=0, max=1_000_000)


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


SECTIONS: dict[str, type[Any]] = {
    "listen": ListenSettings,
    "admin": AdminSettings,
    "balancer": BalancerSettings,
    "upstream": UpstreamSettings,
    "timeouts": TimeoutSettings,
    "limits": LimitSettings,
}

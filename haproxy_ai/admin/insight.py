"""Read-only views for people: the availability model, the health history, counters, the page."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from ..availability import pool_report

if TYPE_CHECKING:
    from ..app import Proxy

__all__ = ["availability_report", "build_insight_endpoints", "history_export"]

Endpoint = Callable[[Request], Awaitable[Response]]
_REPORT_TTL = 1.0  # seconds: the report is recomputed at most this often (scrapes and page refreshes)


def history_export(proxy: Proxy) -> dict[str, Any]:
    """Every backend's state history, in the format `haproxy-ai availability --history` reads."""
    return {
        "format": "haproxy-ai-history/1",
        "now": proxy.clock.time(),
        "backends": {
            name: {"since": since, "state": state, "transitions": [list(t) for t in transitions]}
            for name, (since, transitions, state) in proxy.health.histories().items()
        },
    }


def availability_report(proxy: Proxy, at: float | None = None) -> dict[str, Any]:
    """The report over the observation window up to now, or up to ``at`` (never later than now)."""
    settings = proxy.settings.availability
    now = proxy.clock.time()
    when = now if at is None else min(at, now)
    options: dict[str, Any] = {
        "k_min": settings.min_healthy,
        "crews": settings.repair_crews or None,
        "target": settings.target,
    }
    report = pool_report(proxy.health.histories(), when, **options)
    if proxy.settings.routed:
        # Pools serve different models: each one's own chance of keeping min_healthy replicas
        # up is what its users see; the top level stays the whole fleet.
        report["pools"] = {
            name: pool_report(histories, when, **options)["pool"]
            for name, histories in proxy.fleet.pool_histories().items()
        }
    return report


class _CachedReport:
    def __init__(self, proxy: Proxy) -> None:
        self._proxy = proxy
        self._at = -_REPORT_TTL
        self._report: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._at >= _REPORT_TTL:
            self._report = availability_report(self._proxy)
            self._at = now
        return self._report


def _counters(proxy: Proxy) -> dict[str, Any]:
    """Request, retry, hedge and shed counters from the metrics registry, as plain JSON."""
    wanted = {
        "haproxy_ai_requests_total": ("requests", "code"),
        "haproxy_ai_retries_total": ("retries", "reason"),
        "haproxy_ai_hedges_total": ("hedges", "result"),
        "haproxy_ai_shed_requests_total": ("shed", "priority"),
    }
    out: dict[str, Any] = {key: {} for key, _ in wanted.values()}
    out["client_disconnects"] = 0
    out["truncated"] = 0
    for family in proxy.metrics.registry.collect():
        for sample in family.samples:
            if sample.name in wanted:
                key, label = wanted[sample.name]
                value = sample.labels.get(label, "")
                out[key][value] = out[key].get(value, 0) + int(sample.value)
            elif sample.name == "haproxy_ai_client_disconnects_total":
                out["client_disconnects"] = int(sample.value)
            elif sample.name == "haproxy_ai_truncated_responses_total":
                out["truncated"] = int(sample.value)
    return out


def build_insight_endpoints(proxy: Proxy) -> dict[str, Endpoint]:
    cached = _CachedReport(proxy)
    page: list[bytes] = []
    proxy.metrics.track_availability(lambda: cached.get())

    async def availability(request: Request) -> Response:
        at = request.query_params.get("at")
        if at is None:
            return JSONResponse(cached.get())
        try:
            when = float(at)
        except ValueError:
            return JSONResponse({"error": {"message": "'at' must be epoch seconds", "code": "invalid_at"}}, 400)
        # "As of" a moment: reproduces a report computed elsewhere from an exported history.
        return JSONResponse(availability_report(proxy, when))

    async def history(request: Request) -> Response:
        return JSONResponse(history_export(proxy))

    async def stats(request: Request) -> Response:
        return JSONResponse(_counters(proxy))

    async def status_page(request: Request) -> Response:
        # The page holds no data: it fetches the guarded JSON endpoints with the token the user enters.
        if not page:
            page.append(resources.files(__package__).joinpath("page.html").read_bytes())
        return HTMLResponse(page[0], headers={"cache-control": "no-store"})

    return {"availability": availability, "history": history, "stats": stats, "page": status_page}

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..settings import settings_to_dict

if TYPE_CHECKING:
    from ..app import Proxy

__all__ = ["build_admin_app"]


def build_admin_app(proxy: Proxy) -> Starlette:
    """Admin endpoints for one proxy instance. Read-only: nothing here changes state on GET."""

    async def healthz(request: Request) -> Response:
        # Liveness: the process and its event loop answer.
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        # Readiness: take traffic only if a backend is routable and we are not draining.
        routable = len(proxy.registry.snapshot().routable)
        if proxy.draining:
            return PlainTextResponse("draining\n", status_code=503)
        if not proxy.started:
            return PlainTextResponse("starting\n", status_code=503)
        if routable == 0:
            return PlainTextResponse("no routable backend\n", status_code=503)
        return PlainTextResponse(f"ready: {routable} routable backend(s)\n")

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(proxy.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def backends(request: Request) -> Response:
        snapshot = proxy.registry.snapshot()
        routable = set(snapshot.routable)
        rows: list[dict[str, Any]] = []
        for b in snapshot.backends:
            ewma = b.stats.ewma
            rows.append(
                {
                    "name": b.name,
                    "url": b.url,
                    "weight": b.weight,
                    "routable": b in routable,
                    "inflight": b.stats.inflight,
                    "requests": b.stats.requests,
                    "ewma_ttfb_ms": None if ewma is None else round(ewma * 1000, 3),
                }
            )
        return JSONResponse({"version": snapshot.version, "backends": rows})

    async def config(request: Request) -> Response:
        return JSONResponse(settings_to_dict(proxy.settings))

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/admin/backends", backends),
            Route("/admin/config", config),
        ]
    )

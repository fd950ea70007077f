from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..health import UnknownBackend
from ..settings import ConfigError, settings_to_dict
from .insight import build_insight_endpoints

if TYPE_CHECKING:
    from ..app import Proxy

__all__ = ["build_admin_app"]

log = logging.getLogger("haproxy_ai.admin")

Endpoint = Callable[[Request], Awaitable[Response]]
_MAX_WEIGHT = 1_000_000


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "admin_error", "code": code}}, status_code=status)


def build_admin_app(proxy: Proxy) -> Starlette:
    """Admin endpoints for one proxy instance.

    /healthz, /readyz and /metrics are open (kubelet and Prometheus probe them); every
    /admin/* route requires ``Authorization: Bearer <admin.token>`` when a token is set. GET
    never changes state; changes are POST/PUT.
    """
    token = proxy.settings.admin.token.encode()

    def guarded(endpoint: Endpoint) -> Endpoint:
        async def wrapper(request: Request) -> Response:
            if token:
                header = request.headers.get("authorization", "")
                scheme, _, given = header.partition(" ")
                if scheme.lower() != "bearer" or not given:
                    response = _error(401, "admin token required (Authorization: Bearer ...)", "unauthorized")
                    response.headers["www-authenticate"] = 'Bearer realm="haproxy-ai admin"'
                    return response
                if not hmac.compare_digest(given.strip().encode(), token):
                    return _error(403, "admin token rejected", "forbidden")
            return await endpoint(request)

        return wrapper

    async def healthz(request: Request) -> Response:
        # Liveness: the process and its event loop answer.
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        # Readiness: take traffic only if a backend is routable and we are not draining.
        routable = proxy.fleet.routable_count()
        if proxy.draining:
            return PlainTextResponse("draining\n", status_code=503)
        if not proxy.started:
            return PlainTextResponse("starting\n", status_code=503)
        if routable == 0:
            return PlainTextResponse("no routable backend\n", status_code=503)
        serving = proxy.fleet.serving_pools()
        if not serving:
            # Backends start healthy so traffic is not refused needlessly, but a pod is not
            # ready until a probe has seen a replica answer (a model server may still be loading).
            return PlainTextResponse("waiting for a first passing health probe\n", status_code=503)
        pools = f" in pool(s) {', '.join(serving)}" if proxy.settings.routed else ""
        return PlainTextResponse(f"ready: {routable} routable backend(s){pools}\n")

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(proxy.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def backends(request: Request) -> Response:
        snapshot = proxy.registry.snapshot()
        health = proxy.health
        pools = proxy.fleet.describe_pools()
        return JSONResponse(
            {
                "version": snapshot.version,
                # True when any pool is in panic mode (each pool's own flag is under /admin/pools).
                "panic": any(p["panic"] for p in pools),
                "backends": [health.describe(r) for r in health.records()],
            }
        )

    async def pools(request: Request) -> Response:
        if proxy.fleet.catalog is not None and request.query_params.get("refresh") == "1":
            await proxy.fleet.catalog.refresh(only_stale=False)
        return JSONResponse({"routed": proxy.settings.routed, "pools": proxy.fleet.describe_pools()})

    async def backend(request: Request) -> Response:
        try:
            record = proxy.health.get(request.path_params["name"])
        except UnknownBackend:
            return _unknown(request)
        return JSONResponse(proxy.health.describe(record))

    def action(name: str) -> Endpoint:
        async def act(request: Request) -> Response:
            target = request.path_params["name"]
            try:
                record = getattr(proxy.health, name)(target)
            except UnknownBackend:
                return _unknown(request)
            log.info("admin: %s %s", name, target)
            return JSONResponse(proxy.health.describe(record))

        return act

    async def weight(request: Request) -> Response:
        target = request.path_params["name"]
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            return _error(400, 'body must be JSON like {"weight": 3}', "invalid_json")
        value = body.get("weight") if isinstance(body, dict) else body
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= _MAX_WEIGHT:
            return _error(400, f'"weight" must be a number > 0 and <= {_MAX_WEIGHT}, got {value!r}', "invalid_weight")
        try:
            record = proxy.health.set_weight(target, float(value))
        except UnknownBackend:
            return _unknown(request)
        return JSONResponse(proxy.health.describe(record))

    async def reload(request: Request) -> Response:
        try:
            # Reading the file is blocking I/O: off the loop. Applying it is state: on the loop.
            settings = await asyncio.get_running_loop().run_in_executor(None, proxy.load_source)
        except ConfigError as exc:
            return JSONResponse(
                {
                    "error": {
                        "message": "invalid configuration; the running one is unchanged",
                        "type": "admin_error",
                        "code": "invalid_config",
                        "issues": [str(i) for i in exc.issues],
                    }
                },
                status_code=400,
            )
        except RuntimeError as exc:
            return _error(409, str(exc), "reload_unavailable")
        return JSONResponse(proxy.reload(settings))

    async def config(request: Request) -> Response:
        return JSONResponse(settings_to_dict(proxy.settings))

    def _unknown(request: Request) -> Response:
        names = [r.backend.name for r in proxy.health.records()]
        asked = proxy.redactor.message(request.path_params["name"])
        return _error(404, f"no backend named {asked!r}; known: {names}", "unknown_backend")

    async def mirror(request: Request) -> Response:
        if proxy.mirror is None:
            return JSONResponse({"enabled": False})
        return JSONResponse(proxy.mirror.status())

    async def mirror_records(request: Request) -> Response:
        if proxy.mirror is None:
            return _error(404, "mirroring is off (mirror.enabled: false)", "mirror_disabled")
        raw = request.query_params.get("limit", "20")
        if not raw.isdigit() or not 0 < int(raw) <= 100:
            return _error(
                400, f"limit must be an integer from 1 to 100, got {proxy.redactor.message(raw)!r}", "invalid_limit"
            )
        return JSONResponse({"records": proxy.mirror.recent_records(int(raw))})

    insight = build_insight_endpoints(proxy)
    return Starlette(
        routes=[
            Route("/admin/", insight["page"]),
            Route("/admin/availability", guarded(insight["availability"])),
            Route("/admin/history", guarded(insight["history"])),
            Route("/admin/stats", guarded(insight["stats"])),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/admin/backends", guarded(backends)),
            Route("/admin/pools", guarded(pools)),
            Route("/admin/backends/{name}", guarded(backend)),
            Route("/admin/backends/{name}/drain", guarded(action("drain")), methods=["POST"]),
            Route("/admin/backends/{name}/disable", guarded(action("disable")), methods=["POST"]),
            Route("/admin/backends/{name}/enable", guarded(action("enable")), methods=["POST"]),
            Route("/admin/backends/{name}/weight", guarded(weight), methods=["PUT"]),
            Route("/admin/reload", guarded(reload), methods=["POST"]),
            Route("/admin/config", guarded(config)),
            Route("/admin/mirror", guarded(mirror)),
            Route("/admin/mirror/records", guarded(mirror_records)),
        ]
    )

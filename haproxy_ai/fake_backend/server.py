"""``FakeBackend``: the aiohttp app, its lifecycle, and the non-inference endpoints.

``/health``, ``/v1/models``, ``/metrics``, ``/_echo``, ``/_stats`` and ``/_fault`` are answered
here; ``/v1/chat/completions`` and ``/v1/completions`` go to ``InferenceHandler``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from .faults import FaultSwitch
from .inference import InferenceHandler
from .metrics import CONTENT_TYPE, EngineMetrics, MetricsExposition
from .openai_format import error_response
from .options import FakeBackendOptions
from .scheduler import Scheduler
from .stats import FakeStats

__all__ = ["FakeBackend", "serve_forever"]

# Bound how long stop() waits for a handler after cancelling it; cancellation is immediate
# in practice, this is only a backstop against a handler that swallows it.
_SHUTDOWN_TIMEOUT = 1.0
# The default options; frozen, so one shared instance is safe.
_DEFAULT_OPTIONS: Final = FakeBackendOptions()


class FakeBackend:
    """One simulated replica. ``start()`` it inside a running event loop; ``stop()`` when done.

    Call its coroutines on the event loop it runs on; ``set_fault`` and reading ``stats`` are
    also fine from another thread (tests often drive a backend on a background loop).
    """

    def __init__(self, options: FakeBackendOptions = _DEFAULT_OPTIONS) -> None:
        self.options = options
        self.stats = FakeStats()
        self._faults = FaultSwitch()
        self._scheduler = Scheduler(options, self.stats)
        engine = EngineMetrics()
        self._inference = InferenceHandler(options, self.stats, self._faults, self._scheduler, engine)
        self._metrics = MetricsExposition(options.model, self._scheduler, engine)
        self._created = int(time.time())
        self._runner: web.AppRunner | None = None
        self._host = ""
        self._port = 0
        self._label = options.name

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind ``host:port`` (0 = an ephemeral port, see ``port``/``url``) and start serving."""
        if self._runner is not None:
            raise RuntimeError("FakeBackend is already started")
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_post("/v1/chat/completions", self._inference.chat)
        app.router.add_post("/v1/completions", self._inference.completions)
        app.router.add_route("*", "/_echo", self._echo)
        app.router.add_route("*", "/_echo/{tail:.*}", self._echo)
        app.router.add_get("/_stats", self._get_stats)
        app.router.add_post("/_stats/reset", self._reset_stats)
        app.router.add_get("/_fault", self._get_fault)
        app.router.add_post("/_fault", self._post_fault)
        app.on_response_prepare.append(self._stamp)

        # Our own socket rather than TCPSite: "localhost" with port 0 could otherwise bind IPv4
        # and IPv6 on two different ephemeral ports, and we must report exactly one.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=128)
        # handler_cancellation: a client disconnect cancels its handler, which is how
        # `cancelled` is counted. shutdown_timeout: stop() must not wait on a hung request.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self._host = host
        self._port = sock.getsockname()[1]
        self._label = self.options.name or f"{host}:{self._port}"

    async def stop(self) -> None:
        """Stop listening and drop every open connection now (in-flight requests count as
        cancelled). Safe to call twice or before ``start()``."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        server = runner.server
        if server is not None:
            for conn in server.connections:
                # Aborting fires connection_lost, which (handler_cancellation) cancels a hung
                # handler at once; a graceful close would wait for it.
                if conn.transport is not None:
                    conn.transport.abort()
        await runner.cleanup()

    @property
    def port(self) -> int:
        """The bound port; valid after ``start()``."""
        if not self._port:
            raise RuntimeError("FakeBackend is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the listener, without a trailing slash."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def name(self) -> str:
        """The x-fake-backend header value: ``options.name``, else ``host:port``."""
        return self._label

    # -- faults ---------------------------------------------------------------------------------

    @property
    def fault(self) -> str:
        """The current fault mode (``ok`` when none)."""
        return self._faults.current.mode

    def set_fault(self, mode: str, **params: Any) -> None:
        """Switch fault mode, exactly like ``POST /_fault``. Raises ValueError if invalid.

        ``count=N`` limits the fault to the next N inference requests, then it reverts to ``ok``.
        Takes effect for requests that arrive afterwards; safe to call from another thread.
        """
        self._faults.set(mode, params)

    # -- handlers -------------------------------------------------------------------------------

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-fake-backend"] = self._label

    async def _health(self, request: web.Request) -> web.StreamResponse:
        fault = self._faults.current
        if fault.mode == "error":
            return error_response(fault.status, "injected fault: error")
        return web.json_response({"status": "ok"})

    def _model_object(self) -> dict[str, Any]:
        return {
            "id": self.options.model,
            "object": "model",
            "created": self._created,
            "owned_by": "haproxy-ai-fake",
        }

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"object": "list", "data": [self._model_object()]})

    async def _model(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["model"] != self.options.model:
            return error_response(
                404, f"The model {request.match_info['model']!r} does not exist", code="model_not_found"
            )
        return web.json_response(self._model_object())

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        raw_path = request.raw_path
        return web.json_response(
            {
                "method": request.method,
                "path": raw_path,
                "query": raw_path.partition("?")[2],
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
                "body": body.decode("latin-1"),
                "body_len": len(body),
            }
        )

    async def _get_metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def _stats_body(self) -> dict[str, Any]:
        return {
            **self.stats.snapshot(),
            **self.stats.engine_snapshot(),
            "prefix_cache_blocks": self._scheduler.cache.blocks,
            "kv_cache_usage": self._scheduler.kv_cache_usage,
            "fault": self.fault,
        }

    async def _get_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._stats_body())

    async def _reset_stats(self, request: web.Request) -> web.StreamResponse:
        self.stats.reset()
        return web.json_response(self._stats_body())

    async def _get_fault(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._faults.state())

    async def _post_fault(self, request: web.Request) -> web.StreamResponse:
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return error_response(400, 'body must be a JSON object like {"mode": "error"}', code="invalid_json")
        if not isinstance(payload, dict) or "mode" not in payload:
            return error_response(400, "body must be a JSON object with a 'mode' key", code="invalid_fault")
        params = {k: v for k, v in payload.items() if k != "mode"}
        try:
            self.set_fault(payload["mode"], **params)
        except ValueError as exc:
            return error_response(400, str(exc), code="invalid_fault")
        return web.json_response(self._faults.state())


async def serve_forever(
    options: FakeBackendOptions,
    host: str,
    port: int,
    ready: Callable[[FakeBackend], None] | None = None,
) -> None:
    """Serve until cancelled or sent SIGTERM/SIGINT, then stop the backend. ``ready(backend)`` is
    called once listening. Handling SIGTERM matters as PID 1 in a container, where the default
    action does not apply and the runtime would otherwise wait to kill it."""
    backend = FakeBackend(options)
    await backend.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        if ready is not None:
            ready(backend)
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await backend.stop()

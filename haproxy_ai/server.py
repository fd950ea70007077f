"""Process lifetime: bind the listeners, run the data and admin servers, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn

from .admin import build_admin_app
from .app import Proxy
from .listener import guarded_protocol
from .mirror.redact import install_log_redaction
from .settings import ConfigError, Settings

__all__ = ["ProxyServer", "bind_socket", "configure_logging"]

log = logging.getLogger("haproxy_ai.server")


class _Server(uvicorn.Server):
    """uvicorn.Server whose signals are handled by ProxyServer, so two servers can share a loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _DropIncompleteNotice(logging.Filter):
    # A stream cut short by a failing backend is closed on purpose without its last chunk, and
    # we log that ourselves with the request id; uvicorn's generic line would only add noise.
    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


def tune_gc() -> None:
    """Garbage-collector settings for a long-running proxy process, applied once it is serving.

    Everything built at start (settings, routes, the app, imported modules) lives as long as the
    process: ``gc.freeze`` moves it out of the collector's sight, so full collections stop
    re-scanning it. The request path allocates many short-lived containers (header lists, the
    mirror's record dicts); a larger first-generation threshold collects them in fewer, larger
    batches. Measured with ``loadtests/mirror_cost.py``'s method (two proxies on one core, CPU
    per request): -4 to -6% from the freeze, a further -7 to -9% from the threshold, mirroring on or
    off. Reference cycles are still collected; memory grows by at most the young generation.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.error").addFilter(_DropIncompleteNotice())
    # httpx logs every request at INFO; probes would flood the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """Bind a listening TCP socket (port 0 = an ephemeral port; read it from getsockname())."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class ProxyServer:
    """Runs one proxy's data listener and (optionally) its admin listener in the current loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        proxy: Proxy | None = None,
        data_socket: socket.socket | None = None,
        admin_socket: socket.socket | None = None,
        reloader: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        self.proxy = proxy or Proxy(settings, reloader=reloader)
        # Every log line this process writes goes through the same redaction as the records.
        install_log_redaction(self.proxy.redactor)
        self._background: set[asyncio.Future[None]] = set()
        listen, admin = settings.listen, settings.admin
        self.data_socket = data_socket or bind_socket(listen.host, listen.port, listen.backlog)
        self.admin_socket = admin_socket
        if admin_socket is None and admin.enabled:
            self.admin_socket = bind_socket(admin.host, admin.port)
        limits = settings.limits
        common = dict(
            # httptools with our guards: header deadline, URL/header caps, Host and target checks.
            http=guarded_protocol(
                max_url_bytes=limits.max_url_bytes,
                max_header_count=limits.max_header_count,
                max_header_bytes=limits.max_header_bytes,
                header_timeout=settings.timeouts.client_header,
            ),
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,  # the backend's own Date is passed through
            timeout_graceful_shutdown=math.ceil(listen.shutdown_grace),
            lifespan="on",
            # The peer address must be the real one: uvicorn would otherwise rewrite it from a
            # client-supplied X-Forwarded-For, letting any client spoof what we append.
            proxy_headers=False,
        )
        self._data = _Server(uvicorn.Config(self.proxy, backlog=listen.backlog, **common))  # type: ignore[arg-type]
        self._admin = (
            _Server(uvicorn.Config(build_admin_app(self.proxy), **{**common, "lifespan": "off"}))  # type: ignore[arg-type]
            if self.admin_socket is not None
            else None
        )

    @property
    def data_address(self) -> tuple[str, int]:
        host, port = self.data_socket.getsockname()[:2]
        return host, port

    @property
    def admin_address(self) -> tuple[str, int] | None:
        if self.admin_socket is None:
            return None
        host, port = self.admin_socket.getsockname()[:2]
        return host, port

    @property
    def started(self) -> bool:
        return self._data.started and (self._admin is None or self._admin.started)

    def request_shutdown(self) -> None:
        """Stop accepting, let open requests finish (up to listen.shutdown_grace), then exit."""
        if not self.proxy.draining:
            log.info("draining: no new connections; waiting for open requests to finish")
        self.proxy.draining = True
        self._data.should_exit = True

    async def reload(self) -> None:
        """SIGHUP: re-read the config source and apply it; an invalid one is logged and ignored."""
        proxy = self.proxy
        try:
            settings = await asyncio.get_running_loop().run_in_executor(None, proxy.load_source)
        except ConfigError as exc:
            log.error("reload rejected, the running configuration stays:\n  %s", "\n  ".join(map(str, exc.issues)))
            return
        except RuntimeError as exc:
            log.error("reload: %s", exc)
            return
        proxy.reload(settings)

    def _on_sighup(self) -> None:
        task = asyncio.ensure_future(self.reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def serve(
        self,
        *,
        handle_signals: bool = False,
        on_ready: Callable[[ProxyServer], None] | None = None,
        own_process: bool = False,
    ) -> None:
        """Serve until shut down. ``own_process``: this server is the process (the CLI), so it
        may tune process-wide state such as the garbage collector once it is ready."""
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_shutdown)
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            data = asyncio.create_task(self._data.serve(sockets=[self.data_socket]))
            admin = (
                asyncio.create_task(self._admin.serve(sockets=[self.admin_socket]))
                if self._admin is not None and self.admin_socket is not None
                else None
            )
            if on_ready is not None:
                while not self.started:
                    if data.done() or (admin is not None and admin.done()):
                        break
                    await asyncio.sleep(0.005)
                else:
                    if own_process:
                        tune_gc()
                    on_ready(self)
            try:
                await data
            finally:
                if self._admin is not None and admin is not None:
                    # The admin port outlives the data port so /readyz reports draining meanwhile.
                    self._admin.should_exit = True
                    await admin
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            self.data_socket.close()
            if self.admin_socket is not None:
                self.admin_socket.close()
        if not self._data.started:
            raise RuntimeError("the data listener failed to start (see the log above)")

"""Builds the ASGI apps: the data-path proxy (a plain ASGI callable) and the admin app.

The data path is deliberately not a Starlette route: a plain callable over aiohttp measured
several times faster here (see README, Performance). Its lifespan starts and stops the shared
upstream client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import itertools
import json
import logging
import math
import os
import random
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from .backends import Registry
from .clock import Clock, SystemClock
from .context import RequestContext
from .errors import (
    BodyTooLarge,
    InvalidRequest,
    NoBackendAvailable,
    Overloaded,
    ProxyError,
    TotalTimeout,
    UnknownModel,
    UpstreamReset,
    error_body,
)
from .fleet import Fleet
from .metrics import Metrics
from .mirror.record import Exchange
from .mirror.redact import Redactor
from .mirror.service import Mirror
from .policies import PRIORITIES
from .settings import Settings, parse_duration
from .types import Handler, ProxyRequest, content_length
from .upstream import Upstream, make_upstream

__all__ = ["Proxy", "build_proxy"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("haproxy_ai.proxy")
access_log = logging.getLogger("haproxy_ai.access")

# RFC 9110 §7.6.1 hop-by-hop fields, plus Proxy-Connection (legacy) — never forwarded either way.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Request fields the proxy sets itself (Host is the backend's; the length is recomputed from the
# buffered body; the body is already read, so Expect: 100-continue is answered here).
_REQUEST_DROP = _HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
}
_RESPONSE_DROP = _HOP_BY_HOP | {b"x-haproxy-ai-backend", b"x-request-id"}
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
_JSON_HEADERS = [(b"content-type", b"application/json")]
_PRIORITY = {name.encode(): number for name, number in PRIORITIES.items()}
_WATCH_AFTER = 0.005  # seconds before a request starts watching for its client to disconnect


# Request facts from the one header pass: host, x-forwarded-for, content-length, priority,
# retry opt-out, deadline header.
_Parsed = tuple[bytes | None, bytes | None, bytes | None, int, bool, bytes | None]


class _ClientGone(Exception):
    pass


class _State:
    """Per-request flags shared between the request task and its two timers: the deadline and
    the (lazily started) disconnect watcher."""

    __slots__ = ("_ctx", "_receive", "_task", "_watcher", "complete", "exchange", "started", "status", "timed_out")

    def __init__(
        self, task: asyncio.Task[Any], ctx: RequestContext, receive: Receive, exchange: Exchange | None
    ) -> None:
        self._task = task
        self._ctx = ctx
        self._receive = receive
        self.exchange = exchange
        self._watcher: asyncio.Task[None] | None = None
        self.complete = False  # the final body message is being sent
        self.started = False  # response headers went to the client
        self.status = 0
        self.timed_out = False

    def start_watcher(self) -> None:
        if not self.complete:
            self._watcher = asyncio.ensure_future(self._watch())

    def stop_watcher(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if not self.complete and not self.timed_out:
                    self._ctx.client_gone = True
                    self._task.cancel()
                return

    def deadline_hit(self) -> None:
        if not self.complete and not self._ctx.client_gone:
            self.timed_out = True
            self._ctx.deadline_hit = True
            self._task.cancel()


class Proxy:
    """The data-path ASGI app and the runtime it owns (registry, upstream client, metrics)."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        upstream: Upstream | None = None,
        reloader: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        self.reloader = reloader
        self.clock = clock or SystemClock()
        rng = rng or random.Random()
        self.metrics = Metrics()
        # One redaction function for records, logs, admin output and error messages.
        self.redactor = Redactor.from_settings(settings.mirror.redact)
        self.mirror = (
            Mirror(settings.mirror, registry=self.metrics.registry, clock=self.clock, rng=rng, redactor=self.redactor)
            if settings.mirror.enabled
            else None
        )
        self.upstream = upstream or make_upstream(settings, self.clock)
        # Every pool's registry, health and pipeline, and the router in front of them.
        self.fleet = Fleet(settings, upstream=self.upstream, clock=self.clock, metrics=self.metrics, rng=rng)
        self.health = self.fleet  # the admin API's view of every backend
        self.registry: Registry = self.fleet.registry
        self.pipeline: Handler = self.fleet.handler
        self.catalog = self.fleet.catalog if settings.routing.serve_models else None
        # Without named pools every request is the one pool's; the router names it otherwise.
        self._single_pool = "" if settings.routed else "default"
        self.draining = False
        self.started = False
        self._recording = 0  # requests with a mirror record not yet offered
        self._max_body = settings.limits.max_request_body
        self._body_idle = settings.timeouts.client_body
        self._send_timeout = settings.timeouts.client_send
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in settings.listen.trusted_proxies)
        self._total = settings.timeouts.total or math.inf
        self._backend_header = settings.upstream.backend_header
        self._server_timing = settings.upstream.server_timing
        self._access_log = settings.listen.access_log
        # Request ids: a random per-process prefix and a counter — unique without a syscall per
        # request (os.urandom measured ~3% of the proxy's CPU at 5,000 req/s).
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()
        # Control headers, resolved once: name -> 0 priority, 1 retry opt-out, 2 deadline.
        self._control: dict[bytes, int] = {}
        for kind, name in enumerate(
            (settings.limits.priority_header, settings.retry.opt_out_header, settings.timeouts.deadline_header)
        ):
            if name:
                self._control.setdefault(name.lower().encode("latin-1"), kind)
        self._default_priority = _PRIORITY[settings.limits.default_priority.encode()]

    # -- lifespan -------------------------------------------------------------------------------

    async def startup(self) -> None:
        if not self.started:
            if self.mirror is not None:
                await self.mirror.start()  # first: a spool that cannot be used stops the start
            await self.upstream.start()
            await self.fleet.start()
            self.started = True

    async def shutdown(self) -> None:
        if self.started:
            await self.fleet.stop()
            await self.upstream.aclose()
            if self.mirror is not None:
                # Last, once every request has offered its record: the server cancels the ones
                # that outlived the shutdown grace without waiting for them to unwind.
                for _ in range(500):
                    if not self._recording:
                        break
                    await asyncio.sleep(0.01)
                await self.mirror.close()
            self.started = False

    def load_source(self) -> Settings:
        """Re-read the configuration the process was started from (blocking: run it off the loop).

        Raises ConfigError for an invalid config and RuntimeError when there is no source."""
        if self.reloader is None:
            raise RuntimeError("this proxy was not started from a reloadable configuration")
        return self.reloader()

    def reload(self, settings: Settings) -> dict[str, list[str]]:
        """Apply a re-read config without dropping in-flight requests.

        Backends are added, reweighted or drained-then-removed, in each pool. Other sections,
        and pools added, removed or changed other than in their backends, are read only at start;
        a change to them is reported under "restart_required" and not applied.
        """
        old_pools = {p.name: p for p in self.settings.effective_pools()}
        new_pools = {p.name: p for p in settings.effective_pools()}
        sections = ("listen", "admin", "balancer", "scrape", "upstream", "timeouts", "limits", "health", "routing")
        restart = [name for name in (*sections, "mirror") if getattr(settings, name) != getattr(self.settings, name)]
        changes: dict[str, list[str]] = {"added": [], "removed": [], "reweighted": [], "replaced": []}
        old_owner = {b.name: p.name for p in old_pools.values() for b in p.backends}
        moved = any(old_owner.get(b.name, p.name) != p.name for p in new_pools.values() for b in p.backends)
        if set(old_pools) != set(new_pools) or moved:
            # New pools need their own health, pipeline and routes; a backend that changes pool
            # would have two owners while the old one drains.
            restart.append("pools")
        else:
            if self.settings.routed and any(
                dataclasses.replace(new_pools[n], backends=()) != dataclasses.replace(old_pools[n], backends=())
                for n in new_pools
            ):
                restart.append("pools")
            changes = self.fleet.reconfigure(new_pools.values())
            pools = tuple(dataclasses.replace(p, backends=new_pools[p.name].backends) for p in self.settings.pools)
            self.settings = dataclasses.replace(self.settings, backends=settings.backends, pools=pools)
        if restart:
            log.warning("reload: changes to %s need a restart and were not applied", ", ".join(restart))
        log.info("reload: %s", ", ".join(f"{k} {v}" for k, v in changes.items() if v) or "no backend changes")
        return {**changes, "restart_required": restart}

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # report, so the server refuses to start
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- ASGI entry -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websockets are not proxied
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        clock = self.clock
        received = clock.monotonic()
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()

        # One pass over the request headers.
        headers: list[tuple[str, str]] = []
        host = request_id = forwarded_for = None
        declared_length: bytes | None = None
        connection_tokens: bytes | None = None
        control = self._control
        priority = self._default_priority
        opt_out = False
        deadline_value: bytes | None = None
        for name, value in scope["headers"]:
            kind = control.get(name)
            if kind is not None:
                # Proxy control headers are read here and still forwarded (the replica may use them).
                if kind == 0:
                    priority = _PRIORITY.get(value.strip().lower(), priority)
                elif kind == 1:
                    opt_out = True
                else:
                    deadline_value = value
            if name in _REQUEST_DROP:
                if name == b"host":
                    host = value
                elif name == b"x-request-id":
                    request_id = value
                elif name == b"x-forwarded-for":
                    forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
                elif name == b"content-length":
                    declared_length = value
                elif name == b"transfer-encoding":
                    declared_length = declared_length or b"chunked"  # a body follows
                elif name == b"connection":
                    connection_tokens = value if connection_tokens is None else connection_tokens + b"," + value
                continue
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if connection_tokens is not None:
            # Fields named in Connection are hop-by-hop for this hop only (RFC 9110 §7.6.1).
            named = {t.strip().lower().decode("latin-1") for t in connection_tokens.split(b",")}
            headers = [(k, v) for k, v in headers if k.lower() not in named]

        given = request_id is not None and _REQUEST_ID.fullmatch(request_id) is not None
        rid = (
            request_id.decode("latin-1")
            if given and request_id is not None
            else f"{self._id_prefix}{next(self._ids):016x}"
        )

        parsed: _Parsed = (host, forwarded_for, declared_length, priority, opt_out, deadline_value)
        client = scope.get("client")
        peer = client[0] if client else None
        # Who the client is, for records and logs (X-Forwarded-For still gets the real peer).
        origin = self._client_behind(peer, forwarded_for) if self._trusted and peer is not None else peer
        mirror = self.mirror
        exchange = None
        if mirror is not None:
            exchange = mirror.begin(
                received, method, raw_path, scope.get("query_string", b""), scope["headers"], origin
            )
            if exchange is not None:
                # Our own ids are hex; only a client's id can carry a secret.
                exchange.request_id = mirror.redactor.text(rid) if given else rid
        if exchange is None:
            await self._handle(
                scope, receive, send, method, raw_path, headers, rid, received, peer, origin, None, parsed
            )
            return
        assert mirror is not None
        self._recording += 1
        try:
            await self._handle(
                scope, receive, send, method, raw_path, headers, rid, received, peer, origin, exchange, parsed
            )
        except BaseException as exc:
            # Cancelled by the server (the shutdown grace ran out) or a bug: whatever was sent
            # was cut short. A status of 0 means no response was sent at all.
            if exchange.ended == "complete":
                exchange.ended = "truncated"
                exchange.error = exchange.error or (
                    "cancelled: the proxy shut down" if isinstance(exc, asyncio.CancelledError) else "internal error"
                )
            raise
        finally:
            # Exactly one record per request, however it ended.
            exchange.done = clock.monotonic()
            if exchange.status == 0 and exchange.ended == "client_aborted":
                exchange.status = 499
            self._recording -= 1
            if not mirror.offer(exchange) and mirror.blocking:
                await mirror.put(exchange)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        method: str,
        raw_path: bytes,
        headers: list[tuple[str, str]],
        rid: str,
        received: float,
        peer: str | None,
        origin: str | None,
        exchange: Exchange | None,
        parsed: _Parsed,
    ) -> None:
        clock = self.clock
        host, forwarded_for, declared_length, priority, opt_out, deadline_value = parsed
        if method == "CONNECT":
            await self._error(
                send,
                InvalidRequest("CONNECT is not supported: this is a reverse proxy", status=405),
                rid,
                received,
                exchange=exchange,
            )
            return
        if not raw_path.startswith(b"/"):
            await self._error(
                send, InvalidRequest("request target must be an absolute path"), rid, received, exchange=exchange
            )
            return
        if self.catalog is not None and method in ("GET", "HEAD") and raw_path[:10] == b"/v1/models":
            if raw_path == b"/v1/models" or raw_path.startswith(b"/v1/models/"):
                await self._models(send, method, raw_path, rid, received, exchange)
                return

        try:
            body = await self._read_body(receive, declared_length)
        except BodyTooLarge as exc:
            await self._error(send, exc, rid, received, close=True, exchange=exchange)
            return
        except TimeoutError:
            timeout = InvalidRequest(
                f"request body not received: nothing for {self._body_idle:g}s (timeouts.client_body)", status=408
            )
            await self._error(send, timeout, rid, received, close=True, exchange=exchange)
            return
        except _ClientGone:
            self.metrics.client_disconnects.inc()
            self.metrics.response(499, clock.monotonic() - received, self._single_pool)
            if exchange is not None:
                exchange.ended = "client_aborted"
            return
        if exchange is not None:
            exchange.request_body = body

        if peer is not None:
            headers.append(("x-forwarded-for", f"{forwarded_for.decode('latin-1')}, {peer}" if forwarded_for else peer))
        elif forwarded_for is not None:
            headers.append(("x-forwarded-for", forwarded_for.decode("latin-1")))
        headers.append(("x-forwarded-proto", scope.get("scheme", "http")))
        if host is not None:
            headers.append(("x-forwarded-host", host.decode("latin-1")))
        headers.append(("x-request-id", rid))

        query: bytes = scope.get("query_string", b"")
        target = (raw_path + b"?" + query if query else raw_path).decode("latin-1")
        request = ProxyRequest(method, target, headers, body)
        total = self._total
        if deadline_value is not None:
            try:
                total = min(total, parse_duration(deadline_value.decode("latin-1")) or total)
            except ValueError:
                pass  # an unreadable deadline header is ignored, like an absent one
        ctx = RequestContext(
            rid, received, received + total, origin, priority=priority, opt_out=opt_out, pool=self._single_pool
        )

        task = asyncio.current_task()
        assert task is not None
        state = _State(task, ctx, receive, exchange)
        loop = asyncio.get_running_loop()
        # Watch for the client going away while we wait on or stream from the backend, so the
        # upstream request is cancelled and the replica stops generating. The watcher task
        # starts after a short grace: most fast requests finish first and never pay for it,
        # and a client that left meanwhile is still seen the moment the watcher starts.
        watch_handle = loop.call_later(_WATCH_AFTER, state.start_watcher)
        deadline_handle = (
            loop.call_later(max(ctx.deadline - clock.monotonic(), 0.0), state.deadline_hit)
            if ctx.deadline != math.inf
            else None
        )
        try:
            await self._proxy(request, ctx, send, state)
        except asyncio.CancelledError:
            if not (ctx.client_gone or state.timed_out) or task.uncancel() > 0:
                raise
            if state.timed_out and not ctx.client_gone:
                await self._deadline_exceeded(send, ctx, state)
        finally:
            watch_handle.cancel()
            if deadline_handle is not None:
                deadline_handle.cancel()
            state.stop_watcher()
            if exchange is not None:
                exchange.attempts = ctx.attempts
        if ctx.client_gone:
            self.metrics.client_disconnects.inc()
            self.metrics.response(499, clock.monotonic() - received, ctx.pool)
            if exchange is not None:
                exchange.ended = "client_aborted"

    async def _models(
        self, send: Send, method: str, raw_path: bytes, rid: str, received: float, exchange: Exchange | None
    ) -> None:
        """``GET /v1/models[/ID]`` from the union of every pool's models (OpenAI's format)."""
        catalog = self.catalog
        assert catalog is not None
        try:
            # Stale lists are refetched now, within the fetch timeout; the last known ones
            # answer when the replicas are slow or failing.
            async with asyncio.timeout(self.settings.routing.models_timeout + 0.5):
                await catalog.refresh()
        except Exception:
            log.warning("GET /v1/models: refreshing the model lists failed; answering the last known ones")
        if raw_path == b"/v1/models":
            doc: dict[str, Any] = {"object": "list", "data": catalog.models()}
        else:
            model_id = unquote(raw_path[11:].decode("latin-1"))
            found = catalog.model(model_id)
            if found is None:
                await self._error(send, UnknownModel(model_id, catalog.model_ids()), rid, received, exchange=exchange)
                return
            doc = found
        body = json.dumps(doc, separators=(",", ":")).encode()
        headers = [
            *_JSON_HEADERS,
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode("latin-1")),
        ]
        if exchange is not None:
            exchange.respond(200, headers, self.clock.monotonic())
            exchange.add(body)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body if method == "GET" else b"", "more_body": False})
        self.metrics.response(200, self.clock.monotonic() - received)

    def _client_behind(self, peer: str, forwarded_for: bytes | None) -> str:
        """The client's address: the peer, unless it is a trusted proxy, then the rightmost
        X-Forwarded-For entry that is not (entries left of it are the client's to invent)."""
        address = peer
        hops = [h.strip() for h in forwarded_for.decode("latin-1").split(",")] if forwarded_for else []
        while self._is_trusted(address) and hops:
            address = hops.pop()
        return address

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    async def _deadline_exceeded(self, send: Send, ctx: RequestContext, state: _State) -> None:
        if not state.started:
            error = TotalTimeout(f"request exceeded its {ctx.deadline - ctx.received:g}s deadline")
            await self._error(send, error, ctx.request_id, ctx.received, ctx=ctx, exchange=state.exchange)
        else:
            # Committed: end the stream abnormally (no final chunk) rather than look complete.
            log.warning(
                "request %s: deadline of %gs exceeded mid-response; response truncated",
                ctx.request_id,
                ctx.deadline - ctx.received,
            )
            self.metrics.truncated.inc()
            self.metrics.response(state.status, self.clock.monotonic() - ctx.received, ctx.pool)
            if state.exchange is not None:
                state.exchange.ended = "truncated"
                state.exchange.error = f"deadline of {ctx.deadline - ctx.received:g}s exceeded mid-response"

    async def _read_body(self, receive: Receive, declared_length: bytes | None) -> bytes:
        limit = self._max_body
        if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
            # Refuse before reading a byte of it.
            raise BodyTooLarge(f"request body of {int(declared_length)} bytes exceeds the {limit}-byte limit")
        first = b""
        more: list[bytes] | None = None
        size = 0
        # A deadline per message only when a body was announced: a GET's one message is already
        # there, and arming a timer for it would cost every request.
        idle = self._body_idle if declared_length not in (None, b"0") else None
        while True:
            if idle is None:
                message = await receive()
            else:
                async with asyncio.timeout(idle):  # slow POST: a gap this long is an abandoned body
                    message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"request body exceeds the {limit}-byte limit")
                if not first:
                    first = chunk
                else:
                    if more is None:
                        more = [first]
                    more.append(chunk)
            if not message.get("more_body", False):
                return b"".join(more) if more is not None else first

    async def _proxy(self, request: ProxyRequest, ctx: RequestContext, send: Send, state: _State) -> None:
        clock = self.clock
        started = clock.monotonic()
        try:
            response = await self.pipeline(request, ctx)
        except ProxyError as exc:
            ctx.upstream_wait = clock.monotonic() - started
            # From here the response is ours to finish: neither the deadline nor the disconnect
            # watcher may start another one.
            state.started = state.complete = True
            await self._error(send, exc, ctx.request_id, ctx.received, ctx=ctx, exchange=state.exchange)
            return
        # Everything inside the pipeline (queueing, attempts, retries, hedges) is "upstream";
        # the rest is the proxy's own overhead.
        ctx.upstream_wait = clock.monotonic() - started
        status = response.status
        try:
            out = _response_headers(response.headers)
            out.append((b"x-request-id", ctx.request_id.encode("latin-1")))
            answered = response.attempt or ctx.attempts[-1]  # with hedging, not always the last one
            backend = answered.backend
            if self._backend_header:
                out.append((b"x-haproxy-ai-backend", backend.name.encode("latin-1")))
                out.append((b"x-haproxy-ai-attempts", b"%d" % len(ctx.attempts)))
            overhead = clock.monotonic() - ctx.received - ctx.upstream_wait
            if self._server_timing:
                out.append(
                    (
                        b"server-timing",
                        b"proxy;dur=%.3f, upstream;dur=%.3f" % (overhead * 1000, ctx.upstream_wait * 1000),
                    )
                )
            state.status = status
            state.started = True
            exchange = state.exchange
            if exchange is not None:
                # The replica's own headers: the record has our additions (request id, backend,
                # attempts) as fields of its own.
                exchange.respond(status, response.headers, clock.monotonic())
                exchange.backend = backend.name
            await send({"type": "http.response.start", "status": status, "headers": out})
            self.metrics.overhead.observe(overhead)
            # With a declared length, the chunk that completes the body is sent as the final
            # message (one send instead of two on the common small-response path).
            remaining = content_length(response.headers)
            try:
                async for chunk in response.chunks():
                    if exchange is not None:
                        exchange.add(chunk)
                    if remaining is not None:
                        remaining -= len(chunk)
                        if remaining <= 0:
                            state.complete = True
                            await send({"type": "http.response.body", "body": chunk, "more_body": False})
                            continue
                    if remaining is None:
                        # A stream: a client that stops reading would hold the replica's
                        # generation forever once the socket buffers fill.
                        async with asyncio.timeout(self._send_timeout):
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    else:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except TimeoutError:
                log.warning(
                    "request %s: the client read nothing for %gs; stream cut, replica request cancelled",
                    ctx.request_id,
                    self._send_timeout,
                )
                self.metrics.truncated.inc()
                self.metrics.response(status, clock.monotonic() - ctx.received, ctx.pool)
                if exchange is not None:
                    exchange.ended = "truncated"
                    exchange.error = f"the client stopped reading for {self._send_timeout:g}s (timeouts.client_send)"
                return
            except ProxyError as exc:
                # Committed: bytes reached the client, so never replay. Close the connection
                # without the final chunk so the client sees an incomplete response, not a
                # complete-looking one.
                log.warning("request %s: %s; response truncated", ctx.request_id, exc.message)
                self.metrics.truncated.inc()
                self.metrics.response(status, clock.monotonic() - ctx.received, ctx.pool)
                if exchange is not None:
                    exchange.ended = "upstream_reset" if isinstance(exc, UpstreamReset) else "truncated"
                    exchange.error = exc.message
                return
            if not state.complete:
                state.complete = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
        self.metrics.response(status, clock.monotonic() - ctx.received, ctx.pool)
        if self._access_log:
            self._log_access(request, ctx, status, answered.backend.name)

    async def _error(
        self,
        send: Send,
        exc: ProxyError,
        request_id: str,
        received: float,
        *,
        close: bool = False,
        ctx: RequestContext | None = None,
        exchange: Exchange | None = None,
    ) -> None:
        status = exc.status
        exc.message = self.redactor.message(exc.message)
        body = error_body(exc, request_id)
        headers = [
            *_JSON_HEADERS,
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode("latin-1")),
        ]
        if isinstance(exc, NoBackendAvailable | Overloaded):
            headers.append((b"retry-after", str(exc.retry_after).encode()))
        if close:
            headers.append((b"connection", b"close"))
        if self._backend_header and exc.backend:
            headers.append((b"x-haproxy-ai-backend", exc.backend.encode("latin-1")))
        if self._backend_header and ctx is not None and ctx.attempts:
            headers.append((b"x-haproxy-ai-attempts", b"%d" % len(ctx.attempts)))
        if exchange is not None:
            exchange.respond(status, headers, self.clock.monotonic())
            exchange.backend = exc.backend
            exchange.error = exc.message
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if exchange is not None:
            exchange.add(body)
        await send({"type": "http.response.body", "body": body, "more_body": False})
        self.metrics.response(
            status, self.clock.monotonic() - received, ctx.pool if ctx is not None else self._single_pool
        )
        if status >= 500:
            log.warning("request %s: %s -> %d", request_id, exc.message, status)

    def _log_access(self, request: ProxyRequest, ctx: RequestContext, status: int, backend: str) -> None:
        # Method, path, status, backend and timings only: never headers or bodies (secrets).
        access_log.info(
            '%s %s "%s %s" %d backend=%s duration_ms=%.1f',
            ctx.request_id,
            ctx.client or "-",
            request.method,
            request.target.split("?", 1)[0],
            status,
            backend,
            (self.clock.monotonic() - ctx.received) * 1000,
        )


def _response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    named: set[bytes] | None = None
    for name, value in headers:
        lower = name.lower()
        if lower in _RESPONSE_DROP:
            if lower == b"connection":
                named = (named or set()) | {t.strip().lower() for t in value.split(b",")}
            continue
        out.append((name, value))
    if named:
        # Fields named in Connection are hop-by-hop for this hop only (RFC 9110 §7.6.1).
        out = [(k, v) for k, v in out if k.lower() not in named]
    return out


def build_proxy(settings: Settings, **kwargs: Any) -> Proxy:
    return Proxy(settings, **kwargs)

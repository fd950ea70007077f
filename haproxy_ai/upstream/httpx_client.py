"""The httpx upstream, selectable with ``upstream.client: httpx``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from ..backends import Backend
from ..clock import Clock
from ..context import AttemptRecord
from ..errors import ConnectFailed, ConnectTimeout, UpstreamReset
from ..settings import TimeoutSettings, UpstreamSettings
from ..types import ProxyRequest
from .base import AttemptTimeouts

__all__ = ["HttpxUpstream"]


class HttpxUpstream:
    def __init__(self, upstream: UpstreamSettings, timeouts: TimeoutSettings, clock: Clock) -> None:
        self._settings = upstream
        self._timeouts = timeouts
        self._clock = clock
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            # Header and body waits are bounded per attempt below, so reads have no httpx timeout.
            timeout=httpx.Timeout(connect=self._timeouts.connect, read=None, write=None, pool=None),
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=self._settings.max_connections_per_backend,
                keepalive_expiry=self._settings.keepalive_timeout,
            ),
            trust_env=False,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, backend: Backend, request: ProxyRequest, timeouts: AttemptTimeouts) -> _Response:
        client = self._client
        assert client is not None, "HttpxUpstream.start() was not called"
        # Built directly (not client.build_request) so no default client headers are added.
        req = httpx.Request(
            request.method,
            backend.origin,
            headers=request.headers,
            content=request.body if request.body else None,
        )
        _set_raw_target(req, backend.base_path + request.target)
        try:
            async with asyncio.timeout(timeouts.first_byte):
                resp = await client.send(req, stream=True)
        except TimeoutError as exc:
            raise timeouts.first_byte_error(backend) from exc
        except httpx.ConnectTimeout as exc:
            raise ConnectTimeout(f"connecting to backend {backend.name} timed out", backend=backend.name) from exc
        except httpx.ConnectError as exc:
            raise ConnectFailed(f"cannot connect to backend {backend.name}: {exc}", backend=backend.name) from exc
        except httpx.HTTPError as exc:
            raise UpstreamReset(
                f"backend {backend.name}: connection closed or invalid response before headers", backend=backend.name
            ) from exc
        return _Response(resp, backend, timeouts)


def _set_raw_target(req: httpx.Request, target: str) -> None:
    """Forward the request target byte for byte.

    httpx always normalises dot-segments and re-quotes the path, which could make the replica
    route differently from what the client asked. Its parsed URL is a NamedTuple, so the raw
    path and query are put back in place; a non-ASCII target (which httpx would refuse to
    write) keeps httpx's own encoding.
    """
    if not target.isascii():
        req.url = req.url.copy_with(raw_path=target.encode("utf-8"))
        return
    path, sep, query = target.partition("?")
    ref = req.url._uri_reference
    req.url._uri_reference = ref._replace(path=path, query=query if sep else None)


class _Response:
    __slots__ = ("_backend", "_resp", "_timeouts", "attempt", "headers", "status")

    def __init__(self, resp: httpx.Response, backend: Backend, timeouts: AttemptTimeouts) -> None:
        self._resp = resp
        self._backend = backend
        self._timeouts = timeouts
        self.attempt: AttemptRecord | None = None  # set by the attempt stage's wrapper, not here
        self.status = resp.status_code
        self.headers = list(resp.headers.raw)

    async def chunks(self) -> AsyncIterator[bytes]:
        raw = self._resp.aiter_raw()
        timeouts = self._timeouts
        while True:
            try:
                async with asyncio.timeout(timeouts.idle):
                    chunk = await anext(raw)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise timeouts.idle_error(self._backend) from exc
            except httpx.HTTPError as exc:
                raise UpstreamReset(
                    f"backend {self._backend.name}: connection closed or reset mid-response",
                    backend=self._backend.name,
                ) from exc
            if chunk:
                yield chunk

    async def aclose(self, *, abandoned: bool = False) -> None:
        # httpx closes (rather than pools) a connection whose body was not fully read.
        await self._resp.aclose()

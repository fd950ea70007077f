"""The default upstream: one shared aiohttp session, pooled per backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from yarl import URL

from ..backends import Backend
from ..clock import Clock
from ..errors import ConnectFailed, ConnectTimeout, ProxyError, UpstreamReset
from ..settings import TimeoutSettings, UpstreamSettings
from ..types import ProxyRequest
from .base import AttemptTimeouts

__all__ = ["AiohttpUpstream"]

# aiohttp would otherwise add headers the client never sent.
_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})
_BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


class AiohttpUpstream:
    def __init__(self, upstream: UpstreamSettings, timeouts: TimeoutSettings, clock: Clock) -> None:
        self._settings = upstream
        self._timeouts = timeouts
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=self._settings.max_connections_per_backend,
            keepalive_timeout=self._settings.keepalive_timeout,
            ttl_dns_cache=10,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Headers and body wait are bounded per attempt below; only connect is aiohttp's.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeouts.connect),
            trust_env=False,  # never read HTTP(S)_PROXY from the environment
            auto_decompress=False,  # raw body pass-through
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, backend: Backend, request: ProxyRequest, timeouts: AttemptTimeouts) -> _Response:
        session = self._session
        assert session is not None, "AiohttpUpstream.start() was not called"
        wait, by_deadline = timeouts.budget(timeouts.first_byte, self._clock)
        body = request.body if request.body or request.method not in _BODYLESS else None
        try:
            async with asyncio.timeout(wait):
                resp = await session.request(
                    request.method,
                    # encoded=True: forward the target byte for byte (yarl would otherwise
                    # normalise dot-segments and re-quote, and the replica might route differently).
                    URL(backend.target(request.target), encoded=True),
                    headers=request.headers,
                    data=body,
                    allow_redirects=False,
                    compress=None,
                    chunked=None,
                )
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise ConnectTimeout(f"connecting to backend {backend.name} timed out", backend=backend.name) from exc
            raise timeouts.first_byte_error(by_deadline, backend) from exc
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(
                f"cannot connect to backend {backend.name}: {exc.strerror or type(exc).__name__}",
                backend=backend.name,
            ) from exc
        except aiohttp.ClientError as exc:
            raise _reset(backend, exc, "before response headers") from exc
        except OSError as exc:
            raise UpstreamReset(f"backend {backend.name}: {exc.strerror or exc}", backend=backend.name) from exc
        return _Response(resp, backend, timeouts, self._clock)


def _reset(backend: Backend, exc: BaseException, when: str) -> ProxyError:
    if isinstance(exc, aiohttp.ClientResponseError):
        detail = f"invalid response ({exc.message})"
    else:
        detail = f"connection closed or reset {when}"
    return UpstreamReset(f"backend {backend.name}: {detail}", backend=backend.name)


class _Response:
    __slots__ = ("_backend", "_clock", "_done", "_resp", "_timeouts", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, backend: Backend, timeouts: AttemptTimeouts, clock: Clock) -> None:
        self._resp = resp
        self._backend = backend
        self._timeouts = timeouts
        self._clock = clock
        self._done = False
        self.status = resp.status
        self.headers = list(resp.raw_headers)

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        timeouts = self._timeouts
        while True:
            wait, by_deadline = timeouts.budget(timeouts.idle, self._clock)
            try:
                async with asyncio.timeout(wait):
                    chunk = await content.readany()
            except TimeoutError as exc:
                raise timeouts.idle_error(by_deadline, self._backend) from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise _reset(self._backend, exc, "mid-response") from exc
            if not chunk:
                # readany() returns b"" only at EOF; aiohttp raises if a declared length
                # or chunked framing was cut short, so this is a complete body.
                self._done = True
                return
            yield chunk

    async def aclose(self) -> None:
        if self._done:
            self._resp.release()
        else:
            # Not read to the end (client gone, error): drop the connection so the replica
            # sees the disconnect and stops generating.
            self._resp.close()

"""Active HTTP probes: one probe (``probe_once``), its schedule (``next_delay``) and the loop
that runs them for one backend (``Prober``).

A probe never raises for anything the network or the replica does: every failure becomes a
``ProbeResult`` with ``ok=False`` and a short reason, so the rise/fall policy sees it like any
other failed check. Only cancellation propagates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import httpx

from ..backends.backend import Backend
from ..clock import Clock
from ..settings import ActiveCheckSettings

__all__ = ["MAX_BODY", "ProbeResult", "Prober", "next_delay", "probe_once"]

log = logging.getLogger("haproxy_ai.health.probe")

# A health body is a few bytes and /v1/models a few KiB; a replica that streams more must not
# make the prober buffer it, so reading stops here.
MAX_BODY: Final = 64 * 1024
# Intervals are validated > 0, but jitter 1.0 can draw u = -1; a zero sleep would spin the loop.
_MIN_DELAY: Final = 0.001
# Error text from the network stack goes into logs and the admin API; keep it one short line.
_MAX_REASON: Final = 120


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe.

    ``status`` is None when no response arrived. ``detail`` is a short reason for people
    ("200", "status 503 not expected", "timeout after 1s", ...) and never contains request
    headers. ``duration`` is monotonic seconds the probe took (>= 0); ``at`` is the wall-clock
    time it finished.
    """

    ok: bool
    status: int | None
    detail: str
    duration: float
    at: float


def _status_expected(status: int, settings: ActiveCheckSettings) -> bool:
    return any(low <= status <= high for low, high in settings.expected_statuses)


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


def _seconds(value: float) -> str:
    # "1s", "0.25s": the configured value as a person wrote it, not 1.0 or 0.25000000001.
    return f"{value:g}s"


async def _read_capped(response: httpx.Response) -> bytes:
    """Up to ``MAX_BODY`` bytes of the (decoded) body; stops reading as soon as it has them."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_BODY:
            break
    return b"".join(chunks)[:MAX_BODY]


def _judge_models(status: int, body: bytes, model: str) -> tuple[bool, str]:
    try:
        payload = json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return False, "invalid JSON from /v1/models"
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return False, "no 'data' list in /v1/models"
    listed = any(isinstance(entry, dict) and entry.get("id") == model for entry in data)
    if not listed:
        return False, f"model {model!r} not listed"
    return True, str(status)


async def _check(client: httpx.AsyncClient, backend: Backend, settings: ActiveCheckSettings) -> tuple[bool, int, str]:
    """Send the probe and judge the response: (ok, status, detail). Network errors propagate."""
    if settings.model:
        method, url = "GET", backend.target("/v1/models")
    else:
        method, url = settings.method, backend.target(settings.path)
    # httpx's own timeout matches the overall bound so that whichever fires first, the probe
    # ends at about settings.timeout; both are reported the same way.
    async with client.stream(method, url, timeout=settings.timeout) as response:
        status = response.status_code
        if not _status_expected(status, settings):
            # Not read: the status alone fails the probe, and the body could be large or slow.
            return False, status, f"status {status} not expected"
        body = await _read_capped(response)
    if settings.model:
        ok, detail = _judge_models(status, body, settings.model)
        return ok, status, detail
    if settings.body_contains and settings.body_contains.encode() not in body:
        return False, status, f"body lacks {settings.body_contains!r}"
    return True, status, str(status)


async def probe_once(
    client: httpx.AsyncClient, backend: Backend, settings: ActiveCheckSettings, clock: Clock
) -> ProbeResult:
    """Probe ``backend`` once as ``settings`` say and return the verdict; never raises except
    ``CancelledError``.

    With ``settings.model`` set: ``GET /v1/models`` must answer an expected status and list that
    model id in ``data[*].id``. Otherwise ``settings.method`` on ``settings.path`` must answer an
    expected status and, if ``body_contains`` is set, a body containing it. The whole probe
    (connect, headers, body) is bounded by ``settings.timeout``; at most ``MAX_BODY`` bytes of
    the body are read.
    """
    started = clock.monotonic()
    status: int | None = None
    try:
        async with asyncio.timeout(settings.timeout):
            ok, status, detail = await _check(client, backend, settings)
    except (TimeoutError, httpx.TimeoutException):
        # asyncio.timeout turns only its own cancellation into TimeoutError; a cancellation of
        # the caller's task stays a CancelledError and propagates.
        ok, status, detail = False, None, f"timeout after {_seconds(settings.timeout)}"
    except httpx.ConnectError as exc:
        ok, status, detail = False, None, f"connect failed: {_short(str(exc)) or type(exc).__name__}"
    except (httpx.HTTPError, httpx.StreamError, httpx.InvalidURL, OSError) as exc:
        # Only the class name: messages of protocol errors can quote what was sent.
        ok, status, detail = False, None, f"error: {type(exc).__name__}"
    duration = max(clock.monotonic() - started, 0.0)
    return ProbeResult(ok=ok, status=status, detail=detail, duration=duration, at=clock.time())


def next_delay(settings: ActiveCheckSettings, *, fast: bool, rng: random.Random) -> float:
    """Seconds until the next probe: ``fast_interval`` (when ``fast``) or ``interval``, scaled by
    ``1 + u`` with ``u`` uniform in ``[-jitter, +jitter]``, and never below 1 ms.

    Pure apart from drawing one number from ``rng``.
    """
    base = settings.fast_interval if fast else settings.interval
    u = rng.uniform(-settings.jitter, settings.jitter)
    return max(base * (1.0 + u), _MIN_DELAY)


class Prober:
    """Probes one backend forever; run ``run()`` as its own task and cancel it to stop.

    Each result goes to ``report(backend, result)``; ``fast()`` is asked after every probe
    whether to use the fast interval (the caller knows whether the backend is down or
    changing state). Exceptions from either callback are logged and never end the loop.
    """

    __slots__ = ("_backend", "_client", "_clock", "_fast", "_report", "_rng", "_settings")

    def __init__(
        self,
        backend: Backend,
        settings: ActiveCheckSettings,
        *,
        client: httpx.AsyncClient,
        report: Callable[[Backend, ProbeResult], None],
        fast: Callable[[], bool],
        rng: random.Random,
        clock: Clock,
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._client = client
        self._report = report
        self._fast = fast
        self._rng = rng
        self._clock = clock

    @property
    def backend(self) -> Backend:
        return self._backend

    async def run(self) -> None:
        """Probe, report, sleep, repeat, until cancelled (the CancelledError propagates)."""
        settings = self._settings
        # Proxies (or sidecars) started together would otherwise probe every replica in lockstep.
        await asyncio.sleep(self._rng.uniform(0.0, settings.interval * settings.jitter))
        while True:
            result = await self._probe()
            try:
                self._report(self._backend, result)
            except Exception:
                log.exception("health report for backend %s failed; probing continues", self._backend.name)
            await asyncio.sleep(next_delay(settings, fast=self._is_fast(), rng=self._rng))

    async def _probe(self) -> ProbeResult:
        try:
            return await probe_once(self._client, self._backend, self._settings, self._clock)
        except Exception as exc:
            # probe_once maps every failure it knows of; anything else is a bug, but the backend
            # must still be seen failing (not silently keep its last state) and the loop go on.
            log.exception("health probe of backend %s crashed", self._backend.name)
            return ProbeResult(False, None, f"error: {type(exc).__name__}", 0.0, self._clock.time())

    def _is_fast(self) -> bool:
        try:
            return self._fast()
        except Exception:
            # When unsure, probe sooner: a wrong fast interval costs a few probes, a wrong slow
            # one delays noticing a failure.
            log.exception("health fast() callback for backend %s failed", self._backend.name)
            return True

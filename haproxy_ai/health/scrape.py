"""Scraping the replicas' own Prometheus metrics (vLLM, TGI) into ``BackendStats.load``.

``parse_replica_load`` is a pure parser that reads only the few gauges the balancers need out
of a metrics page; ``MetricsScraper`` fetches every replica's page on a fixed interval and is
the single writer of ``stats.load``. The balancers (``LoadAware``, ``RendezvousHash``) read it
synchronously and treat a missing or stale load as saturation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Final

import httpx

from ..backends.backend import Backend, ReplicaLoad
from ..clock import Clock
from ..settings import ScrapeSettings

__all__ = ["MAX_METRICS_BODY", "MetricsScraper", "OnScrape", "parse_replica_load"]

log = logging.getLogger("haproxy_ai.health.scrape")

OnScrape = Callable[[Backend, ReplicaLoad | None, str | None], None]

# A vLLM page with a few models and LoRA adapters is some hundreds of KiB; a runaway exporter
# must not make the proxy buffer without bound.
MAX_METRICS_BODY: Final = 16 * 1024 * 1024
# Ask for the classic text format (not OpenMetrics) and no compression: the parser is written
# for the former, and inflating pages several times a second would cost the proxy's event
# loop more CPU than the bytes cost a datacenter network.
_HEADERS: Final = {"accept": "text/plain; version=0.0.4", "accept-encoding": "identity"}
_MIN_DELAY: Final = 0.001
_MAX_REASON: Final = 160

# One label set: ``{`` name="value" pairs ``}``. A quoted value may hold ``}``, spaces, braces
# and backslash escapes (``\"``), but never a raw newline. The two alternatives at each level
# start with different characters, so matching is linear (no backtracking blow-up).
_LABELS: Final = re.compile(r'\{(?:[^"}\n]|"(?:[^"\\\n]|\\.)*")*\}')


def _samples(text: str, name: str) -> Iterator[float]:
    """Values of every sample of metric ``name`` (any labels) in a text-format page.

    Only lines that start with exactly ``name`` followed by ``{``, a space or a tab are read:
    ``str.find`` skips everything else at C speed, so the cost hardly grows with the size of a
    page. Comments, longer names sharing the prefix (``name_total``, ``name_bucket``), NaN and
    unparsable values are skipped; an optional timestamp is ignored.
    """
    n = len(name)
    needle = "\n" + name
    if text.startswith(name):
        start = 0
    else:
        found = text.find(needle)
        start = found + 1 if found >= 0 else -1
    while start >= 0:
        after = start + n
        end = text.find("\n", after)
        if end < 0:
            end = len(text)
        follow = text[after : after + 1]
        value_at = -1
        if follow == "{":
            labels = _LABELS.match(text, after, end)
            if labels is not None:
                value_at = labels.end()
        elif follow == " " or follow == "\t":
            value_at = after
        if value_at >= 0:
            tokens = text[value_at:end].split(None, 1)
            if tokens:
                try:
                    value = float(tokens[0])
                except ValueError:
                    value = math.nan
                # Queue lengths and cache fractions are finite and >= 0: a replica reporting
                # -Inf or -1000 must not look like the emptiest one and draw every request.
                if math.isfinite(value) and value >= 0:
                    yield value
        found = text.find(needle, end)
        start = found + 1 if found >= 0 else -1


def parse_replica_load(
    text: str, waiting: Sequence[str], running: Sequence[str], kv_cache: Sequence[str]
) -> tuple[float | None, float | None, float | None]:
    """(waiting, running, kv_cache) from a Prometheus text-format page.

    ``waiting`` and ``running`` are the sums of every sample (all label sets, e.g. one per
    ``model_name``) of all the named metrics; ``kv_cache`` is the largest sample. A group is
    None when the page has no usable sample of any of its names. Pure; fast enough to run on
    the event loop for a large vLLM page (see ``_samples``).
    """
    return (
        _total(text, waiting),
        _total(text, running),
        max((v for name in kv_cache for v in _samples(text, name)), default=None),
    )


def _total(text: str, names: Sequence[str]) -> float | None:
    total: float | None = None
    for name in names:
        for value in _samples(text, name):
            total = value if total is None else total + value
    return total


class _ScrapeFailed(Exception):
    """A response that arrived but cannot be used; the message is the reason."""


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


class MetricsScraper:
    """Scrapes every backend's metrics page every ``settings.interval`` and publishes the
    result in ``backend.stats.load``.

    ``backends()`` is asked for the current set at every tick, so added and removed replicas
    are followed. Each backend's scrape is bounded by ``settings.timeout`` and independent of
    the others: a tick skips a backend whose previous scrape is still running, so one hung
    replica delays nobody else's numbers. URL: ``backend.origin + backend.base_path +
    settings.path``.

    On success ``stats.load`` becomes a ``ReplicaLoad`` stamped with ``clock.monotonic()`` and
    with ``inflight_at_scrape`` = the proxy's in-flight count to that backend when the request
    was sent (requests sent later cannot be in the page, see ``ReplicaLoad``). On failure
    (non-2xx, timeout, connection error, none of the configured metrics on the page) it becomes
    None, which the balancers read as saturated. ``on_result(backend, load, error)`` is called
    after every scrape with exactly one of ``load``/``error`` set; it must not block, and its
    exceptions are logged and ignored.

    Failures are logged once when a backend starts failing and once when it recovers, not at
    every scrape. Nothing raises out of the loop. ``client`` is used as given (and left open);
    without one the scraper creates its own (``trust_env=False``) and closes it in ``stop()``.
    """

    def __init__(
        self,
        backends: Callable[[], Sequence[Backend]],
        settings: ScrapeSettings,
        *,
        clock: Clock,
        client: httpx.AsyncClient | None = None,
        on_result: OnScrape | None = None,
    ) -> None:
        self._backends = backends
        self._settings = settings
        self._clock = clock
        self._client = client
        self._own_client = client is None
        self._on_result = on_result
        self._names = (*settings.waiting_metrics, *settings.running_metrics, *settings.kv_cache_metrics)
        self._failing: dict[str, bool] = {}
        self._busy: dict[Backend, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._callback_failed = False

    async def start(self) -> None:
        """Start the scrape loop on the running event loop; a second call does nothing."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="metrics-scraper")

    async def stop(self) -> None:
        """Stop the loop, cancel scrapes in progress and close the client if this scraper
        created it. Loads already written stay as they are."""
        task, self._task = self._task, None
        pending = [*self._busy.values(), *([task] if task is not None else [])]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._busy.clear()
        if self._own_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def scrape_once(self) -> None:
        """Scrape every current backend once, concurrently, and wait for all of them."""
        backends = self._current()
        await asyncio.gather(*(self._scrape(backend) for backend in backends))

    async def _run(self) -> None:
        interval = self._settings.interval
        while True:
            started = self._clock.monotonic()
            for backend in self._current():
                if backend not in self._busy:
                    task = asyncio.create_task(self._scrape(backend), name=f"scrape-{backend.name}")
                    self._busy[backend] = task
                    task.add_done_callback(partial(self._finished, backend))
            elapsed = self._clock.monotonic() - started
            await asyncio.sleep(max(interval - elapsed, _MIN_DELAY))

    def _finished(self, backend: Backend, _: asyncio.Task[None]) -> None:
        self._busy.pop(backend, None)

    def _current(self) -> Sequence[Backend]:
        try:
            backends = self._backends()
        except Exception:
            log.exception("listing the backends to scrape failed; skipping this round")
            return ()
        names = {backend.name for backend in backends}
        for gone in [name for name in self._failing if name not in names]:
            del self._failing[gone]
        return backends

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False)
        return self._client

    async def _scrape(self, backend: Backend) -> None:
        settings = self._settings
        url = backend.target(settings.path)
        inflight = backend.stats.inflight
        load: ReplicaLoad | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(settings.timeout):
                text = await self._fetch(url)
            waiting, running, kv_cache = parse_replica_load(
                text, settings.waiting_metrics, settings.running_metrics, settings.kv_cache_metrics
            )
            if waiting is None and running is None and kv_cache is None:
                error = f"none of the expected metrics in {settings.path}: {', '.join(self._names)}"
            else:
                load = ReplicaLoad(
                    at=self._clock.monotonic(),
                    waiting=waiting,
                    running=running,
                    kv_cache=kv_cache,
                    inflight_at_scrape=inflight,
                )
        except (TimeoutError, httpx.TimeoutException):
            # asyncio.timeout turns only its own cancellation into TimeoutError; stop()'s
            # cancellation stays a CancelledError and propagates.
            error = f"timeout after {settings.timeout:g}s"
        except _ScrapeFailed as exc:
            error = str(exc)
        except httpx.ConnectError as exc:
            error = f"connect failed: {_short(str(exc)) or type(exc).__name__}"
        except (httpx.HTTPError, httpx.StreamError, httpx.InvalidURL, OSError) as exc:
            error = f"error: {type(exc).__name__}"
        except Exception as exc:
            # A bug, not the replica: still publish "unknown" so stale numbers are not trusted.
            log.exception("metrics scrape of backend %s crashed", backend.name)
            error = f"error: {type(exc).__name__}"
        backend.stats.load = load
        self._note(backend, error)
        if self._on_result is not None:
            try:
                self._on_result(backend, load, error)
            except Exception:
                if not self._callback_failed:
                    self._callback_failed = True
                    log.exception("metrics scrape on_result callback failed (logged once)")

    async def _fetch(self, url: str) -> str:
        async with self._http().stream("GET", url, headers=_HEADERS, timeout=self._settings.timeout) as response:
            status = response.status_code
            if not 200 <= status < 300:
                raise _ScrapeFailed(f"status {status}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_METRICS_BODY:
                    raise _ScrapeFailed(f"metrics page larger than {MAX_METRICS_BODY} bytes")
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def _note(self, backend: Backend, error: str | None) -> None:
        failing = error is not None
        if self._failing.get(backend.name, False) != failing:
            if failing:
                log.warning(
                    "metrics scrape of backend %s failing: %s (counted as saturated until a scrape succeeds)",
                    backend.name,
                    error,
                )
            else:
                log.info("metrics scrape of backend %s recovered", backend.name)
        self._failing[backend.name] = failing

"""The mirror: a bounded memory queue fed by the request path, one spool writer, one shipper per sink.

Request path: ``begin()`` decides (path, sampling) and returns an Exchange to fill, ``offer()``
appends the finished one to the queue without awaiting anything (``drop`` mode) and wakes the
writer. The writer encodes and redacts records in small batches on the event loop and hands
them to the spool's own thread, so a slow disk never stalls the loop. Shippers read from the
spool and deliver to each sink at least once, in order, checkpointing after each delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import socket
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
from prometheus_client import CollectorRegistry

from ..clock import Clock
from ..metrics import MirrorMetrics
from ..settings import MirrorSettings, SinkSettings
from .record import Exchange, RecordEncoder
from .redact import Redactor
from .sinks.base import RecordSink, SinkError
from .sinks.file import FileSink
from .spool import Spool, SpoolError, SpoolStats

__all__ = ["Mirror", "SpoolError", "build_sink"]

log = logging.getLogger("haproxy_ai.mirror")
T = TypeVar("T")

_BATCH = 128  # records encoded per step: bounds how long the writer holds the event loop
_LINGER = 0.05  # seconds the writer waits for a batch to gather (records are durable after fsync_interval anyway)
_WRITE_BATCH = 1024  # records that end the linger early (at most; see _write_at)
_SHIPPER_POLL = 1.0  # shippers re-check the spool at least this often (rotation by age, recovery)


def build_sink(settings: SinkSettings) -> RecordSink | FileSink:
    if settings.type == "file":
        return FileSink(name=settings.name, directory=settings.dir, compress=settings.compress)
    from .sinks.postgres import PostgresSink

    return PostgresSink(
        name=settings.name,
        dsn=settings.dsn,
        table=settings.table,
        connect_timeout=settings.connect_timeout,
        statement_timeout=settings.statement_timeout,
    )


class Mirror:
    def __init__(
        self,
        settings: MirrorSettings,
        *,
        registry: CollectorRegistry,
        clock: Clock,
        rng: random.Random | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.redactor = redactor or Redactor.from_settings(settings.redact)
        self.instance = settings.instance or socket.gethostname()
        self.metrics = MirrorMetrics(registry, [s.name for s in settings.sinks])
        self._registry = registry
        self.blocking = settings.on_queue_full == "block"
        self._rng = rng or random.Random()
        self._paths = tuple(p.encode() for p in settings.paths)
        self._exclude = tuple(p.encode() for p in settings.exclude_paths)
        self._sample = settings.sample_rate
        self._response_cap = settings.max_response_body
        self._queue: list[Exchange] = []  # finished, not yet encoded (normally for one loop turn)
        self._lines: list[bytes] = []  # encoded, waiting for the writer
        self._encode_scheduled = False
        self._linger: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue_size = settings.queue_size
        self._queue_max_bytes = settings.queue_max_bytes
        self._queued_bytes = 0
        # Lines that end the writer's linger early: well before a small queue would fill.
        self._write_at = max(1, min(_WRITE_BATCH, settings.queue_size // 2))
        # Records' wall-clock receipt times come from their monotonic ones plus this offset, which
        # the writer refreshes every fsync_interval: no wall-clock read per request.
        self._wall_offset = clock.time() - clock.monotonic()
        # Record ids: unique across processes and restarts without a syscall per request.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count((1 << 64) + 1)  # hex(n)[3:]: 16 digits, cheaper than a format spec
        self.recent: deque[bytes] = deque(maxlen=100)
        self._encoder = RecordEncoder(self.redactor, self.instance, settings.max_request_body, self._encode_failed)
        self.spool = Spool(
            settings.spool_dir,
            sinks=[s.name for s in settings.sinks],
            segment_max_bytes=settings.segment_max_bytes,
            segment_max_age=settings.segment_max_age,
            max_bytes=settings.spool_max_bytes,
            on_full=settings.on_spool_full,
            retention=settings.retention,
            now=clock.time,
        )
        self.sinks: dict[str, RecordSink | FileSink] = {}
        self._sink_settings = {s.name: s for s in settings.sinks}
        self._executor: ThreadPoolExecutor | None = None
        self._wake: asyncio.Future[None] | None = None
        self._wake_pending = False
        self._space: asyncio.Event | None = None
        self._new_data: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._stats = SpoolStats(0, 0, 0, {}, {})
        self._last_error: dict[str, str | None] = {s.name: None for s in settings.sinks}
        self._spool_failing = False
        m = self.metrics
        m.queue_depth.set_function(lambda: float(self.queued()))
        m.spool_bytes.set_function(lambda: float(self._stats.bytes))
        m.spool_segments.set_function(lambda: float(self._stats.segments))
        for name in self._sink_settings:
            m.pending.labels(name).set_function(self._pending_of(name))
            m.lag.labels(name).set_function(self._lag_of(name))

    def _pending_of(self, name: str) -> Callable[[], float]:
        return lambda: float(self._stats.pending.get(name, 0))

    def _lag_of(self, name: str) -> Callable[[], float]:
        def read() -> float:
            oldest = self._stats.oldest_pending.get(name)
            return max(self.clock.time() - oldest, 0.0) if oldest is not None else 0.0

        return read

    # -- request path ---------------------------------------------------------------------------

    def begin(
        self,
        received: float,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        client: str | None,
    ) -> Exchange | None:
        """An Exchange to fill for this request, or None when it is not recorded (path, sampling)."""
        if not raw_path.startswith(self._paths) or (self._exclude and raw_path.startswith(self._exclude)):
            self.metrics.path_out.inc()
            return None
        if self._sample < 1.0 and self._rng.random() >= self._sample:
            self.metrics.sampled_out.inc()
            return None
        return Exchange(
            self._id_prefix + hex(next(self._ids))[3:],
            received,
            method,
            raw_path,
            query,
            headers,
            client,
            self._response_cap,
        )

    def offer(self, exchange: Exchange) -> bool:
        """Queue a finished exchange without waiting. False when the queue is full: in ``drop``
        mode the record is counted as dropped; in ``block`` mode the caller awaits ``put``."""
        queue = self._queue
        if (
            len(queue) + len(self._lines) >= self._queue_size
            or self._queued_bytes >= self._queue_max_bytes
            or self._closing
        ):
            if not self.blocking or self._closing:
                self.metrics.queue_full.inc()
                self.metrics.enqueued.inc()
            return False
        queue.append(exchange)
        self._queued_bytes += len(exchange.request_body) + exchange.kept
        if not self._encode_scheduled and self._loop is not None:
            # Encoded in a callback of this same loop iteration, after the request's task: the
            # exchange (and the request and response objects it holds) is freed young instead of
            # surviving garbage collections while a batch gathers (measured: a third of the cost).
            self._encode_scheduled = True
            self._loop.call_soon(self._encode)
        return True

    def queued(self) -> int:
        """Records accepted and not yet written to the spool."""
        return len(self._queue) + len(self._lines)

    async def put(self, exchange: Exchange) -> None:
        """``block`` mode: wait for room in the queue (the request holds its connection meanwhile)."""
        while not self.offer(exchange):
            if self._closing:
                return
            if self._space is None:
                self._space = asyncio.Event()
            self._space.clear()
            self._wakeup()  # someone waits: no lingering
            await self._space.wait()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool (raises SpoolError), build the sinks, start the writer and shippers."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="haproxy-ai-spool")
        await self._run(self.spool.open)
        self._stats = await self._run(self.spool.stats)
        try:
            for name, sink_settings in self._sink_settings.items():
                self.sinks[name] = build_sink(sink_settings)
        except SinkError:
            await self._run(self.spool.close)
            raise
        self._closing = False
        log.info("mirror: records encoded by the %s encoder", "C" if self._encoder.native else "Python")
        self._loop = asyncio.get_running_loop()
        self._writer = asyncio.ensure_future(self._write_loop())
        for name, sink in self.sinks.items():
            self._new_data[name] = asyncio.Event()
            self._tasks.append(asyncio.ensure_future(self._ship_loop(name, sink)))

    async def close(self) -> None:
        """Drain the queue into the spool and sync it, give shippers ``flush_timeout`` to deliver
        what is pending, then stop. Undelivered records stay in the spool for the next start."""
        if self._writer is None:
            return
        self._closing = True
        while self._queue:
            self._encode()
        self._wakeup()
        with contextlib.suppress(Exception):
            await self._writer
        self._writer = None
        with contextlib.suppress(Exception):
            await self._run(self.spool.rotate)
            self._stats = await self._run(self.spool.stats)
        for event in self._new_data.values():
            event.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.flush_timeout
        while any(self._stats.pending.values()) and loop.time() < deadline:
            for event in self._new_data.values():
                event.set()
            await asyncio.sleep(0.05)
        for name, pending in self._stats.pending.items():
            if pending:
                log.warning("mirror: %d records not yet delivered to sink %s stay in the spool for the next start",
                            pending, name)  # fmt: skip
        log.debug("mirror: stopping the shippers")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        for name, sink in self.sinks.items():
            log.debug("mirror: closing sink %s", name)
            with contextlib.suppress(Exception):
                await sink.aclose()
        log.debug("mirror: closing the spool")
        with contextlib.suppress(Exception):
            await self._run(self.spool.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        log.debug("mirror: closed")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is None:
            self._wake_pending = True  # the writer is busy: it goes round again at once
        elif not wake.done():
            wake.set_result(None)

    # -- writer ---------------------------------------------------------------------------------

    def _encode(self) -> None:
        """Encode and redact queued exchanges into JSON lines for the writer (a loop callback)."""
        self._encode_scheduled = False
        queue, lines = self._queue, self._lines
        if len(queue) <= _BATCH:
            batch, self._queue = queue, []
        else:  # bounded: one callback never holds the loop for long
            batch = queue[:_BATCH]
            del queue[:_BATCH]
        self._queued_bytes += self._encoder.batch(batch, lines, self._wall_offset)
        self.metrics.enqueued.inc(len(batch))
        if self._queue and self._loop is not None:
            self._encode_scheduled = True
            self._loop.call_soon(self._encode)
        if len(lines) >= self._write_at or self._queued_bytes >= self._queue_max_bytes // 2:
            self._wakeup()
        elif lines and self._linger is None and self._loop is not None:
            # Let a batch gather: each write is a round trip to the spool thread.
            self._linger = self._loop.call_later(_LINGER, self._linger_over)

    def _encode_failed(self) -> None:
        self.metrics.dropped.labels("spool_error").inc()

    def _linger_over(self) -> None:
        self._linger = None
        self._wakeup()

    async def _write_loop(self) -> None:
        """Write the encoded lines when woken -- by the linger, a full batch or the fsync tick --
        never straight after a write: each write is a round trip to the spool thread, and each
        of those costs the event loop a few forced thread switches (the GIL), so fewer, larger
        writes are cheaper per record."""
        loop = asyncio.get_running_loop()
        interval = self.settings.fsync_interval
        last_tick = loop.time()
        while True:
            if self._wake_pending:
                self._wake_pending = False
            elif not self._closing:
                wake: asyncio.Future[None] = loop.create_future()
                self._wake = wake
                timer = loop.call_later(max(interval - (loop.time() - last_tick), 0.0), self._wakeup)
                await wake
                timer.cancel()
                self._wake = None
            if self._lines:
                lines, self._lines = self._lines, []
                self._queued_bytes -= sum(map(len, lines))
                if self._space is not None:
                    self._space.set()
                await self._write(lines)
            if loop.time() - last_tick >= interval or self._closing:
                last_tick = loop.time()
                self._wall_offset = self.clock.time() - self.clock.monotonic()
                self._stats, error = await self._run(self._tick)
                if error is not None:
                    log.error("mirror: cannot sync the spool: %s", error.strerror or error)
                self._notify()
            if self._closing and not self._lines and not self._queue:
                break

    def _tick(self) -> tuple[SpoolStats, OSError | None]:
        """The spool's periodic upkeep (fsync first) and its stats, in one trip to its thread."""
        error = None
        try:
            self.spool.tick()
        except OSError as exc:
            error = exc
        return self.spool.stats(), error

    async def _write(self, lines: list[bytes]) -> None:
        m = self.metrics
        try:
            written, dropped, evicted = await self._run(self.spool.append, lines)
        except OSError as exc:
            m.dropped.labels("spool_error").inc(len(lines))
            if not self._spool_failing:
                log.error("mirror: cannot write to the spool (%s); records are being dropped", exc.strerror or exc)
            self._spool_failing = True
            return
        if self._spool_failing:
            log.warning("mirror: the spool is writable again")
            self._spool_failing = False
        self.recent.extend(lines[:written])
        m.spooled.inc(written)
        if dropped:
            m.dropped.labels("spool_full").inc(dropped)
            log.warning("mirror: spool full (%d bytes); dropped %d new records", self.spool.max_bytes, dropped)
        if evicted:
            m.dropped.labels("evicted").inc(evicted)
        self._notify()

    def _notify(self) -> None:
        for event in self._new_data.values():
            event.set()

    # -- shippers -------------------------------------------------------------------------------

    async def _ship_loop(self, name: str, sink: RecordSink | FileSink) -> None:
        settings = self._sink_settings[name]
        event = self._new_data[name]
        m = self.metrics
        backoff = 0.05
        while True:
            event.clear()
            position = await self._run(self.spool.position, name)
            try:
                if isinstance(sink, FileSink):
                    item = await self._run(self.spool.closed_segment, name)
                    if item is None:
                        await self._idle(event)
                        continue
                    path, count, after = item
                    await sink.write_segment(path)
                else:
                    lines, after = await self._run(self.spool.read, name, settings.batch_size)
                    count = len(lines)
                    if not lines:
                        if after != position:
                            await self._run(self.spool.commit, name, after)
                        await self._idle(event)
                        continue
                    await sink.write(lines)
            except (SinkError, OSError) as exc:
                m.sink_errors.labels(name).inc()
                m.sink_up.labels(name).set(0)
                message = str(exc) if isinstance(exc, SinkError) else f"{type(exc).__name__}"
                if self._last_error[name] is None:
                    log.warning("mirror: sink %s failed (%s); records wait in the spool", name, message)
                self._last_error[name] = message
                await asyncio.sleep(backoff * (0.5 + self._rng.random() / 2))
                backoff = min(backoff * 2, settings.max_backoff)
                continue
            await self._run(self.spool.commit, name, after)
            self._stats = await self._run(self.spool.stats)
            m.shipped.labels(name).inc(count)
            m.sink_up.labels(name).set(1)
            if self._last_error[name] is not None:
                log.info("mirror: sink %s recovered", name)
                self._last_error[name] = None
            backoff = 0.05

    async def _idle(self, event: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), _SHIPPER_POLL)

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For GET /admin/mirror: queue, spool and per-sink progress (no record contents)."""
        stats = self._stats
        registry = self._registry

        def value(name: str, **labels: str) -> int:
            return int(registry.get_sample_value(f"haproxy_ai_mirror_{name}_total", labels) or 0)

        return {
            "enabled": True,
            "instance": self.instance,
            "encoder": "c" if self._encoder.native else "python",
            "spool_dir": str(self.spool.dir),
            "queue": {"depth": self.queued(), "bytes": self._queued_bytes, "mode": self.settings.on_queue_full},
            "spool": {"bytes": stats.bytes, "segments": stats.segments, "records": stats.records},
            "records": {
                "enqueued": value("records_enqueued"),
                "spooled": value("records_spooled"),
                "dropped": {
                    r: value("records_dropped", reason=r)
                    for r in ("queue_full", "spool_full", "spool_error", "evicted")
                },
                "skipped": {r: value("records_skipped", reason=r) for r in ("sampled", "path")},
            },
            "sinks": [
                {
                    "name": name,
                    "type": s.type,
                    "shipped": value("records_shipped", sink=name),
                    "pending": stats.pending.get(name, 0),
                    "lag_seconds": round(self._lag_of(name)(), 3),
                    "up": self._last_error[name] is None,
                    "last_error": self._last_error[name],
                }
                for name, s in self._sink_settings.items()
            ],
        }

    def recent_records(self, limit: int) -> list[Any]:
        """The last ``limit`` records spooled, newest last (already redacted)."""
        lines = list(self.recent)[-limit:] if limit > 0 else []
        return [orjson.loads(line) for line in lines]

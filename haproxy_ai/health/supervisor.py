"""The single writer of backend health: combines probes, live outcomes and operator actions
into one state per backend and publishes routable snapshots to the registry."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
from collections import deque
from collections.abc import Iterable
from typing import Any

import httpx

from ..backends import Backend, BackendStats, Registry
from ..clock import Clock
from ..metrics import Metrics
from ..outcome import Outcome
from ..settings import ActiveCheckSettings, BackendSettings, HealthSettings
from .checks import RiseFall
from .passive import OutlierDetector, ejection_time, is_failure
from .probe import Prober, ProbeResult
from .state import AdminState, BackendHealth, State, Transition

__all__ = ["HealthSupervisor", "UnknownBackend"]

log = logging.getLogger("haproxy_ai.health")

_TICK = 0.25  # seconds between expiry/slow-start checks
_SLOW_START_FLOOR = 0.1  # a recovering backend starts at 10% of its weight
_TTFB_ALPHA = 0.05  # pool first-byte EWMA smoothing (per sample)


class UnknownBackend(KeyError):
    pass


class HealthSupervisor:
    """Owns every ``BackendHealth``; nothing else mutates them.

    Called synchronously from the event loop: ``record``/``stalled`` by the request path
    (never awaiting anything), ``probe_result`` by the probers, operator methods by the admin
    API, ``tick`` by its own timer (or by tests after advancing a FakeClock). Each call that
    changes what is routable publishes a new snapshot.
    """

    def __init__(
        self,
        settings: HealthSettings,
        registry: Registry,
        *,
        clock: Clock,
        metrics: Metrics,
        rng: random.Random,
        backend_settings: Iterable[BackendSettings] = (),
        pool: str = "default",
    ) -> None:
        self.settings = settings
        self.pool = pool
        self._registry = registry
        self._clock = clock
        self._metrics = metrics
        self._rng = rng
        self._records: dict[str, BackendHealth] = {}
        self._overrides = {b.name: b.health_check for b in backend_settings}
        self._pool_first_byte: float | None = None
        self._probers: dict[str, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last_published: tuple[Any, ...] | None = None
        for backend in registry.snapshot().backends:
            self._add(backend)
        self.publish()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        for record in self._records.values():
            self._start_prober(record)
        self._ticker = asyncio.create_task(self._tick_forever(), name="health-tick")

    async def stop(self) -> None:
        tasks = [t for t in (*self._probers.values(), self._ticker) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._probers.clear()
        self._ticker = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            try:
                self.tick()
            except Exception:  # the health loop must outlive any one bad tick
                log.exception("health tick failed")

    def _active_settings(self, name: str) -> ActiveCheckSettings:
        overrides = dict(self._overrides.get(name, ()))
        return dataclasses.replace(self.settings.active, **overrides) if overrides else self.settings.active

    def _start_prober(self, record: BackendHealth) -> None:
        active = self._active_settings(record.backend.name)
        if not active.enabled or self._client is None or record.backend.name in self._probers:
            return
        rise_fall = record.rise_fall
        prober = Prober(
            record.backend,
            active,
            client=self._client,
            report=self.probe_result,
            fast=lambda: not rise_fall.up or rise_fall.changing,
            rng=self._rng,
            clock=self._clock,
        )
        self._probers[record.backend.name] = asyncio.create_task(prober.run(), name=f"probe-{record.backend.name}")

    def _stop_prober(self, name: str) -> None:
        task = self._probers.pop(name, None)
        if task is not None:
            task.cancel()

    def _add(self, backend: Backend, weight: float | None = None) -> BackendHealth:
        active = self._active_settings(backend.name)
        record = BackendHealth(
            backend=backend,
            weight=float(backend.weight if weight is None else weight),
            config_weight=float(backend.weight),
            rise_fall=RiseFall(active.rise, active.fall),
            detector=OutlierDetector(self.settings.passive),
            history=deque(maxlen=self.settings.history_size),
            since=self._clock.time(),
        )
        self._records[backend.name] = record
        self._metrics.track_backend(backend, self)
        self._metrics.set_state(backend, State.HEALTHY)
        return record

    # -- queries ---------------------------------------------------------------------------------

    def get(self, name: str) -> BackendHealth:
        record = self._records.get(name)
        if record is None:
            raise UnknownBackend(name)
        return record

    def records(self) -> list[BackendHealth]:
        return list(self._records.values())

    def probes(self, name: str) -> bool:
        """Whether active probes check this backend (the pool's setting or its override)."""
        return self._active_settings(name).enabled

    def effective_weight(self, record: BackendHealth, now: float | None = None) -> float:
        if record.recovered_at is None or self.settings.slow_start <= 0:
            return record.weight
        now = self._clock.monotonic() if now is None else now
        progress = max(now - record.recovered_at, 0.0) / self.settings.slow_start
        if progress >= 1:
            return record.weight
        return record.weight * (_SLOW_START_FLOOR + (1 - _SLOW_START_FLOOR) * progress)

    # -- signals from the request path (synchronous, never await) --------------------------------

    def record(
        self,
        backend: Backend,
        outcome: Outcome,
        *,
        first_byte: float | None = None,
        retry_after: float | None = None,
    ) -> None:
        """One finished attempt. ``first_byte`` is seconds to the first body byte (for a stream,
        the first token); ``retry_after`` the backend's Retry-After on a 429/503, in seconds."""
        record = self._records.get(backend.name)
        if record is None or record.backend is not backend:
            return  # removed or replaced by a reload meanwhile
        now = self._clock.monotonic()
        passive = self.settings.passive
        if retry_after and outcome in (Outcome.THROTTLED, Outcome.SERVER_ERROR) and passive.max_cooldown > 0:
            # The replica asked for a pause: honour it, and do not count it as a failure.
            self._cooldown(record, min(retry_after, passive.max_cooldown), now)
            return
        if not passive.enabled:
            return
        failure = is_failure(outcome, passive)
        cause = outcome.value
        if failure is False and first_byte is not None:
            norm = self._pool_first_byte
            alpha = _TTFB_ALPHA
            if self._is_slow_first_byte(first_byte):
                failure, cause = True, f"first byte after {first_byte:.1f}s, pool norm {norm:.2f}s"
                # Slow samples move the norm too, but 10x more gently: one bad replica is caught
                # first, while a pool that slows down as a whole (longer prompts) still drags its
                # norm along instead of failing forever.
                alpha = _TTFB_ALPHA / 10
            self._pool_first_byte = first_byte if norm is None else norm + alpha * (first_byte - norm)
        if failure is None or not self._counts(record, now):
            return
        reason = record.detector.record(failure, now)
        if reason is not None:
            self._eject(record, reason, cause, now)

    @staticmethod
    def _counts(record: BackendHealth, now: float) -> bool:
        """Outcomes feed the detector only for an enabled backend that is not already ejected:
        requests that were in flight when it was ejected must not re-eject it on return."""
        return record.admin is AdminState.ENABLED and now >= record.ejected_until

    def stalled(self, backend: Backend) -> None:
        """A stream sent nothing for ``stall_timeout`` after its headers: the engine may be hung
        even though /health still answers."""
        record = self._records.get(backend.name)
        if record is None or record.backend is not backend or not self.settings.passive.enabled:
            return
        now = self._clock.monotonic()
        self._metrics.stalls.labels(backend.pool, backend.name).inc()
        if not self._counts(record, now):
            return
        reason = record.detector.record(True, now)
        if reason is not None:
            self._eject(record, reason, f"stream stalled {self.settings.passive.stall_timeout:g}s", now)

    def _is_slow_first_byte(self, first_byte: float) -> bool:
        passive = self.settings.passive
        norm = self._pool_first_byte
        return (
            passive.slow_first_byte_factor > 0
            and norm is not None
            and first_byte > passive.slow_first_byte_min
            and first_byte > norm * passive.slow_first_byte_factor
        )

    def _eject(self, record: BackendHealth, reason: str, cause: str, now: float) -> None:
        if now < record.ejected_until:
            return
        passive = self.settings.passive
        pool = [r for r in self._records.values() if r.admin is AdminState.ENABLED]
        ejected = sum(1 for r in pool if now < r.ejected_until)
        # Like Envoy, one backend may always be ejected, whatever the percentage.
        allowed = max(1, math.floor(len(pool) * passive.max_ejection_percent / 100))
        if ejected >= allowed:
            log.info(
                "backend=%s ejection skipped: %d of %d already ejected (max_ejection_percent=%g)",
                record.backend.name, ejected, len(pool), passive.max_ejection_percent,
            )  # fmt: skip
            self._metrics.ejections_skipped.labels(record.backend.pool, record.backend.name).inc()
            record.detector.reset()
            return
        # Ejections a long time apart do not compound (Envoy decrements its multiplier the same way).
        if record.ejections and now - record.last_ejection_end > passive.max_ejection_time:
            record.ejections = 0
        record.ejections += 1
        duration = ejection_time(passive, record.ejections)
        record.ejected_until = now + duration
        record.last_ejection_end = record.ejected_until
        record.detector.reset()
        self._metrics.ejections.labels(record.backend.pool, record.backend.name, reason).inc()
        self._update(record, now, f"{reason}: {cause}; ejected {duration:g}s (#{record.ejections})")

    def _cooldown(self, record: BackendHealth, seconds: float, now: float) -> None:
        until = now + seconds
        if until <= record.cooldown_until:
            return
        record.cooldown_until = until
        self._update(record, now, f"Retry-After {seconds:g}s")

    # -- signals from probes ---------------------------------------------------------------------

    def probe_result(self, backend: Backend, result: ProbeResult) -> None:
        record = self._records.get(backend.name)
        if record is None or record.backend is not backend:
            return
        record.last_probe = result
        self._metrics.probes.labels(backend.pool, backend.name, "success" if result.ok else "failure").inc()
        flipped = record.rise_fall.record(result.ok, result.detail)
        if flipped is not None:
            # A passing probe does not lift a passive ejection: the data path may be failing
            # while the probe port answers, which is exactly what passive detection catches.
            self._update(record, self._clock.monotonic(), record.rise_fall.cause)

    # -- operator actions ------------------------------------------------------------------------

    def drain(self, name: str) -> BackendHealth:
        return self._set_admin(name, AdminState.DRAINING, "drained by operator")

    def disable(self, name: str) -> BackendHealth:
        return self._set_admin(name, AdminState.DISABLED, "disabled by operator")

    def enable(self, name: str) -> BackendHealth:
        return self._set_admin(name, AdminState.ENABLED, "enabled by operator")

    def set_weight(self, name: str, weight: float) -> BackendHealth:
        if not weight > 0:
            raise ValueError(f"weight must be > 0, got {weight!r}")
        record = self.get(name)
        record.weight = float(weight)
        log.info("backend=%s weight=%g (set by operator)", name, weight)
        self.publish()
        return record

    def _set_admin(self, name: str, admin: AdminState, cause: str) -> BackendHealth:
        record = self.get(name)
        if record.removed and admin is AdminState.ENABLED:
            raise UnknownBackend(name)
        record.admin = admin
        self._update(record, self._clock.monotonic(), cause)
        return record

    # -- reload ----------------------------------------------------------------------------------

    def reconfigure(self, backends: Iterable[BackendSettings], decay: float) -> dict[str, list[str]]:
        """Apply a reloaded backend list: add new ones (with slow start), reweight kept ones whose
        configured weight changed, drain removed ones (they leave once their in-flight requests
        end). Returns what changed, by kind."""
        changes: dict[str, list[str]] = {"added": [], "removed": [], "reweighted": [], "replaced": []}
        wanted = {b.name: b for b in backends}
        now = self._clock.monotonic()
        for name, record in list(self._records.items()):
            new = wanted.get(name)
            if new is not None and new.url == record.backend.url:
                if record.removed:  # removed by an earlier reload, back before it finished draining
                    record.removed = False
                    record.admin = AdminState.ENABLED
                    self._start_prober(record)
                    self._update(record, now, "re-added by reload")
                    changes["added"].append(name)
                continue
            if not record.removed:
                record.removed = True
                record.admin = AdminState.DRAINING
                self._stop_prober(name)
                self._update(record, now, "removed from config")
                changes["replaced" if new is not None else "removed"].append(name)
            if new is not None:
                self._retire(name)
        for name, new in wanted.items():
            override_changed = self._overrides.get(name, ()) != new.health_check
            self._overrides[name] = new.health_check
            existing = self._records.get(name)
            if existing is None:
                record = self._add(Backend(new.name, new.url, new.weight, BackendStats(decay), pool=self.pool))
                if self.settings.slow_start > 0:
                    record.recovered_at = now  # a new replica is likely cold: ramp it up too
                self._start_prober(record)
                if name not in changes["replaced"]:
                    changes["added"].append(name)
                log.info("backend=%s added (%s, weight %d)", name, new.url, new.weight)
                continue
            if existing.config_weight != new.weight:
                existing.config_weight = existing.weight = float(new.weight)
                changes["reweighted"].append(name)
            if override_changed and not existing.removed:
                active = self._active_settings(name)
                existing.rise_fall.rise, existing.rise_fall.fall = active.rise, active.fall
                self._stop_prober(name)
                self._start_prober(existing)
        self.publish(force=True)
        return changes

    def _retire(self, name: str) -> None:
        """Forget a removed backend now (its in-flight attempts keep their own reference)."""
        record = self._records.pop(name, None)
        if record is not None:
            self._stop_prober(name)
            self._metrics.forget_backend(record.backend)

    # -- time --------------------------------------------------------------------------------------

    def tick(self) -> None:
        now = self._clock.monotonic()
        for record in list(self._records.values()):
            if record.removed and record.backend.stats.inflight == 0:
                log.info("backend=%s removed (drained)", record.backend.name)
                self._retire(record.backend.name)
                continue
            self._update(record, now, None, publish=False)
        self.publish()

    # -- state changes and publishing ------------------------------------------------------------

    def _update(self, record: BackendHealth, now: float, cause: str | None, *, publish: bool = True) -> None:
        old = record.state
        new = record.compute_state(now)
        if new is old:
            if cause is not None and new is not State.HEALTHY:
                record.cause = cause
            if publish:
                self.publish()
            return
        if cause is None:
            cause = {State.EJECTED: "ejection ended", State.COOLDOWN: "cooldown ended"}.get(old, new.value)
        record.state = new
        record.cause = cause
        if new is State.HEALTHY and old is not State.COOLDOWN and self.settings.slow_start > 0:
            # A cooldown was back-pressure, not a failure: the replica is warm, no ramp.
            record.recovered_at = now
        elif new is not State.HEALTHY:
            record.recovered_at = None
        record.history.append(Transition(self._clock.time(), old, new, cause))
        self._metrics.set_state(record.backend, new)
        level = logging.INFO if new in (State.HEALTHY, State.DRAINING, State.DISABLED) else logging.WARNING
        log.log(level, 'backend=%s from=%s to=%s cause="%s"', record.backend.name, old.value, new.value, cause)
        if publish:
            self.publish()

    def publish(self, *, force: bool = False) -> None:
        now = self._clock.monotonic()
        records = list(self._records.values())
        enabled = [r for r in records if r.admin is AdminState.ENABLED]
        healthy = [r for r in enabled if r.state is State.HEALTHY]
        threshold = self.settings.panic_threshold
        panic = bool(enabled) and threshold > 0 and len(healthy) / len(enabled) < threshold
        routable = enabled if panic else healthy
        weights = tuple(self.effective_weight(r, now) for r in routable)
        key = (tuple(r.backend for r in records), tuple(r.backend for r in routable), weights, panic)
        if key == self._last_published and not force:
            return
        if self._last_published is not None and panic != self._last_published[3]:
            log.warning(
                "panic mode %s: %d of %d enabled backends healthy (panic_threshold=%g)",
                "entered" if panic else "left", len(healthy), len(enabled), threshold,
            )  # fmt: skip
        self._last_published = key
        self._registry.publish(key[0], key[1], weights, panic=panic)
        self._metrics.panic.labels(self.pool).set(1 if panic else 0)

    # -- views -------------------------------------------------------------------------------------

    def histories(self) -> dict[str, tuple[float, list[tuple[float, str, str]], str]]:
        """Each backend's (observed since, transitions, current state), wall-clock seconds: the
        input of the availability model. When the bounded history dropped old entries,
        observation is taken to start at the oldest kept one."""
        out: dict[str, tuple[float, list[tuple[float, str, str]], str]] = {}
        for record in self._records.values():
            transitions = [(t.at, t.from_state.value, t.to_state.value) for t in record.history]
            since = record.since
            if len(record.history) == record.history.maxlen and transitions:
                since = max(since, transitions[0][0])
            out[record.backend.name] = (since, transitions, record.state.value)
        return out

    def describe(self, record: BackendHealth) -> dict[str, Any]:
        now = self._clock.monotonic()
        stats = record.backend.stats
        probe = record.last_probe
        error_rate = record.detector.error_rate(now)
        return {
            "name": record.backend.name,
            "url": record.backend.url,
            "weight": record.weight,
            "effective_weight": round(self.effective_weight(record, now), 3),
            "state": record.state.value,
            "cause": record.cause,
            "routable": record.backend in self._registry.snapshot().routable,
            "in_flight": stats.inflight,
            "requests": stats.requests,
            "ewma_latency_ms": None if stats.ewma is None else round(stats.ewma * 1000, 3),
            "error_rate": None if error_rate is None else round(error_rate, 4),
            "ejections": record.ejections,
            "ejected_for_s": round(max(record.ejected_until - now, 0.0), 3),
            "cooldown_for_s": round(max(record.cooldown_until - now, 0.0), 3),
            "last_probe": None
            if probe is None
            else {
                "at": probe.at,
                "ok": probe.ok,
                "status": probe.status,
                "detail": probe.detail,
                "duration_ms": round(probe.duration * 1000, 3),
            },
            "history": [t.as_dict() for t in record.history],
        }

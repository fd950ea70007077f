"""The fleet: every pool's runtime (registry, health supervisor, metrics scraper, pipeline),
the router and model catalog in front of them, and one view of all backends for the admin API.

Without named pools the fleet holds one pool, ``default``, made of the top-level ``backends``
and sections, and no router: the request path is exactly the single-pool one.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .backends import Backend, BackendStats, Registry, ReplicaLoad
from .clock import Clock
from .health import HealthSupervisor, MetricsScraper, UnknownBackend
from .health.state import BackendHealth
from .metrics import Metrics
from .pipeline import build_pool_pipeline, wrap_admission
from .routing import ModelCatalog, PoolModels, Router, RouteTable
from .settings import BackendSettings, PoolSettings, Settings
from .types import Handler
from .upstream import Upstream

__all__ = ["Fleet", "Pool"]

log = logging.getLogger("haproxy_ai.fleet")


class Pool:
    """One pool's runtime: its backends' registry and health, its scraper, its pipeline."""

    def __init__(
        self,
        settings: PoolSettings,
        root: Settings,
        *,
        upstream: Upstream,
        clock: Clock,
        metrics: Metrics,
        rng: random.Random,
    ) -> None:
        self.name = settings.name
        self.settings = settings
        decay = settings.balancer.ewma_decay
        self.registry = Registry(
            Backend(b.name, b.url, b.weight, BackendStats(decay), pool=self.name) for b in settings.backends
        )
        self.health = HealthSupervisor(
            settings.health,
            self.registry,
            clock=clock,
            metrics=metrics,
            rng=rng,
            backend_settings=settings.backends,
            pool=self.name,
        )
        self.scraper = (
            MetricsScraper(
                lambda: self.registry.snapshot().backends,
                settings.scrape,
                clock=clock,
                on_result=self._scraped,
            )
            if settings.scrape.enabled
            else None
        )
        self._metrics = metrics
        self.pipeline = build_pool_pipeline(
            settings,
            root,
            registry=self.registry,
            upstream=upstream,
            clock=clock,
            metrics=metrics,
            rng=rng,
            sink=self.health,
        )

    def _scraped(self, backend: Backend, load: ReplicaLoad | None, error: str | None) -> None:
        try:
            current = self.health.get(backend.name).backend
        except UnknownBackend:
            return  # removed while the scrape ran: its series are gone and must stay gone
        if current is not backend:
            return
        metrics = self._metrics
        metrics.scrapes.labels(self.name, backend.name, "success" if error is None else "failure").inc()
        if load is not None:
            metrics.replica_waiting.labels(self.name, backend.name).set(load.waiting or 0.0)
            metrics.replica_kv_cache.labels(self.name, backend.name).set(load.kv_cache or 0.0)

    def fetch_targets(self) -> Sequence[Backend]:
        """Replicas to ask for the pool's model list: the routable ones, else any."""
        snapshot = self.registry.snapshot()
        return snapshot.routable or snapshot.backends

    async def start(self) -> None:
        await self.health.start()
        if self.scraper is not None:
            await self.scraper.start()

    async def stop(self) -> None:
        if self.scraper is not None:
            await self.scraper.stop()
        await self.health.stop()


class Fleet:
    """Every pool, the request path into them, and the admin view across them.

    The admin methods (``get``, ``drain``, ``set_weight``, ``describe``, ``histories``...) take
    a backend name: names are unique across pools, so a name finds its pool.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        upstream: Upstream,
        clock: Clock,
        metrics: Metrics,
        rng: random.Random,
    ) -> None:
        self.pools = {
            p.name: Pool(p, settings, upstream=upstream, clock=clock, metrics=metrics, rng=rng)
            for p in settings.effective_pools()
        }
        self.catalog: ModelCatalog | None = None
        handler: Handler
        first = next(iter(self.pools.values()))
        if settings.routed:
            routing = settings.routing
            self.catalog = ModelCatalog(
                [PoolModels(p.name, p.settings.models, p.settings.discover_models, p.fetch_targets) for p in self],
                routing,
                clock=clock,
                metrics=metrics,
            )
            handler = Router(
                {p.name: p.pipeline.handler for p in self},
                table=RouteTable(routing),
                catalog=self.catalog,
                default_pool=routing.default_pool or first.name,
                reject_unknown=routing.unknown_model == "reject",
                metrics=metrics,
                prompt_keyed=frozenset(
                    p.name
                    for p in self
                    if p.settings.balancer.type == "hash" and not p.settings.balancer.hash_key.startswith("header:")
                ),
            )
        else:
            handler = first.pipeline.handler
        queues = [p.pipeline.queue for p in self if p.pipeline.queue is not None]
        self.handler = wrap_admission(handler, settings, clock=clock, metrics=metrics, backend_queues=queues)

    def __iter__(self) -> Iterator[Pool]:
        return iter(self.pools.values())

    @property
    def registry(self) -> Registry:
        """The first pool's registry (the only one without named pools)."""
        return next(iter(self.pools.values())).registry

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        for pool in self:
            await pool.start()
        if self.catalog is not None:
            await self.catalog.start()

    async def stop(self) -> None:
        if self.catalog is not None:
            await self.catalog.stop()
        for pool in self:
            await pool.stop()

    def tick(self) -> None:
        for pool in self:
            pool.health.tick()

    # -- queries across pools --------------------------------------------------------------------

    def routable_count(self) -> int:
        return sum(len(p.registry.snapshot().routable) for p in self)

    def serving_pools(self) -> list[str]:
        """Pools that can take traffic: a routable backend and, where the pool probes its
        backends, a first passing probe (backends start healthy so traffic is not refused
        needlessly, but a model server may still be loading)."""
        out = []
        for pool in self:
            if not pool.registry.snapshot().routable:
                continue
            probing = [r for r in pool.health.records() if pool.health.probes(r.backend.name)]
            if probing and not any(r.last_probe is not None and r.last_probe.ok for r in probing):
                continue
            out.append(pool.name)
        return out

    def records(self) -> list[BackendHealth]:
        return [r for p in self for r in p.health.records()]

    def _owner(self, name: str) -> HealthSupervisor:
        for pool in self:
            try:
                pool.health.get(name)
            except UnknownBackend:
                continue
            return pool.health
        raise UnknownBackend(name)

    def get(self, name: str) -> BackendHealth:
        return self._owner(name).get(name)

    def effective_weight(self, record: BackendHealth, now: float | None = None) -> float:
        return self.pools[record.backend.pool].health.effective_weight(record, now)

    def describe(self, record: BackendHealth) -> dict[str, Any]:
        return {"pool": record.backend.pool, **self.pools[record.backend.pool].health.describe(record)}

    def histories(self) -> dict[str, tuple[float, list[tuple[float, str, str]], str]]:
        out: dict[str, tuple[float, list[tuple[float, str, str]], str]] = {}
        for pool in self:
            out.update(pool.health.histories())
        return out

    def pool_histories(self) -> dict[str, dict[str, tuple[float, list[tuple[float, str, str]], str]]]:
        return {p.name: p.health.histories() for p in self}

    # -- operator actions ------------------------------------------------------------------------

    def drain(self, name: str) -> BackendHealth:
        return self._owner(name).drain(name)

    def disable(self, name: str) -> BackendHealth:
        return self._owner(name).disable(name)

    def enable(self, name: str) -> BackendHealth:
        return self._owner(name).enable(name)

    def set_weight(self, name: str, weight: float) -> BackendHealth:
        return self._owner(name).set_weight(name, weight)

    # -- reload ----------------------------------------------------------------------------------

    def reconfigure(self, pools: Iterable[PoolSettings]) -> dict[str, list[str]]:
        """Apply reloaded backend lists to the pools of the same names (the caller checked that
        the set of pools is unchanged and no backend moved between pools). Only backends
        change; the pool's other settings are read at start. Returns what changed, by kind."""
        changes: dict[str, list[str]] = {"added": [], "removed": [], "reweighted": [], "replaced": []}
        for new in pools:
            pool = self.pools[new.name]
            backends: Sequence[BackendSettings] = new.backends
            for kind, names in pool.health.reconfigure(backends, pool.settings.balancer.ewma_decay).items():
                changes[kind].extend(names)
            pool.settings = dataclasses.replace(pool.settings, backends=new.backends)
        return changes

    def describe_pools(self) -> list[dict[str, Any]]:
        """Per pool: its balancer, backends and routable count, and its models when routed."""
        models = self.catalog.describe() if self.catalog is not None else {}
        out = []
        for pool in self:
            snapshot = pool.registry.snapshot()
            out.append(
                {
                    "name": pool.name,
                    "balancer": pool.settings.balancer.type,
                    "scrape": pool.settings.scrape.enabled,
                    "backends": [b.name for b in snapshot.backends],
                    "routable": len(snapshot.routable),
                    "panic": snapshot.panic,
                    **({"models": models[pool.name]} if pool.name in models else {}),
                }
            )
        return out

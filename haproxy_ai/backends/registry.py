"""Immutable snapshots of the pool; readers take one per attempt, one writer replaces it."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from .backend import Backend

__all__ = ["BackendSnapshot", "Registry"]


@dataclass(frozen=True, slots=True)
class BackendSnapshot:
    """Every known backend, and those a balancer may route to now with their effective weights.

    ``weights[i]`` belongs to ``routable[i]``; it is the configured (or operator-set) weight,
    reduced during slow start. ``panic`` is true when too few backends are healthy and the
    routable set was widened to every enabled backend.
    """

    version: int
    backends: tuple[Backend, ...]
    routable: tuple[Backend, ...]
    weights: tuple[float, ...]
    panic: bool = False

    def has_untried(self, tried: Collection[Backend]) -> bool:
        """Whether a routable backend is left that is not in ``tried`` (for retries and hedges)."""
        return any(b not in tried for b in self.routable)


class Registry:
    """Holds the current snapshot. Only the health supervisor calls ``publish`` (one writer).

    Readers call ``snapshot()`` and use the object they got for the whole attempt, so a
    concurrent change can never produce a torn read (pingora's ArcSwap of backends).
    """

    def __init__(self, backends: Iterable[Backend]) -> None:
        items = tuple(backends)
        self._snapshot = BackendSnapshot(1, items, items, tuple(float(b.weight) for b in items))

    def snapshot(self) -> BackendSnapshot:
        return self._snapshot

    def by_name(self, name: str) -> Backend | None:
        for backend in self._snapshot.backends:
            if backend.name == name:
                return backend
        return None

    def publish(
        self,
        backends: Sequence[Backend],
        routable: Sequence[Backend],
        weights: Sequence[float],
        *,
        panic: bool = False,
    ) -> BackendSnapshot:
        current = self._snapshot
        snapshot = BackendSnapshot(current.version + 1, tuple(backends), tuple(routable), tuple(weights), panic)
        self._snapshot = snapshot
        return snapshot

"""The single writer of backend state; readers take one immutable snapshot per attempt."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .backend import Backend

__all__ = ["BackendSnapshot", "Registry"]


@dataclass(frozen=True, slots=True)
class BackendSnapshot:
    """Every configured backend, and the subset a balancer may route to right now."""

    version: int
    backends: tuple[Backend, ...]
    routable: tuple[Backend, ...]


class Registry:
    """Holds the current snapshot. Only ``publish``/``set_routable`` replace it (one writer).

    Readers call ``snapshot()`` and use the object they got for the whole attempt, so a
    concurrent change can never produce a torn read (pingora's ArcSwap of backends).
    """

    def __init__(self, backends: Iterable[Backend]) -> None:
        items = tuple(backends)
        self._snapshot = BackendSnapshot(1, items, items)

    def snapshot(self) -> BackendSnapshot:
        return self._snapshot

    def by_name(self, name: str) -> Backend | None:
        for backend in self._snapshot.backends:
            if backend.name == name:
                return backend
        return None

    def set_routable(self, names: Iterable[str]) -> BackendSnapshot:
        wanted = set(names)
        current = self._snapshot
        routable = tuple(b for b in current.backends if b.name in wanted)
        self._snapshot = BackendSnapshot(current.version + 1, current.backends, routable)
        return self._snapshot

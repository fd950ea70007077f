"""Request affinity: weighted rendezvous hashing with bounded load (HAProxy ``hash-balance-factor``).

Requests that share a key (a session id, a prompt prefix) go to the same replica, so the
replica's prefix/KV cache is reused. Rendezvous (highest random weight) hashing moves only
the keys of a replica that joins or leaves, about 1/n of them, and follows the weights. The
load bound (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads") keeps a
hot key from piling onto its owner: past its share, requests spill to the key's next replica
in rendezvous order, which is the same for every request with that key, so the spill-over
still lands on a warm cache.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Collection, Sequence
from typing import Final

from ..backends import Backend
from .base import Balancer

__all__ = ["RendezvousHash"]

_MASK64: Final = (1 << 64) - 1
_UNIT: Final = 1.0 / (1 << 53)
# Float noise must not lift a bound such as 1.25 * 8 * 0.3 = 3.0000000000000004 to 4.
_BOUND_SLACK: Final = 1e-9
# Seeds are cached by name; names come from the config, so this only guards against a process
# that reloads thousands of differently named replicas over its life.
_MAX_SEEDS: Final = 4096


def _splitmix64(x: int) -> int:
    """The splitmix64 finalizer: a fast bijective 64-bit mixer whose output bits all depend on
    every input bit, so ``key ^ seed`` for different seeds gives independent-looking draws."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class RendezvousHash:
    """Weighted rendezvous hashing with an optional load bound and saturation spill-over.

    For a key, every candidate gets the score ``-weight / ln(u)``, with ``u`` in (0, 1) drawn
    from ``hash(key)`` mixed with a per-replica seed from its name (not its address, so moving
    a replica keeps its keys). The highest score owns the key; the rest, in score order, are the
    key's successors. Adding or removing one of n equally weighted replicas moves ~1/n of keys,
    and only to (or from) that replica.

    ``pick`` walks the non-excluded candidates in score order and returns the first that is

    - within its load bound, when ``balance_factor`` > 0: with ``T`` the in-flight total and
      ``W`` the weight total over the non-excluded candidates, ``inflight < ceil(balance_factor
      * (T + 1) * weight / W)``. With a factor >= 1 some candidate always qualifies, and a
      pick never takes a replica past ``ceil(balance_factor * T' * weight / W)``, ``T'`` being
      the total including the request being placed; and
    - not ``saturated`` (when that callable is given, e.g. ``LoadAware.saturated`` from scraped
      replica metrics).

    If saturation rules out every candidate within its bound, the first within its bound is
    taken (the bound is never given up for saturation); if none is within its bound (only
    possible with a factor < 1), the owner is taken. ``exclude`` (backends this request already
    tried) is skipped, so a retry goes to the key's next owner. Requests without a key go to
    ``fallback``.

    ``weights`` are the effective weights the snapshot publishes, so a replica in slow start
    owns a growing share of keys as its weight ramps up.
    """

    __slots__ = ("_factor", "_fallback", "_saturated", "_seeds")

    def __init__(
        self,
        balance_factor: float,
        fallback: Balancer,
        saturated: Callable[[Backend], bool] | None = None,
    ) -> None:
        if not balance_factor >= 0:
            raise ValueError(f"balance_factor must be >= 0, got {balance_factor!r}")
        self._factor = balance_factor
        self._fallback = fallback
        self._saturated = saturated
        self._seeds: dict[str, int] = {}

    def _new_seed(self, backend: Backend) -> int:
        if len(self._seeds) >= _MAX_SEEDS:
            self._seeds.clear()
        seed = self._seeds[backend.name] = _hash64(backend.name.encode())
        return seed

    def _scored(
        self, candidates: Sequence[Backend], weights: Sequence[float], exclude: Collection[Backend], key: bytes
    ) -> list[tuple[float, Backend, float]]:
        """(score, backend, weight) of the non-excluded candidates, highest score first."""
        key_hash = _hash64(key)
        seeds = self._seeds
        scored: list[tuple[float, Backend, float]] = []
        for backend, weight in zip(candidates, weights, strict=True):
            if exclude and backend in exclude:
                continue
            seed = seeds.get(backend.name)
            if seed is None:
                seed = self._new_seed(backend)
            # The top 53 bits plus a half step give u strictly inside (0, 1), so ln(u) < 0.
            u = ((_splitmix64(key_hash ^ seed) >> 11) + 0.5) * _UNIT
            score = -weight / math.log(u) if weight > 0 else 0.0
            scored.append((score, backend, weight))
        # Stable: a (practically impossible) tie keeps candidate order, so picks stay deterministic.
        scored.sort(key=_first, reverse=True)
        return scored

    def rank(self, candidates: Sequence[Backend], weights: Sequence[float], key: bytes) -> list[Backend]:
        """The candidates in rendezvous order for ``key``: the owner first, then its successors.
        Ignores load; for tests, diagnostics and the admin API."""
        return [backend for _, backend, _ in self._scored(candidates, weights, (), key)]

    def pick(
        self,
        candidates: Sequence[Backend],
        weights: Sequence[float],
        exclude: Collection[Backend],
        rng: random.Random,
        key: bytes | None = None,
    ) -> Backend | None:
        """See the class docstring. Deterministic for a given key and load state (``rng`` is
        only passed on to ``fallback``); None only when every candidate is excluded."""
        if key is None:
            return self._fallback.pick(candidates, weights, exclude, rng, None)
        scored = self._scored(candidates, weights, exclude, key)
        if not scored:
            return None
        factor = self._factor
        saturated = self._saturated
        scale = 0.0
        if factor > 0:
            total_inflight = 0
            total_weight = 0.0
            for _, backend, weight in scored:
                total_inflight += backend.stats.inflight
                total_weight += weight
            if total_weight > 0:
                scale = factor * (total_inflight + 1) / total_weight
        first_within_bound: Backend | None = None
        for _, backend, weight in scored:
            if scale and backend.stats.inflight >= math.ceil(scale * weight - _BOUND_SLACK):
                continue
            if saturated is None or not saturated(backend):
                return backend
            if first_within_bound is None:
                first_within_bound = backend
        if first_within_bound is not None:
            return first_within_bound
        return scored[0][1]


def _first(item: tuple[float, Backend, float]) -> float:
    return item[0]

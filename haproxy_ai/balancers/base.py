from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Protocol

from ..backends import Backend

__all__ = ["Balancer"]


class Balancer(Protocol):
    def pick(
        self,
        candidates: Sequence[Backend],
        weights: Sequence[float],
        exclude: Collection[Backend],
        rng: random.Random,
        key: bytes | None = None,
    ) -> Backend | None:
        """Choose one of ``candidates`` (``weights[i]`` is the effective weight of
        ``candidates[i]``) not in ``exclude``; None when none is left.

        ``key`` is the request's affinity key (a session id or a prompt prefix) for balancers
        that hash; the others ignore it. None when the request has none.

        Synchronous and free of I/O: it reads only weights and the backends' load stats.
        """
        ...

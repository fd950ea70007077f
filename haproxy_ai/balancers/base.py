from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Protocol

from ..backends import Backend

__all__ = ["Balancer"]


class Balancer(Protocol):
    def pick(self, candidates: Sequence[Backend], exclude: Collection[Backend], rng: random.Random) -> Backend | None:
        """Choose one of ``candidates`` not in ``exclude``; None when none is left.

        Synchronous and free of I/O: it reads only the backends' weights and load stats.
        """
        ...

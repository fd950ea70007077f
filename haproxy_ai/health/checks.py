"""Rise/fall counting for active probes (HAProxy's `rise`/`fall`): a pure policy, no I/O."""

from __future__ import annotations

__all__ = ["RiseFall"]


class RiseFall:
    """``record(ok)`` returns the new up/down value when it flips, else None.

    A down backend needs ``rise`` passes in a row to come up; an up one needs ``fall``
    failures in a row to go down. ``changing`` is true while a streak toward a flip is under
    way, which is when probes run at the faster interval.
    """

    __slots__ = ("_streak", "cause", "fall", "rise", "up")

    def __init__(self, rise: int, fall: int, *, up: bool = True) -> None:
        self.rise = rise
        self.fall = fall
        self.up = up
        self._streak = 0
        self.cause = "started"

    @property
    def changing(self) -> bool:
        return self._streak > 0

    def record(self, ok: bool, detail: str = "") -> bool | None:
        if ok == self.up:
            self._streak = 0
            return None
        self._streak += 1
        if self._streak >= (self.rise if ok else self.fall):
            self.up = ok
            self._streak = 0
            self.cause = f"probe passed {self.rise}x" if ok else f"probe failed {self.fall}x: {detail}"
            return ok
        return None

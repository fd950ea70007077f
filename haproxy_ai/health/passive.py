"""Passive outlier detection: pure per-backend policy fed with classified outcomes."""

from __future__ import annotations

from collections import deque

from ..outcome import Outcome
from ..settings import PassiveSettings

__all__ = ["OutlierDetector", "ejection_time", "is_failure"]

_BUCKETS = 10


def is_failure(outcome: Outcome, settings: PassiveSettings) -> bool | None:
    """True/False for outcomes that say something about the replica; None for those that don't.

    4xx client errors (bad request, context length) and client disconnects say nothing about
    the replica; 429 is back-pressure unless configured otherwise; a total-deadline expiry is
    the client's budget running out, not the replica's fault alone.
    """
    if outcome is Outcome.SUCCESS:
        return False
    if outcome is Outcome.THROTTLED:
        return True if settings.throttle_is_failure else None
    if outcome in (Outcome.CLIENT_ERROR, Outcome.CLIENT_GONE, Outcome.TOTAL_TIMEOUT, Outcome.CANCELLED):
        return None
    return True


def ejection_time(settings: PassiveSettings, ejections: int) -> float:
    """The n-th ejection lasts n x base_ejection_time, capped (Envoy's outlier detection)."""
    return min(settings.base_ejection_time * max(ejections, 1), settings.max_ejection_time)


class OutlierDetector:
    """Consecutive-failure and failure-rate detection over a sliding window.

    ``record`` returns the reason to eject (``"consecutive_failures"`` or ``"failure_rate"``)
    or None. The window is ``_BUCKETS`` time buckets so memory and work stay constant however
    busy the backend is.
    """

    __slots__ = ("_bucket_len", "_buckets", "_settings", "consecutive")

    def __init__(self, settings: PassiveSettings) -> None:
        self._settings = settings
        self._bucket_len = settings.failure_rate_window / _BUCKETS
        self._buckets: deque[list[float]] = deque()  # [start, requests, failures]
        self.consecutive = 0

    def reset(self) -> None:
        self._buckets.clear()
        self.consecutive = 0

    def _advance(self, now: float) -> None:
        horizon = now - self._settings.failure_rate_window
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()

    def record(self, failure: bool, now: float) -> str | None:
        self._advance(now)
        if not self._buckets or now - self._buckets[-1][0] >= self._bucket_len:
            self._buckets.append([now, 0.0, 0.0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        if failure:
            bucket[2] += 1
            self.consecutive += 1
        else:
            self.consecutive = 0
        s = self._settings
        if failure and s.consecutive_failures and self.consecutive >= s.consecutive_failures:
            return "consecutive_failures"
        if failure:
            requests, failures = self.counts(now)
            if requests >= s.failure_rate_min_requests and failures / requests >= s.failure_rate:
                return "failure_rate"
        return None

    def counts(self, now: float) -> tuple[int, int]:
        self._advance(now)
        requests = sum(b[1] for b in self._buckets)
        failures = sum(b[2] for b in self._buckets)
        return int(requests), int(failures)

    def error_rate(self, now: float) -> float | None:
        requests, failures = self.counts(now)
        return failures / requests if requests else None

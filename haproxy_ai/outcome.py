"""Classify each attempt once.

Metrics, retries and passive health checking consume the same ``Outcome`` value so they
never disagree about what a failure was.
"""

from __future__ import annotations

import enum
from email.utils import parsedate_to_datetime

from .errors import (
    ConnectFailed,
    ConnectTimeout,
    FirstByteTimeout,
    IdleTimeout,
    ProxyError,
    TotalTimeout,
    UpstreamReset,
)

__all__ = ["Outcome", "classify_error", "classify_status", "retry_after_seconds"]


class Outcome(enum.Enum):
    SUCCESS = "success"
    CLIENT_ERROR = "client_error"  # 4xx other than 429: says nothing about the replica
    THROTTLED = "throttled"  # 429: back-pressure, not failure
    SERVER_ERROR = "server_error"  # 5xx
    CONNECT_FAILED = "connect_failed"
    CONNECT_TIMEOUT = "connect_timeout"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    TOTAL_TIMEOUT = "total_timeout"
    RESET = "reset"
    CLIENT_GONE = "client_gone"
    CANCELLED = "cancelled"  # a hedge that lost the race, or a retry that superseded it

    @property
    def is_failure(self) -> bool:
        """Whether this outcome counts against the backend's health."""
        return self in _FAILURES


_FAILURES = frozenset(
    {
        Outcome.SERVER_ERROR,
        Outcome.CONNECT_FAILED,
        Outcome.CONNECT_TIMEOUT,
        Outcome.FIRST_BYTE_TIMEOUT,
        Outcome.IDLE_TIMEOUT,
        Outcome.RESET,
    }
)

_BY_ERROR: dict[type[ProxyError], Outcome] = {
    ConnectFailed: Outcome.CONNECT_FAILED,
    ConnectTimeout: Outcome.CONNECT_TIMEOUT,
    FirstByteTimeout: Outcome.FIRST_BYTE_TIMEOUT,
    IdleTimeout: Outcome.IDLE_TIMEOUT,
    TotalTimeout: Outcome.TOTAL_TIMEOUT,
    UpstreamReset: Outcome.RESET,
}


def classify_status(status: int) -> Outcome:
    if status < 400:
        return Outcome.SUCCESS
    if status == 429:
        return Outcome.THROTTLED
    if status < 500:
        return Outcome.CLIENT_ERROR
    return Outcome.SERVER_ERROR


def classify_error(error: BaseException) -> Outcome:
    if isinstance(error, ProxyError):
        return _BY_ERROR.get(type(error), Outcome.RESET)
    return Outcome.RESET


def retry_after_seconds(headers: list[tuple[bytes, bytes]], now: float) -> float | None:
    """The Retry-After header as seconds from ``now`` (wall clock): delta-seconds or an
    HTTP-date (RFC 9110 §10.2.3). None when absent or unparsable."""
    for name, value in headers:
        if name.lower() != b"retry-after":
            continue
        text = value.decode("latin-1").strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                seconds = parsedate_to_datetime(text).timestamp() - now
            except (TypeError, ValueError):
                return None
        return max(seconds, 0.0) if seconds == seconds and seconds != float("inf") else None
    return None

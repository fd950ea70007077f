"""Retry policy: whether a failed attempt is worth another, and how long to wait first.

Pure and synchronous: the retry stage owns the loop, the sleeping and the metrics; this
module only answers questions, so every rule is testable without a network or a clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..outcome import Outcome
from ..settings import RetrySettings
from .budget import Budget

__all__ = ["RetryDecision", "RetryPolicy"]

# Failures before response headers, by the name `retry.retry_on` uses for them. Nothing reached the
# client yet, so replaying on another backend is invisible to it.
_BEFORE_HEADERS: dict[Outcome, str] = {
    Outcome.CONNECT_FAILED: "connect_failed",
    Outcome.CONNECT_TIMEOUT: "connect_timeout",
    Outcome.RESET: "reset",
    Outcome.FIRST_BYTE_TIMEOUT: "first_byte_timeout",
}

# Outcomes that carry a real response status, so `retry.statuses` applies. SUCCESS is left out
# on purpose: throwing away a good answer to ask again is never what a status list means.
_STATUS_OUTCOMES = frozenset({Outcome.CLIENT_ERROR, Outcome.THROTTLED, Outcome.SERVER_ERROR})

# 2 ** 60 x any sane base already exceeds any sane cap; a larger exponent would only risk
# OverflowError on an absurd retry number.
_MAX_EXPONENT = 60


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """The answer to "retry this attempt?".

    ``reason`` is the retryable condition (``"connect_failed"``, ``"status_503"``, ...) when
    ``retry`` is True, else why not: ``"disabled"``, ``"opt_out"``, ``"method_not_retryable"``,
    ``"body_not_replayable"``, ``"not_retryable"``, ``"attempts_exhausted"``, ``"deadline"`` or
    ``"budget_exhausted"``. ``delay`` is the backoff in seconds before the next attempt; 0 when
    ``retry`` is False.
    """

    retry: bool
    delay: float
    reason: str


class RetryPolicy:
    """Retry rules from ``RetrySettings``; one instance shared by all requests.

    Never sleeps, never does I/O, and touches the budget only in ``decide`` and only for a yes.
    """

    __slots__ = ("_on", "_rng", "_settings")

    def __init__(self, settings: RetrySettings, rng: random.Random) -> None:
        self._settings = settings
        self._rng = rng
        self._on = frozenset(settings.retry_on)

    def condition(self, outcome: Outcome, status: int | None) -> str | None:
        """The retryable condition this attempt's result matches, or None.

        Called on every finished attempt, so it is cheap and has no side effects. Failures
        before headers map through ``settings.retry_on`` (``"connect_failed"``, ``"connect_timeout"``,
        ``"reset"``, ``"first_byte_timeout"``); a response whose status is in ``settings.statuses``
        gives ``f"status_{status}"``. Everything else is None: successes, unlisted statuses, and
        failures after headers (idle timeout mid-body, total timeout, client gone), because by
        then the client may already hold part of the answer.

        A before-headers outcome that comes *with* a status is a failure after headers (for
        example a reset mid-body), so it is None too.
        """
        name = _BEFORE_HEADERS.get(outcome)
        if name is not None:
            return name if status is None and name in self._on else None
        if status is None or outcome not in _STATUS_OUTCOMES:
            return None
        for low, high in self._settings.statuses:
            if low <= status <= high:
                return f"status_{status}"
        return None

    def backoff(self, retry_number: int) -> float:
        """Seconds to wait before retry number ``retry_number`` (1 for the first retry).

        Full jitter (AWS's "exponential backoff and jitter"): uniform over
        ``[0, min(backoff_max, backoff_base * 2 ** (retry_number - 1))]``, so retries of many
        requests failing together spread out instead of arriving in waves. Numbers below 1
        count as 1. Draws from the injected rng; nothing else changes.
        """
        exponent = min(max(retry_number, 1) - 1, _MAX_EXPONENT)
        cap = min(self._settings.backoff_max, self._settings.backoff_base * 2.0**exponent)
        return self._rng.uniform(0.0, cap) if cap > 0 else 0.0

    def decide(
        self,
        *,
        outcome: Outcome,
        status: int | None,
        attempts_made: int,
        method: str,
        opt_out: bool,
        replayable: bool,
        remaining: float,
        retry_after: float | None,
        budget: Budget,
    ) -> RetryDecision:
        """Whether to send another attempt after this one, and after what delay.

        Called once per finished attempt that might be retried. ``attempts_made`` counts the
        attempts so far, this one included; ``remaining`` is the seconds left before the
        request's deadline (``math.inf`` when there is none).

        Checks run in a fixed order and the first "no" wins: disabled, opt-out, method, body
        replayability, retryable condition, attempts, deadline, and the budget last, so the
        budget is spent only when the answer is yes (a "no" never costs budget).
        Method names are compared exactly, as HTTP methods are case-sensitive.

        ``retry_after`` does not lengthen the delay: the caller puts the backend that sent it
        into cooldown and retries elsewhere, and it alone knows whether any other backend is
        left. It is taken here so the call site hands over everything it knows in one place.
        """
        s = self._settings
        if not s.enabled:
            return _no("disabled")
        if opt_out:
            return _no("opt_out")
        if method not in s.methods:
            return _no("method_not_retryable")
        if not replayable:
            return _no("body_not_replayable")
        condition = self.condition(outcome, status)
        if condition is None:
            return _no("not_retryable")
        if attempts_made >= s.attempts:
            return _no("attempts_exhausted")
        delay = self.backoff(attempts_made)
        if delay >= remaining:  # the next attempt would start at or after the deadline
            return _no("deadline")
        if not budget.try_spend():
            return _no("budget_exhausted")
        return RetryDecision(True, delay, condition)


def _no(reason: str) -> RetryDecision:
    return RetryDecision(False, 0.0, reason)

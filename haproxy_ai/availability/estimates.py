"""Measuring: state history -> intervals -> rate estimates with exact Poisson bounds."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

UP_STATES: frozenset[str] = frozenset({"healthy", "cooldown"})
DOWN_STATES: frozenset[str] = frozenset({"unhealthy", "ejected"})
ADMIN_STATES: frozenset[str] = frozenset({"draining", "disabled"})

SECONDS_PER_YEAR = 365.25 * 86_400.0  # Julian year

_EPS = 1e-16
_TINY = 1e-300
_MAX_ITER = 100_000

SpanClass = Literal["up", "down", "admin"]


# --------------------------------------------------------------------------------------------------
# Measuring: state history -> intervals -> rate estimates
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interval:
    """A span ``[start, end)`` in wall-clock seconds during which a backend was in one class.

    ``state`` is ``"up"``, ``"down"`` or ``"admin"`` (see the module docstring).
    """

    start: float
    end: float
    state: str

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _classify(state: str) -> SpanClass:
    if state in UP_STATES:
        return "up"
    if state in DOWN_STATES:
        return "down"
    if state in ADMIN_STATES:
        return "admin"
    raise ValueError(f"unknown backend state {state!r}")


def intervals(
    transitions: Sequence[tuple[float, str, str]],
    start: float,
    end: float,
    initial: str = "healthy",
) -> list[Interval]:
    """Cut one backend's history into up/down/admin spans covering ``[start, end]``.

    ``transitions`` are ``(at, from_state, to_state)`` with ``at`` in wall-clock seconds, in any order
    (they are stably sorted by ``at``). The state at ``start`` is the ``to_state`` of the last
    transition at or before ``start``, or ``initial`` if there is none; transitions after ``end`` are
    ignored. ``to_state`` is authoritative: ``from_state`` is only validated, so a gap in the record
    (e.g. a bounded history that dropped old entries) cannot put the spans out of step.

    Consecutive spans of the same class (healthy -> cooldown, ejected -> unhealthy, ...) are merged and
    zero-length spans dropped, so neighbouring intervals always differ in class. A transition exactly at
    ``start`` or ``end`` therefore leaves no span on one side and is not counted as an event by
    :func:`failure_rate` / :func:`repair_rate` (nor in an adjoining window, where it only sets the
    initial state). Returns ``[]`` when ``start == end``. Raises ``ValueError`` for ``end < start`` or
    an unknown state name.
    """
    if not end >= start:
        raise ValueError(f"window end {end} is before its start {start}")
    current = _classify(initial)
    ordered = sorted(transitions, key=lambda t: t[0])
    spans: list[Interval] = []
    cursor = start
    for at, from_state, to_state in ordered:
        _classify(from_state)
        cls = _classify(to_state)
        if at <= start:
            current = cls
            continue
        if at > end:
            break
        if cls != current:
            if at > cursor:
                spans.append(Interval(cursor, at, current))
            cursor = at
            current = cls
    if end > cursor:
        spans.append(Interval(cursor, end, current))
    merged: list[Interval] = []
    for span in spans:  # a zero-length span can leave two same-class spans adjacent; join them
        if merged and merged[-1].state == span.state and merged[-1].end == span.start:
            merged[-1] = Interval(merged[-1].start, span.end, span.state)
        else:
            merged.append(span)
    return merged


@dataclass(frozen=True, slots=True)
class RateEstimate:
    """A Poisson event rate, in events per second, with its two-sided 95% confidence bounds.

    ``rate = events / exposure`` (the MLE; 0 with no events). ``low``/``high`` are the exact chi-square
    (Garwood) bounds ``chi2.ppf(0.025, 2n) / (2T)`` (0 when ``n = 0``) and
    ``chi2.ppf(0.975, 2n + 2) / (2T)``. With zero exposure: ``rate = low = 0`` and ``high = inf``.
    """

    rate: float
    low: float
    high: float
    events: int
    exposure: float  # seconds


def poisson_rate(events: int, exposure: float, confidence: float = 0.95) -> RateEstimate:
    """Estimate a Poisson rate from ``events`` seen over ``exposure`` seconds (censored: see RateEstimate)."""
    if events < 0 or not exposure >= 0.0 or math.isinf(exposure):
        raise ValueError(f"need events >= 0 and finite exposure >= 0, got {events} over {exposure}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if exposure == 0.0:
        if events:
            raise ValueError(f"{events} events with no exposure")
        return RateEstimate(0.0, 0.0, math.inf, 0, 0.0)
    alpha = 1.0 - confidence
    low = chi2_ppf(alpha / 2.0, 2 * events) / (2.0 * exposure) if events else 0.0
    high = chi2_ppf(1.0 - alpha / 2.0, 2 * events + 2) / (2.0 * exposure)
    return RateEstimate(events / exposure, low, high, events, exposure)


def _count(ivs: Sequence[Interval], before: str, after: str) -> int:
    return sum(1 for a, b in itertools.pairwise(ivs) if a.state == before and b.state == after and a.end == b.start)


def _exposure(ivs: Sequence[Interval], state: str) -> float:
    return math.fsum(iv.seconds for iv in ivs if iv.state == state)


def failure_rate(ivs: Sequence[Interval]) -> RateEstimate:
    """lambda: up -> down transitions per second of up time.

    Only an up span *directly* followed by a down span counts (up -> admin -> down is not a failure).
    """
    return poisson_rate(_count(ivs, "up", "down"), _exposure(ivs, "up"))


def repair_rate(ivs: Sequence[Interval]) -> RateEstimate:
    """mu: down -> up transitions per second of down time (down -> admin -> up is not a repair)."""
    return poisson_rate(_count(ivs, "down", "up"), _exposure(ivs, "down"))


# --------------------------------------------------------------------------------------------------
# The chi-square quantile (no scipy): regularized incomplete gamma + safeguarded Newton
# --------------------------------------------------------------------------------------------------


def _gamma_pq(a: float, x: float) -> tuple[float, float]:
    """Regularized incomplete gamma ``(P(a, x), Q(a, x) = 1 - P)``, each accurate in its own tail.

    Series for ``x < a + 1``, Lentz continued fraction otherwise (Numerical Recipes, 6.2).
    """
    if x <= 0.0:
        return 0.0, 1.0
    log_prefactor = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_ITER):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                p = min(1.0, total * math.exp(log_prefactor))
                return p, 1.0 - p
        raise ArithmeticError(f"incomplete gamma series did not converge for a={a}, x={x}")
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            q = min(1.0, h * math.exp(log_prefactor))
            return 1.0 - q, q
    raise ArithmeticError(f"incomplete gamma continued fraction did not converge for a={a}, x={x}")


def chi2_ppf(p: float, df: float) -> float:
    """Quantile of the chi-square distribution with ``df`` degrees of freedom: ``x`` with ``CDF(x) = p``.

    ``chi2(df)`` is ``2 * Gamma(shape=df/2)``, so this solves ``P(df/2, x/2) = p`` for the regularized
    lower incomplete gamma ``P``: a Wilson-Hilferty (or small-``x`` power-law) first guess, then Newton
    steps kept inside a bisection bracket. The residual is taken in whichever tail is smaller, so both
    ends are accurate to ~1e-12 relative. ``p = 0`` gives 0 and ``p = 1`` gives ``inf``.
    """
    if not df > 0.0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p}")
    if p == 0.0:
        return 0.0
    if p == 1.0:
        return math.inf
    a = df / 2.0
    upper = p > 0.5
    target = 1.0 - p if upper else p

    def residual(y: float) -> float:  # increasing in y, zero at the quantile
        lower_p, upper_q = _gamma_pq(a, y)
        return target - upper_q if upper else lower_p - target

    def density(y: float) -> float:  # d/dy P(a, y)
        return math.exp((a - 1.0) * math.log(y) - y - math.lgamma(a)) if y > 0.0 else 0.0

    z = statistics.NormalDist().inv_cdf(p)
    base = 1.0 - 2.0 / (9.0 * df) + z * math.sqrt(2.0 / (9.0 * df))
    # For small x, P(a, y) ~ y^a / Gamma(a + 1): the better guess in the far lower tail.
    small = math.exp((math.log(p) + math.lgamma(a + 1.0)) / a)
    y = df * base**3 / 2.0 if base > 0.0 else small
    if y <= 0.0 or not math.isfinite(y):
        y = max(small, a)
    lo, hi = 0.0, math.inf
    for i in range(2_000):
        f = residual(y)
        if f == 0.0:
            return 2.0 * y
        if f < 0.0:
            lo = y
        else:
            hi = y
        fp = density(y)
        step = y - f / fp if fp > 0.0 else math.nan
        if math.isinf(hi):  # no upper bracket yet: Newton from below moves up; else double
            nxt = step if step > y else 2.0 * y
        else:  # Newton inside the bracket, bisection otherwise (and every 8th step, to guarantee progress)
            nxt = step if lo < step < hi and i % 8 != 7 else (lo + hi) / 2.0
            if hi - lo <= 1e-14 * hi:
                return lo + hi  # 2 * midpoint
        if abs(nxt - y) <= 1e-14 * y:
            return 2.0 * nxt
        y = nxt
    raise ArithmeticError(f"chi-square quantile did not converge for p={p}, df={df}")


# --------------------------------------------------------------------------------------------------
# Modelling: the birth-death chain over the number of healthy replicas
# --------------------------------------------------------------------------------------------------

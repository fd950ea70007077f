"""Availability of a pool of replicas, from the health state history.

Pure math, standard library only. Two halves:

**Measuring.** Each backend's state history (``(at, from_state, to_state)`` transitions, wall-clock
seconds) is cut into :class:`Interval` spans of three classes:

* ``"up"``    = healthy or cooldown (cooldown is back-pressure the replica asked for, not a failure);
* ``"down"``  = unhealthy or ejected;
* ``"admin"`` = draining or disabled: an operator's decision. That time is excluded (it is neither up
  nor down exposure) and entering or leaving it is neither a failure nor a repair.

A *failure* is an up span followed directly by a down span; a *repair* is a down span followed
directly by an up span. The failure rate is estimated as ``lambda = failures / up time`` and the
repair rate as ``mu = repairs / down time`` (events per second). Both are maximum-likelihood estimates
for exponential holding times with a right-censored observation window: a span still open at "now"
contributes its exposure but no event. Their 95% confidence bounds are the exact (Garwood)
chi-square bounds for a Poisson count over a fixed exposure ``T``::

    low  = chi2.ppf(0.025, 2n) / (2T)        (0 when n = 0)
    high = chi2.ppf(0.975, 2n + 2) / (2T)

**Modelling.** ``n`` identical, independent replicas each fail at rate ``lambda`` while up and are
repaired at rate ``mu`` while down, by at most ``crews`` repairs at a time (``None``: every down replica
is repaired independently). The number ``k`` of healthy replicas is then a birth-death continuous-time
Markov chain with death rate ``k * lambda`` and birth rate ``min(n - k, crews) * mu``; its stationary
distribution gives ``P(at least k_min healthy)``, the expected downtime per year, the mean time from
all-up to fewer than ``k_min`` healthy, and how many replicas a target needs. :func:`simulate` runs the
same chain by Monte Carlo, and :func:`observed_fraction_at_least` measures what actually happened, so
the model can be checked against reality.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ADMIN_STATES",
    "DOWN_STATES",
    "SECONDS_PER_YEAR",
    "UP_STATES",
    "Interval",
    "RateEstimate",
    "chi2_ppf",
    "downtime_per_year",
    "failure_rate",
    "intervals",
    "mean_time_to_failure",
    "observed_fraction_at_least",
    "p_at_least",
    "poisson_rate",
    "pool_distribution",
    "pool_report",
    "repair_rate",
    "replica_availability",
    "replicas_needed",
    "simulate",
]

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


def _check_rates(lam: float, mu: float) -> None:
    if not (0.0 <= lam < math.inf and 0.0 <= mu < math.inf):
        raise ValueError(f"rates must be finite and >= 0, got lambda={lam}, mu={mu}")


def _check_crews(crews: int | None) -> None:
    if crews is not None and crews < 1:
        raise ValueError(f"crews must be >= 1 or None, got {crews}")


def replica_availability(lam: float, mu: float) -> float:
    """Steady-state probability one replica is up: ``mu / (lambda + mu)``.

    1.0 when ``lambda == 0`` (it never fails, whatever ``mu``); 0.0 when ``mu == 0 < lambda``.
    """
    _check_rates(lam, mu)
    if lam == 0.0:
        return 1.0
    return mu / (lam + mu)


def _births(n: int, k: int, crews: int | None) -> int:
    """Replicas under repair in state ``k`` (``k`` healthy of ``n``)."""
    return n - k if crews is None else min(n - k, crews)


def pool_distribution(n: int, lam: float, mu: float, crews: int | None = None) -> list[float]:
    """Stationary distribution ``pi[k]``, ``k = 0..n`` healthy, of the birth-death chain.

    Death rate in state ``k`` is ``k * lambda``; birth rate is ``min(n - k, crews) * mu`` (``crews=None``:
    ``n - k``, independent repair). Detailed balance gives
    ``pi[k+1] / pi[k] = min(n - k, crews) * mu / ((k + 1) * lambda)``; the products are accumulated as
    logarithms and normalised with log-sum-exp, so large ``n`` neither overflows nor underflows to NaN.
    With independent repair this is ``Binomial(n, mu / (lambda + mu))``.
    ``lambda == 0`` puts all mass on ``n``; ``mu == 0 < lambda`` puts all mass on 0.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _check_rates(lam, mu)
    _check_crews(crews)
    if lam == 0.0:
        return [0.0] * n + [1.0]
    if mu == 0.0:
        return [1.0] + [0.0] * n
    log_ratio = math.log(mu) - math.log(lam)
    logs = [0.0]
    for k in range(n):
        logs.append(logs[-1] + math.log(_births(n, k, crews)) - math.log(k + 1) + log_ratio)
    top = max(logs)
    weights = [math.exp(v - top) for v in logs]
    total = math.fsum(weights)
    return [w / total for w in weights]


def p_at_least(dist: Sequence[float], k: int) -> float:
    """``P(at least k healthy) = sum(dist[k:])`` for a distribution indexed by the number healthy.

    1.0 for ``k <= 0``; 0.0 for ``k > n``.
    """
    if k <= 0:
        return 1.0
    return min(1.0, max(0.0, math.fsum(dist[k:])))


def downtime_per_year(p_up: float) -> float:
    """Expected seconds per year (365.25 days) with fewer than the needed healthy: ``(1 - p_up) * year``."""
    if not 0.0 <= p_up <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p_up}")
    return (1.0 - p_up) * SECONDS_PER_YEAR


def mean_time_to_failure(n: int, lam: float, mu: float, k_min: int, crews: int | None = None) -> float:
    """Expected seconds from all ``n`` healthy until fewer than ``k_min`` are healthy (pool failure).

    States ``k < k_min`` are absorbing. The expected absorption times ``T[k]`` satisfy the tridiagonal
    system ``(d_k + b_k) T[k] - d_k T[k-1] - b_k T[k+1] = 1`` for ``k_min <= k <= n``, with
    ``d_k = k * lambda``, ``b_k = min(n - k, crews) * mu`` and ``T[k_min - 1] = 0``. Eliminating from the
    top (``b_n = 0``) turns it into the step times ``tau_k = E[time from k to k - 1]``::

        tau_n = 1 / d_n,   tau_k = 1 / d_k + (b_k / d_k) * tau_{k+1},   T[n] = sum(tau_k, k = k_min..n)

    which is the same solution with only positive terms (no cancellation). ``inf`` when ``lambda == 0``,
    when ``k_min <= 0`` (the pool can't fail) or when the result overflows; 0 when ``n < k_min``.
    Examples: ``n = 1``: ``1 / lambda``; ``n = 2, k_min = 1``, independent repair: ``(3 lambda + mu) / (2 lambda^2)``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _check_rates(lam, mu)
    _check_crews(crews)
    if n < k_min:
        return 0.0
    if k_min <= 0 or lam == 0.0:
        return math.inf
    tau = 0.0
    total = 0.0
    for k in range(n, k_min - 1, -1):
        deaths = k * lam
        tau = 1.0 / deaths + (_births(n, k, crews) * mu / deaths) * tau
        total += tau
    return total


def replicas_needed(
    target: float,
    k_min: int,
    lam: float,
    mu: float,
    crews: int | None = None,
    max_n: int = 256,
) -> int | None:
    """Smallest ``n >= k_min`` with ``P(at least k_min healthy) >= target``; ``None`` if none up to ``max_n``.

    A linear scan over ``n`` (each step is O(n)). With a fixed number of repair crews more replicas can
    stop helping (the chain saturates), so an unreachable target returns ``None`` rather than looping.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target must be in [0, 1], got {target}")
    if k_min < 0:
        raise ValueError(f"k_min must be >= 0, got {k_min}")
    for n in range(k_min, max_n + 1):
        if p_at_least(pool_distribution(n, lam, mu, crews), k_min) >= target:
            return n
    return None


def observed_fraction_at_least(per_backend: Sequence[Sequence[Interval]], k: int, start: float, end: float) -> float:
    """Measured fraction of ``[start, end]`` during which at least ``k`` backends were up.

    A sweep over all interval boundaries: each backend's ``"up"`` intervals (clipped to the window)
    add +1 at their start and -1 at their end. Admin time, down time and time not covered by a
    backend's intervals (e.g. before it was added) count as not up. Each backend's intervals must not
    overlap (as :func:`intervals` guarantees). 1.0 for ``k <= 0``.
    """
    if not end > start:
        raise ValueError(f"need end > start, got [{start}, {end}]")
    if k <= 0:
        return 1.0
    delta: dict[float, int] = {}
    for ivs in per_backend:
        for iv in ivs:
            s, e = max(iv.start, start), min(iv.end, end)
            if iv.state == "up" and e > s:
                delta[s] = delta.get(s, 0) + 1
                delta[e] = delta.get(e, 0) - 1
    covered: list[float] = []
    count = 0
    prev = start
    for t in sorted(delta):
        if count >= k:
            covered.append(t - prev)
        count += delta[t]
        prev = t
    return min(1.0, math.fsum(covered) / (end - start))


def simulate(
    n: int,
    lam: float,
    mu: float,
    k_min: int,
    horizon: float,
    rng: random.Random,
    crews: int | None = None,
) -> float:
    """Monte-Carlo (Gillespie) run of the chain from all ``n`` healthy for ``horizon`` seconds.

    In state ``k`` the next event comes after ``Exp(k * lambda + min(n - k, crews) * mu)`` seconds and is
    a failure with probability ``k * lambda / total``. Returns the fraction of ``[0, horizon]`` spent with
    at least ``k_min`` healthy (an estimate of ``p_at_least(pool_distribution(...), k_min)`` whose error
    shrinks like ``1 / sqrt(horizon * (lambda + mu))``).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 < horizon < math.inf:
        raise ValueError(f"horizon must be finite and > 0, got {horizon}")
    _check_rates(lam, mu)
    _check_crews(crews)
    k = n
    t = 0.0
    good: list[float] = []
    while t < horizon:
        deaths = k * lam
        total = deaths + _births(n, k, crews) * mu
        dt = rng.expovariate(total) if total > 0.0 else math.inf
        if k >= k_min:
            good.append(min(dt, horizon - t))
        t += dt
        if t >= horizon:
            break
        k += -1 if rng.random() * total < deaths else 1
    return math.fsum(good) / horizon


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def _finite(x: float | None) -> float | None:
    """JSON has no infinity or NaN: represent both as ``None``."""
    return x if x is not None and math.isfinite(x) else None


def _per_hour(est: RateEstimate) -> dict[str, float | None]:
    return {"rate": _finite(est.rate * 3600.0), "low": _finite(est.low * 3600.0), "high": _finite(est.high * 3600.0)}


_ASSUMPTIONS = [
    "replicas are identical and fail and recover independently (pooled rates are total events / total exposure)",
    "times to failure and to repair are exponential (constant rates), so the healthy count is a birth-death chain",
    "up = healthy or cooldown, down = unhealthy or ejected; draining/disabled time is excluded and is no event",
    "the window is right-censored: a span still open at 'now' adds exposure but no event",
    "no events -> rate 0 with a 95% upper bound of chi2.ppf(0.975, 2) / (2T) = 3.69 / T",
    "no repair observed after failures -> the model's mu is failures / down time, which reproduces the "
    "observed availability",
    "no failure observed -> rates are not identified; pool figures use the observed availability with "
    "independent replicas (binomial) and the mean time to pool failure is unknown (null)",
    "n counts backends not draining or disabled now; infinite values are reported as null",
]


def pool_report(
    histories: Mapping[str, tuple[float, Sequence[tuple[float, str, str]], str]],
    now: float,
    *,
    k_min: int,
    crews: int | None = None,
    target: float = 0.9999,
) -> dict[str, Any]:
    """A JSON-able availability report for a pool, per backend and for the model of the whole pool.

    ``histories`` maps a backend name to ``(observed_since, transitions, current_state)``. The state
    before the first transition is that transition's ``from_state`` (or ``current_state`` when there
    are none), so a bounded history still starts in the right state; if it dropped entries, pass the
    first kept transition's time as ``observed_since``. ``observed_since`` later than ``now`` is clamped.
    The window is ``[min(observed_since), now]``.

    Per backend: event counts, up/down/admin seconds, lambda and mu (per hour, with 95% bounds),
    MTBF = up / failures and MTTR = down / repairs in seconds (``None`` without events), the observed
    availability ``up / (up + down)`` (``None`` without exposure) and the model's ``mu / (lambda + mu)``,
    which falls back to the observed availability unless at least one failure and one repair were seen
    (``availability_basis`` says which).

    Pool: lambda and mu are pooled (total events / total exposure). The chain uses
    ``model_basis`` = ``"estimated"`` (failures and repairs seen), ``"observed-availability"`` (failures
    but no repair: mu = failures / down time, so the replica availability equals the observed one),
    ``"no-failures"`` (binomial with the observed replica availability, ``crews`` ignored; with no down
    time this is exactly the lambda = 0 model) or ``"no-data"`` (no up or down time: model figures are
    ``None``). ``observed_fraction_at_least_k`` is the measured fraction of the window with at least
    ``k_min`` backends up. Infinite values are ``None`` (``json.dumps(..., allow_nan=False)`` works).
    """
    if k_min < 1:
        raise ValueError(f"k_min must be >= 1, got {k_min}")
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target must be in [0, 1], got {target}")
    _check_crews(crews)
    start = min((min(since, now) for since, _, _ in histories.values()), default=now)

    backends: dict[str, dict[str, Any]] = {}
    all_ivs: list[list[Interval]] = []
    failures = repairs = 0
    ups: list[float] = []
    downs: list[float] = []
    n = 0
    for name, (since, transitions, current) in histories.items():
        ordered = sorted(transitions, key=lambda t: t[0])
        initial = ordered[0][1] if ordered else current
        ivs = intervals(ordered, min(since, now), now, initial=initial)
        all_ivs.append(ivs)
        lam_est, mu_est = failure_rate(ivs), repair_rate(ivs)
        up_s, down_s = lam_est.exposure, mu_est.exposure
        observed = up_s / (up_s + down_s) if up_s + down_s > 0.0 else None
        if lam_est.events and mu_est.events:
            availability: float | None = replica_availability(lam_est.rate, mu_est.rate)
            basis = "model"
        else:
            availability, basis = observed, "observed" if observed is not None else "no-data"
        backends[name] = {
            "state": current,
            "mtbf_s": up_s / lam_est.events if lam_est.events else None,
            "mttr_s": down_s / mu_est.events if mu_est.events else None,
            "lambda_per_hour": _per_hour(lam_est),
            "mu_per_hour": _per_hour(mu_est),
            "failures": lam_est.events,
            "repairs": mu_est.events,
            "up_s": up_s,
            "down_s": down_s,
            "admin_s": _exposure(ivs, "admin"),
            "availability": availability,
            "availability_basis": basis,
            "observed_availability": observed,
        }
        failures += lam_est.events
        repairs += mu_est.events
        ups.append(up_s)
        downs.append(down_s)
        n += _classify(current) != "admin"

    up_total, down_total = math.fsum(ups), math.fsum(downs)
    lam_pool, mu_pool = poisson_rate(failures, up_total), poisson_rate(repairs, down_total)

    # The chain's inputs: (lambda, mu, crews), or None with no data (see the docstring for the cases).
    chain: tuple[float, float, int | None] | None
    if failures and repairs:
        chain, model_basis = (lam_pool.rate, mu_pool.rate, crews), "estimated"
    elif failures:
        chain, model_basis = (lam_pool.rate, failures / down_total, crews), "observed-availability"
    elif up_total + down_total > 0.0:
        a_obs = up_total / (up_total + down_total)
        # lambda = 1, mu = a / (1 - a), independent repair: exactly Binomial(n, a); a = 1 is lambda = 0.
        chain = (0.0, 0.0, None) if a_obs == 1.0 else (1.0, a_obs / (1.0 - a_obs), None)
        model_basis = "no-failures"
    else:
        chain, model_basis = None, "no-data"

    pool: dict[str, Any] = {
        "lambda_per_hour": _per_hour(lam_pool),
        "mu_per_hour": _per_hour(mu_pool),
        "failures": failures,
        "repairs": repairs,
        "up_s": up_total,
        "down_s": down_total,
        "model_basis": model_basis,
        "model_mu_per_hour": None,
        "replica_availability": None,
        "n": n,
        "p_at_least_k": None,
        "expected_downtime_per_year_s": None,
        "mean_time_to_pool_failure_s": None,
        "replicas_needed_for_target": None,
        "observed_fraction_at_least_k": observed_fraction_at_least(all_ivs, k_min, start, now) if now > start else None,
    }
    if chain is not None:
        lam, mu, chain_crews = chain
        p_k = p_at_least(pool_distribution(n, lam, mu, chain_crews), k_min)
        pool.update(
            {
                "model_mu_per_hour": mu * 3600.0 if model_basis != "no-failures" else None,
                "replica_availability": replica_availability(lam, mu),
                "p_at_least_k": p_k,
                "expected_downtime_per_year_s": downtime_per_year(p_k),
                "mean_time_to_pool_failure_s": (
                    _finite(mean_time_to_failure(n, lam, mu, k_min, chain_crews)) if failures else None
                ),
                "replicas_needed_for_target": replicas_needed(target, k_min, lam, mu, chain_crews),
            }
        )
    return {
        "window": {"start": start, "end": now, "seconds": now - start},
        "k_min": k_min,
        "crews": crews,
        "target": target,
        "backends": backends,
        "pool": pool,
        "assumptions": list(_ASSUMPTIONS),
    }

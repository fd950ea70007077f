"""Modelling: the birth-death chain over the number of healthy replicas, and its simulation."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from .estimates import SECONDS_PER_YEAR, Interval


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

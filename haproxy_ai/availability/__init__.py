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

from .chain import (
    downtime_per_year,
    mean_time_to_failure,
    observed_fraction_at_least,
    p_at_least,
    pool_distribution,
    replica_availability,
    replicas_needed,
    simulate,
)
from .estimates import (
    ADMIN_STATES,
    DOWN_STATES,
    SECONDS_PER_YEAR,
    UP_STATES,
    Interval,
    RateEstimate,
    chi2_ppf,
    failure_rate,
    intervals,
    poisson_rate,
    repair_rate,
)
from .report import pool_report

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

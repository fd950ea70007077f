"""The pool report served at /admin/availability and printed by `haproxy-ai availability`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .chain import (
    _check_crews,
    downtime_per_year,
    mean_time_to_failure,
    observed_fraction_at_least,
    p_at_least,
    pool_distribution,
    replica_availability,
    replicas_needed,
)
from .estimates import Interval, RateEstimate, _classify, _exposure, failure_rate, intervals, poisson_rate, repair_rate


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

"""Reading exported histories and printing a report as a table (`haproxy-ai availability`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .report import pool_report

__all__ = ["HistoryError", "render_table", "report_from_export"]

HISTORY_FORMAT = "haproxy-ai-history/1"


class HistoryError(ValueError):
    """An exported history file that cannot be read; the message says where."""


def report_from_export(data: Any, *, k_min: int, crews: int | None, target: float) -> dict[str, Any]:
    """Build the report from ``GET /admin/history`` output, validating its shape."""
    if not isinstance(data, Mapping) or data.get("format") != HISTORY_FORMAT:
        raise HistoryError(f"not a haproxy-ai history export (expected format {HISTORY_FORMAT!r})")
    now = data.get("now")
    backends = data.get("backends")
    if not isinstance(now, int | float) or not isinstance(backends, Mapping):
        raise HistoryError("history export needs a numeric 'now' and a 'backends' mapping")
    histories: dict[str, tuple[float, list[tuple[float, str, str]], str]] = {}
    for name, entry in backends.items():
        where = f"backends.{name}"
        if not isinstance(entry, Mapping):
            raise HistoryError(f"{where}: must be a mapping")
        since, state, transitions = entry.get("since"), entry.get("state"), entry.get("transitions")
        if not isinstance(since, int | float) or not isinstance(state, str) or not isinstance(transitions, list):
            raise HistoryError(f"{where}: needs numeric 'since', string 'state' and a 'transitions' list")
        parsed = []
        for i, t in enumerate(transitions):
            if not (isinstance(t, list) and len(t) == 3 and isinstance(t[0], int | float)):
                raise HistoryError(f"{where}.transitions[{i}]: expected [at, from_state, to_state]")
            parsed.append((float(t[0]), str(t[1]), str(t[2])))
        histories[str(name)] = (float(since), parsed, state)
    try:
        return pool_report(histories, float(now), k_min=k_min, crews=crews, target=target)
    except ValueError as exc:
        raise HistoryError(str(exc)) from None


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _fmt_pct(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def render_table(report: Mapping[str, Any]) -> str:
    """A readable summary: one line per backend, then the pool model and what-ifs."""
    window = report.get("window", {})
    lines = [
        f"observed {_fmt_duration(window.get('seconds'))}; pool up = at least {report.get('k_min')} healthy; "
        f"repair crews: {report.get('crews') or 'independent'}",
        "",
        f"{'backend':<20} {'failures':>8} {'repairs':>7} {'MTBF':>9} {'MTTR':>9} {'availability':>13} {'observed':>10}",
    ]
    for name, b in sorted(report.get("backends", {}).items()):
        lines.append(
            f"{name:<20} {b.get('failures', 0):>8} {b.get('repairs', 0):>7} {_fmt_duration(b.get('mtbf_s')):>9} "
            f"{_fmt_duration(b.get('mttr_s')):>9} {_fmt_pct(b.get('availability')):>13} "
            f"{_fmt_pct(b.get('observed_availability'), 2):>10}"
        )
    pool = report.get("pool", {})
    needed = pool.get("replicas_needed_for_target")
    lines += [
        "",
        f"pool of {pool.get('n')}: P(at least {report.get('k_min')} healthy) = {_fmt_pct(pool.get('p_at_least_k'))} "
        f"(model basis: {pool.get('model_basis')}); measured: {_fmt_pct(pool.get('observed_fraction_at_least_k'))}",
        f"expected downtime per year: {_fmt_duration(pool.get('expected_downtime_per_year_s'))}; "
        f"mean time to pool failure: {_fmt_duration(pool.get('mean_time_to_pool_failure_s'))}",
        f"replicas needed for {_fmt_pct(report.get('target'), 2)}: {needed if needed is not None else 'not reachable'}",
    ]
    return "\n".join(lines)

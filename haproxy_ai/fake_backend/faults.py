"""Injected failure modes: what ``POST /_fault`` accepts and which fault each request gets.

Modes are ``ok``, ``error``, ``hang``, ``slow``, ``reset`` and ``retry_after``; any but ``ok``
may be limited to the next ``count`` inference requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ..settings import parse_duration

__all__ = ["FAULT_MODES", "Fault", "FaultSwitch", "parse_fault"]

FAULT_MODES: Final = ("ok", "error", "hang", "slow", "reset", "retry_after")


@dataclass(frozen=True)
class Fault:
    """One fault mode with its parameters (those a mode does not use keep their defaults)."""

    mode: str = "ok"
    status: int = 500
    latency: float = 5.0
    after_chunks: int = 0
    seconds: float = 1.0

    def describe(self) -> dict[str, Any]:
        """The parameters that apply to this mode, as ``GET /_fault`` reports them."""
        params: dict[str, Any] = {}
        if self.mode in ("error", "retry_after"):
            params["status"] = self.status
        if self.mode == "slow":
            params["latency"] = self.latency
        if self.mode == "reset":
            params["after_chunks"] = self.after_chunks
        if self.mode == "retry_after":
            params["seconds"] = self.seconds
        return params


_OK_FAULT: Final = Fault()
_FAULT_PARAMS: Final[dict[str, frozenset[str]]] = {
    "ok": frozenset(),
    "error": frozenset({"status", "count"}),
    "hang": frozenset({"count"}),
    "slow": frozenset({"latency", "count"}),
    "reset": frozenset({"after_chunks", "count"}),
    "retry_after": frozenset({"status", "seconds", "count"}),
}


def parse_fault(mode: object, params: dict[str, Any]) -> tuple[Fault, int | None]:
    """Validate a fault request; returns the fault and how many requests it lasts (None = until
    changed). ValueError messages are meant for the person who sent the request."""
    if not isinstance(mode, str) or mode not in _FAULT_PARAMS:
        raise ValueError(f"unknown fault mode {mode!r}; expected one of {', '.join(FAULT_MODES)}")
    unknown = sorted(set(params) - _FAULT_PARAMS[mode])
    if unknown:
        allowed = ", ".join(sorted(_FAULT_PARAMS[mode])) or "none"
        raise ValueError(f"fault {mode!r} takes no parameter {', '.join(unknown)} (allowed: {allowed})")

    def get_int(name: str, default: int, low: int, high: int) -> int:
        if name not in params:
            return default
        value = params[name]
        # Strict on the wire: 2.5 requests or "3" chunks is a typo worth reporting.
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer between {low} and {high}, got {value!r}")
        return value

    def get_duration(name: str, default: float) -> float:
        if name not in params:
            return default
        try:
            return parse_duration(params[name])
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    count = get_int("count", 0, 1, 2**31) if "count" in params else None
    default_status = 429 if mode == "retry_after" else 500
    fault = Fault(
        mode=mode,
        # Faults model failures, so only error statuses make sense here.
        status=get_int("status", default_status, 400, 599),
        latency=get_duration("latency", 5.0),
        after_chunks=get_int("after_chunks", 0, 0, 2**31),
        seconds=get_duration("seconds", 1.0),
    )
    return fault, count


class FaultSwitch:
    """The current fault and how many inference requests it still applies to.

    ``set`` may be called from another thread: the (fault, requests left or None = until
    changed) pair is swapped as one attribute, so the loop never reads a half-updated pair.
    """

    def __init__(self) -> None:
        self._slot: tuple[Fault, int | None] = (_OK_FAULT, None)

    @property
    def current(self) -> Fault:
        """The fault in force now, without consuming it."""
        return self._slot[0]

    def set(self, mode: object, params: dict[str, Any]) -> None:
        """Validate and install a fault (see ``parse_fault``). Raises ValueError if invalid."""
        fault, count = parse_fault(mode, params)
        self._slot = (_OK_FAULT if fault.mode == "ok" else fault, count)

    def take(self) -> Fault:
        """The fault for one arriving inference request; counts it against ``count``."""
        fault, left = self._slot
        if left is not None:
            self._slot = (fault, left - 1) if left > 1 else (_OK_FAULT, None)
        return fault

    def state(self) -> dict[str, Any]:
        """The body of ``GET /_fault``: mode, its parameters and requests remaining."""
        fault, left = self._slot
        return {"fault": fault.mode, "params": fault.describe(), "remaining": left}

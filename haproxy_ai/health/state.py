"""Backend states, transitions, and the per-backend health record the supervisor owns."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .checks import RiseFall
from .passive import OutlierDetector

if TYPE_CHECKING:
    from ..backends import Backend
    from .probe import ProbeResult

__all__ = ["AdminState", "BackendHealth", "State", "Transition"]


class State(enum.Enum):
    """What a backend is, in order of precedence (the first that applies wins)."""

    DISABLED = "disabled"  # operator: no traffic at all
    DRAINING = "draining"  # operator or reload: no new requests, in-flight ones finish
    UNHEALTHY = "unhealthy"  # active probes failed `fall` times in a row
    EJECTED = "ejected"  # passive outlier detection, for a growing ejection time
    COOLDOWN = "cooldown"  # the backend asked for a pause (429/503 + Retry-After); not a failure
    HEALTHY = "healthy"


class AdminState(enum.Enum):
    ENABLED = "enabled"
    DRAINING = "draining"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Transition:
    at: float  # wall clock, for people and the availability model
    from_state: State
    to_state: State
    cause: str

    def as_dict(self) -> dict[str, object]:
        return {"at": self.at, "from": self.from_state.value, "to": self.to_state.value, "cause": self.cause}


@dataclass(slots=True, eq=False)
class BackendHealth:
    """Everything known about one backend's health. Mutated only by the supervisor."""

    backend: Backend
    weight: float  # in force now: configured, or set by an operator
    config_weight: float  # as configured; a reload reweights only when this changes
    rise_fall: RiseFall
    detector: OutlierDetector
    history: deque[Transition]
    since: float = 0.0  # wall clock when observation of this backend began
    admin: AdminState = AdminState.ENABLED
    ejected_until: float = 0.0
    ejections: int = 0
    last_ejection_end: float = 0.0
    cooldown_until: float = 0.0
    recovered_at: float | None = None  # start of the slow-start ramp
    state: State = State.HEALTHY
    cause: str = "started"
    removed: bool = False  # dropped from the config: draining until its in-flight requests end
    last_probe: ProbeResult | None = None

    def compute_state(self, now: float) -> State:
        """The state that applies at ``now`` (the first matching, in ``State`` order)."""
        if self.admin is AdminState.DISABLED:
            return State.DISABLED
        if self.admin is AdminState.DRAINING:
            return State.DRAINING
        if not self.rise_fall.up:
            return State.UNHEALTHY
        if now < self.ejected_until:
            return State.EJECTED
        if now < self.cooldown_until:
            return State.COOLDOWN
        return State.HEALTHY

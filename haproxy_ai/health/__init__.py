"""Backend health: active probes, passive outlier detection, operator states, slow start.

``HealthSupervisor`` is the single writer of backend state; everything else reports to it.
"""

from .probe import Prober, ProbeResult, probe_once
from .state import AdminState, BackendHealth, State, Transition
from .supervisor import HealthSupervisor, UnknownBackend

__all__ = [
    "AdminState",
    "BackendHealth",
    "HealthSupervisor",
    "ProbeResult",
    "Prober",
    "State",
    "Transition",
    "UnknownBackend",
    "probe_once",
]

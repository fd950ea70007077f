"""Backend health: active probes, passive outlier detection, operator states, slow start, and
the scrape of replicas' own load metrics.

``HealthSupervisor`` is the single writer of backend state; everything else reports to it.
"""

from .probe import Prober, ProbeResult, probe_once
from .scrape import MetricsScraper, parse_replica_load
from .state import AdminState, BackendHealth, State, Transition
from .supervisor import HealthSupervisor, UnknownBackend

__all__ = [
    "AdminState",
    "BackendHealth",
    "HealthSupervisor",
    "MetricsScraper",
    "ProbeResult",
    "Prober",
    "State",
    "Transition",
    "UnknownBackend",
    "parse_replica_load",
    "probe_once",
]

"""Backends, their load statistics, and the registry that publishes immutable snapshots."""

from .backend import Backend, BackendStats, ReplicaLoad
from .registry import BackendSnapshot, Registry

__all__ = ["Backend", "BackendSnapshot", "BackendStats", "Registry", "ReplicaLoad"]

"""Destinations for spooled records: a second directory (file) and PostgreSQL."""

from .base import SinkError

__all__ = ["SinkError"]

"""The admin listener: /metrics, /healthz, /readyz and the /admin/* API (Starlette)."""

from .api import build_admin_app

__all__ = ["build_admin_app"]

"""Request-path stages. Each is built with ``next`` first plus keyword options and is called as
``await stage(request, ctx)``; the order they run in is written only in ``pipeline.py``."""

from .admission import Admission
from .attempt import Attempt
from .balance import Balance
from .hedge import Hedge
from .retry import Retry

__all__ = ["Admission", "Attempt", "Balance", "Hedge", "Retry"]

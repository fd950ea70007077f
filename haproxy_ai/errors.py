"""The ProxyError tree and the one mapping from errors to HTTP status and body.

Every upstream client exception is translated into one of these (in ``upstream/``), so the
rest of the proxy never sees aiohttp or httpx types.
"""

from __future__ import annotations

import json
from typing import Literal

__all__ = [
    "BodyTooLarge",
    "ConnectFailed",
    "ConnectTimeout",
    "FirstByteTimeout",
    "IdleTimeout",
    "InvalidRequest",
    "NoBackendAvailable",
    "Overloaded",
    "ProxyError",
    "TotalTimeout",
    "UnknownModel",
    "UpstreamReset",
    "error_body",
    "status_for",
]

Source = Literal["upstream", "downstream", "internal"]


class ProxyError(Exception):
    """Base of every error the proxy produces on purpose.

    ``retryable`` says whether the request may be replayed on another backend: true only when
    the failure happened before the backend could have produced a response.
    """

    status: int = 502
    type: str = "upstream_error"
    code: str = "bad_gateway"
    source: Source = "upstream"
    retryable: bool = False

    def __init__(self, message: str, *, backend: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.backend = backend


class ConnectFailed(ProxyError):
    code = "upstream_connect_failed"
    retryable = True


class ConnectTimeout(ProxyError):
    status = 504
    code = "upstream_connect_timeout"
    type = "timeout"
    retryable = True


class FirstByteTimeout(ProxyError):
    status = 504
    code = "upstream_first_byte_timeout"
    type = "timeout"


class IdleTimeout(ProxyError):
    status = 504
    code = "upstream_idle_timeout"
    type = "timeout"


class TotalTimeout(ProxyError):
    status = 504
    code = "request_timeout"
    type = "timeout"
    source = "internal"


class UpstreamReset(ProxyError):
    code = "upstream_reset"


class NoBackendAvailable(ProxyError):
    status = 503
    code = "no_backend_available"
    type = "service_unavailable"
    source = "internal"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(ProxyError):
    """Shed by admission control: the queue was full or the wait too long."""

    status = 503
    code = "overloaded"
    type = "service_unavailable"
    source = "internal"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BodyTooLarge(ProxyError):
    status = 413
    code = "request_body_too_large"
    type = "invalid_request_error"
    source = "downstream"


class InvalidRequest(ProxyError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"
    source = "downstream"

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class UnknownModel(ProxyError):
    """The request names a model that no pool serves (OpenAI's own answer: 404 model_not_found)."""

    status = 404
    code = "model_not_found"
    type = "invalid_request_error"
    source = "downstream"
    param = "model"

    def __init__(self, model: str, available: list[str]) -> None:
        shown = ", ".join(available[:50]) + (f" and {len(available) - 50} more" if len(available) > 50 else "")
        super().__init__(
            f"The model `{model}` does not exist or is not served here. Available models: {shown or 'none'}"
        )
        self.available = available


def status_for(error: ProxyError) -> int:
    return error.status


def error_body(error: ProxyError, request_id: str) -> bytes:
    """An OpenAI-style error body, so client SDKs surface the message.

    The message never carries request headers, so no credential can leak through it.
    """
    detail: dict[str, object] = {"message": error.message, "type": error.type}
    param = getattr(error, "param", None)
    if param is not None:
        detail["param"] = param
    detail["code"] = error.code
    detail["request_id"] = request_id
    if isinstance(error, UnknownModel):
        detail["available_models"] = error.available
    return json.dumps({"error": detail}, separators=(",", ":")).encode()

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


def status_for(error: ProxyError) -> int:
    return error.status


def error_body(error: ProxyError, request_id: str) -> bytes:
    """An OpenAI-style error body, so client SDKs surface the message.

    The message never carries request headers, so no credential can leak through it.
    """
    return json.dumps(
        {
            "error": {
                "message": error.message,
                "type": error.type,
                "code": error.code,
                "request_id": request_id,
            }
        },
        separators=(",", ":"),
    ).encode()

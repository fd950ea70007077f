"""The data listener's HTTP/1.1 protocol: uvicorn's httptools protocol with the guards it lacks.

httptools (llhttp) is the parser on purpose: it is strict about framing — duplicate or
conflicting ``Content-Length``, ``Content-Length`` with ``Transfer-Encoding``, any transfer coding
but a final ``chunked``, bad chunk sizes, CR/LF/NUL inside header values and whitespace before the
colon are all rejected with 400 and a closed connection (tests/test_hardening.py checks each) —
and it is several times faster than h11. What uvicorn does not do, this subclass does, before the
request reaches the application:

- a deadline for receiving the request line and headers (slowloris), from the connection's
  first byte and from the start of each keep-alive request: 408, connection closed;
- caps on the URL (414), the number of header fields and their total size (431), counted while
  parsing so an oversized request never accumulates in memory;
- exactly one ``Host`` in HTTP/1.1 (RFC 9112 §3.2) and only origin-form or ``*`` targets:
  absolute-form and authority-form mean someone is using us as a forward proxy (400).

Every rejection closes the connection: after a framing doubt, no later byte on it is trusted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["guarded_protocol"]

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


class _Reject(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    # Set per listener by guarded_protocol().
    max_url_bytes = 8192
    max_header_count = 100
    max_header_bytes = 32768
    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rejection: tuple[int, str] | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._url_bytes = self._header_count = self._header_bytes = self._hosts = 0
        self._head_bytes = 0
        self._in_headers = False

    def data_received(self, data: bytes) -> None:
        # httptools buffers a field until it is complete: bound what a request head may take
        # before the parser has seen the end of any one field.
        counting = self._in_headers or self._header_timer is not None
        if counting:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._in_headers
            and self._head_bytes > self.max_url_bytes + self.max_header_bytes + 4096
            and not self.transport.is_closing()
        ):
            self._send_error(431, f"request head larger than {self.max_url_bytes + self.max_header_bytes} bytes")

    # -- deadlines ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._in_headers:
            self._send_error(408, "request headers not received in time")
        elif self.cycle is None:
            self.transport.close()  # connected and never sent a byte

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = self._header_count = self._header_bytes = self._hosts = 0
        self._in_headers = True
        if self._header_timer is None:
            self._arm()  # a keep-alive request: its own deadline, from its first byte

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.max_url_bytes:
            self._reject(414, f"request target longer than {self.max_url_bytes} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp may deliver one field in pieces; count bytes per piece, fields per name start.
        self._header_bytes += len(name) + len(value)
        if name:
            self._header_count += 1
            if name.lower() == b"host":
                self._hosts += 1
        if self._header_count > self.max_header_count:
            self._reject(431, f"more than {self.max_header_count} header fields")
        if self._header_bytes > self.max_header_bytes:
            self._reject(431, f"header fields larger than {self.max_header_bytes} bytes")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._head_bytes = 0
        self._disarm()
        url = self.url
        if not (url.startswith(b"/") or url == b"*"):
            self._reject(400, "absolute-form and authority-form targets are not accepted: this is a reverse proxy")
        if self.parser.get_http_version() == "1.1" and self._hosts != 1:
            self._reject(400, "missing Host header" if not self._hosts else "more than one Host header")
        super().on_headers_complete()

    def _reject(self, status: int, message: str) -> None:
        self._rejection = (status, message)
        raise _Reject(message)  # httptools stops parsing; uvicorn then calls send_400_response

    # -- errors ---------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        status, message = self._rejection or (400, msg)
        self._rejection = None
        self._send_error(status, message)

    def _send_error(self, status: int, message: str) -> None:
        self._disarm()
        body = message.encode("ascii", "replace")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS.get(status, b"Error"), len(body), body)
        )
        self.transport.close()


def guarded_protocol(
    *, max_url_bytes: int, max_header_count: int, max_header_bytes: int, header_timeout: float
) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for uvicorn's ``http=`` with these limits."""
    return type(
        "HaproxyAiHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "max_url_bytes": max_url_bytes,
            "max_header_count": max_header_count,
            "max_header_bytes": max_header_bytes,
            "header_timeout": header_timeout,
        },
    )

"""The record encoder on its own: timestamps, durations, attempts and body redaction."""

from __future__ import annotations

import base64
import time
from types import SimpleNamespace

import orjson
import pytest

from haproxy_ai.context import AttemptRecord
from haproxy_ai.mirror import record
from haproxy_ai.mirror.record import Exchange, encode, format_time
from haproxy_ai.mirror.redact import Redactor
from haproxy_ai.outcome import Outcome
from haproxy_ai.settings.schema import RedactSettings

SECRET = "sk-" + "a1B2c3D4e5F6g7H8i9J0"
REDACTOR = Redactor.from_settings(RedactSettings())


def _expected(epoch: float) -> str:
    seconds, micros = divmod(round(epoch * 1_000_000), 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


@pytest.mark.parametrize(
    "epoch",
    [
        1795898227.868349,
        1795898227.0,
        1795898227.9999996,  # rounds up into the next second
        1795898226.5,  # earlier than the second formatted before it
        0.0,
        1e-7,
        1795898228.000001,
    ],
)
def test_format_time_is_rfc3339_with_microseconds(epoch: float) -> None:
    assert format_time(epoch) == _expected(epoch)


def test_format_time_is_right_on_the_first_call_of_a_process() -> None:
    record._second[:] = [0.0, "1970-01-01T00:00:00."]  # as at import
    assert format_time(0.25) == "1970-01-01T00:00:00.250000Z"
    assert format_time(1.75) == "1970-01-01T00:00:01.750000Z"


def _exchange(wall: float, body: bytes = b"{}", *, cap: int = 1 << 20, request_id: str = "ours") -> Exchange:
    ex = Exchange("rec-1", 100.0, "POST", b"/v1/chat/completions", b"", [(b"host", b"h")], "127.0.0.1", cap)
    ex.received_wall = wall
    ex.request_id = request_id
    ex.respond(200, [(b"Content-Type", b"application/json")], 100.0 + 0.0009994)
    ex.add(body)
    ex.done = 100.0 + 0.0012346
    backend = SimpleNamespace(name="b1")
    ex.attempts = [AttemptRecord(backend, 100.0 + 0.0000754, 100.0 + 0.000957, None, Outcome.SUCCESS, 200)]  # type: ignore[arg-type]
    return ex


def test_timestamps_and_durations_agree_across_a_second_boundary() -> None:
    wall = 1795898227.9995
    rec = orjson.loads(encode(_exchange(wall), REDACTOR, "i", 1 << 20))
    assert rec["received_at"] == _expected(wall)
    assert rec["first_byte_at"] == _expected(wall + 0.000999)  # ttfb rounds to 999 us
    assert rec["done_at"] == _expected(wall + 0.001235)  # in the next second
    assert rec["ttfb_ms"] == 0.999 and rec["latency_ms"] == 1.235
    [attempt] = rec["attempts"]
    assert attempt == {
        "backend": "b1",
        "outcome": "success",
        "status": 200,
        "start_ms": 0.075,
        "headers_ms": 0.957,
        "end_ms": None,
    }


def test_a_body_cut_inside_a_character_is_still_redacted() -> None:
    body = f'{{"note": "{SECRET}", "tail": "é"}}'.encode()
    cut = len(body) - 3  # after the first of the two bytes of "é"
    ex = _exchange(1795898227.5)
    ex.request_body = body
    rec = orjson.loads(encode(ex, REDACTOR, "i", cut))
    assert rec["request"]["body_truncated"] is True
    assert SECRET not in rec["request"]["body"] and "[REDACTED]" in rec["request"]["body"]


def test_a_body_with_a_nul_is_kept_as_redacted_base64() -> None:
    rec = orjson.loads(encode(_exchange(1795898227.5, f"a\x00{SECRET}".encode()), REDACTOR, "i", 1 << 20))
    assert rec["response"]["body_encoding"] == "base64"
    assert base64.b64decode(rec["response"]["body"]) == b"a\x00[REDACTED]"


def test_paths_are_redacted_each_time_they_are_seen() -> None:
    redactor = Redactor.from_settings(RedactSettings())
    raw = f"/v1/{SECRET}/models".encode()
    assert redactor.latin1_text(raw) == "/v1/[REDACTED]/models"
    assert redactor.latin1_text(raw) == "/v1/[REDACTED]/models"  # from the cache
    assert redactor.latin1_text(b"/v1/models") == "/v1/models"


def _stream(*pieces: str) -> Exchange:
    ex = _exchange(1795898227.5)
    events = [orjson.dumps({"choices": [{"delta": {"content": p}}]}) for p in pieces]
    ex.chunks = [b"".join(b"data: " + e + b"\n\n" for e in events) + b"data: [DONE]\n\n"]
    ex.response_headers = [(b"content-type", b"text/event-stream")]
    return ex


def test_a_secret_streamed_in_pieces_is_not_kept_in_the_raw_events() -> None:
    rec = orjson.loads(encode(_stream("your key: ", SECRET[:5], SECRET[5:12], SECRET[12:], " ok"), REDACTOR, "i", 1))
    response = rec["response"]
    assert response["stream"] is True
    assert response["text"] == "your key: [REDACTED] ok"
    assert response["body"] == "[REDACTED]"  # the events would spell the key
    assert SECRET[5:12] not in orjson.dumps(rec).decode()


def test_a_secret_in_one_event_keeps_the_raw_events_redacted() -> None:
    rec = orjson.loads(encode(_stream("your key: ", SECRET, " ok"), REDACTOR, "i", 1))
    response = rec["response"]
    assert response["text"] == "your key: [REDACTED] ok"
    assert response["body"].startswith("data: ") and "[REDACTED]" in response["body"]
    assert SECRET not in response["body"]

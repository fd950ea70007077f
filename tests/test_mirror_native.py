"""The C record encoder (haproxy_ai/mirror/_fastrecord.c) against the Python path.

``record.encode`` takes the C path when it can prove a record needs no redaction beyond the
header caches, and the Python path otherwise. Whenever the C path answers, its bytes must be
exactly the Python path's; whenever a secret is in play, it must step aside. The install builds
it where a C compiler exists (setup.py); without one these tests are skipped and the Python path
is all there is.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haproxy_ai.context import AttemptRecord
from haproxy_ai.mirror import record
from haproxy_ai.mirror.record import Exchange
from haproxy_ai.mirror.redact import Redactor
from haproxy_ai.outcome import Outcome
from haproxy_ai.settings.schema import RedactSettings

pytestmark = pytest.mark.skipif(not record.NATIVE, reason="built without a C compiler: no C record encoder")

SECRET = "sk-" + "Qw3rTy7uIo9pAs1dFg5hJk"
WALL = 1795898227.25
BODY = b'{"id":"chatcmpl-1","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \\"there\\"\\n"}}]}'


def _exchange(cls: type[Exchange] = Exchange, **over: Any) -> Exchange:
    """A finished exchange like the proxy's, received a quarter into a second (all three of its
    timestamps fall in that second)."""
    case: dict[str, Any] = {
        "path": b"/v1/chat/completions",
        "query": b"",
        "request_headers": [(b"host", b"proxy"), (b"content-type", b"application/json")],
        "request_body": b'{"model": "m1", "messages": [{"role": "user", "content": "hello"}]}',
        "status": 200,
        "response_headers": ((b"Content-Type", b"application/json"), (b"Date", b"Sat, 28 Nov 2026 23:03:12 GMT")),
        "chunks": [BODY],
        "attempts": 1,
        "error": None,
        "client": "10.1.2.3",
        "first_byte": 0.0025,
    }
    case.update(over)
    ex = cls("0123456789abcdef0000000000000001", 500.0, "POST", case["path"], case["query"],
                  case["request_headers"], case["client"], 1 << 20)  # fmt: skip
    ex.received_wall = WALL
    ex.request_id = "rid-1"
    ex.request_body = case["request_body"]
    if case["first_byte"] is not None:
        ex.respond(case["status"], case["response_headers"], 500.0 + case["first_byte"])
    for chunk in case["chunks"]:
        ex.add(chunk)
    ex.done = 500.0031
    ex.error = case["error"]
    ex.backend = "10.0.0.5:8000"
    backend = SimpleNamespace(name="10.0.0.5:8000")
    ex.attempts = [
        AttemptRecord(backend, 500.0001 + i / 1000, 500.0021, 500.003, Outcome.SUCCESS, 200)  # type: ignore[arg-type]
        for i in range(case["attempts"])
    ]
    return ex


def _native(redactor: Redactor, cap: int = 1 << 20, instance: str = "node-a") -> Any:
    encoder = record.RecordEncoder(redactor, instance, cap)
    assert encoder._native is not None
    return encoder._native


def _paths(ex: Exchange, redactor: Redactor, cap: int = 1 << 20) -> tuple[bytes | None, bytes]:
    """(the C path's answer, the Python path's bytes) for the same exchange."""
    record.format_time(ex.received_wall)  # both paths see the same cached second
    python = record._ENCODER.encode(record.build(ex, redactor, "node-a", cap))  # fills the header caches
    native = _native(redactor, cap)
    first = native.line(ex)  # header fields from the Redactor's caches, then kept as JSON text
    again = native.line(ex)  # ... which this one reads
    assert first == again
    return first, python


def test_the_common_record_is_encoded_in_c_exactly_as_in_python() -> None:
    redactor = Redactor.from_settings(RedactSettings())
    native, python = _paths(_exchange(), redactor)
    assert native is not None, "the common case must take the C path"
    assert native == python
    # And record.encode itself takes it (the caches are warm now).
    assert record.encode(_exchange(), redactor, "node-a", 1 << 20) is not None


def test_listed_headers_are_replaced_by_the_c_path_too() -> None:
    redactor = Redactor.from_settings(RedactSettings())
    headers = [(b"host", b"proxy"), (b"Authorization", f"Bearer {SECRET}".encode()), (b"X-Api-Key", SECRET.encode())]
    native, python = _paths(_exchange(request_headers=headers), redactor)
    assert native is not None and native == python
    assert SECRET.encode() not in native
    assert orjson.loads(native)["request"]["headers"]["authorization"] == "[REDACTED]"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"chunks": [BODY[:-2] + f' {SECRET}"}}'.encode()]}, "a secret in the response body"),
        ({"request_body": f'{{"prompt": "key {SECRET}"}}'.encode()}, "a secret in the request body"),
        ({"request_body": b'{"prompt": "AKIA in upper case"}'}, "a literal in another case"),
        ({"path": f"/v1/{SECRET}".encode()}, "a secret in the path"),
        ({"query": f"key={SECRET}".encode()}, "a query string"),
        ({"chunks": ['{"text": "s\u212a-and \u0130"}'.encode()]}, "characters whose lowercase is ASCII"),
        ({"chunks": [b'{"text": "caf\xc3"}']}, "invalid UTF-8"),
        ({"path": "/caf\u00e9".encode()}, "a non-ASCII path (latin-1 in the record)"),
        ({"chunks": [b'{"text": "\\u0073k-abc"}']}, "an escaped character in a body"),
        ({"chunks": [b"a\x00b"]}, "a NUL byte"),
        ({"chunks": [b"\xff\xfe"]}, "a binary body"),
        ({"response_headers": [(b"content-type", b"text/event-stream")]}, "a stream"),
        ({"request_headers": [(b"x-a", b"1"), (b"X-A", b"2")]}, "a repeated header"),
        ({"error": "upstream reset"}, "an error message"),
        ({"first_byte": None, "status": 499}, "no response"),
    ],
)
def test_the_c_path_steps_aside(change: dict[str, Any], why: str) -> None:
    redactor = Redactor.from_settings(RedactSettings())
    native, _ = _paths(_exchange(**change), redactor)
    assert native is None, why
    assert SECRET.encode() not in record.encode(_exchange(**change), redactor, "node-a", 1 << 20)


def test_utf8_bodies_take_the_c_path() -> None:
    redactor = Redactor.from_settings(RedactSettings())
    body = '{"text": "caf\u00e9 \u201cquoted\u201d \U0001f600 \u4e2d\u6587"}'.encode()
    native, python = _paths(_exchange(chunks=[body], request_body=body), redactor)
    assert native is not None and native == python


def test_a_header_not_seen_before_with_a_secret_goes_through_python_first() -> None:
    redactor = Redactor.from_settings(RedactSettings())
    ex = _exchange(request_headers=[(b"x-note", f"token {SECRET}".encode())])
    native = _native(redactor)
    assert native.line(ex) is None
    line = record.encode(ex, redactor, "node-a", 1 << 20)  # the Python path: redacts and caches
    assert SECRET.encode() not in line
    again = native.line(_exchange(request_headers=ex.request_headers))
    assert again is not None and SECRET.encode() not in again


def test_a_plain_header_not_seen_before_is_encoded_in_c_at_once() -> None:
    # A per-request value (traceparent, a replica's timing headers) must not send every record
    # to Python: an ASCII field without a literal is redacted in C as Python would (kept).
    redactor = Redactor.from_settings(RedactSettings())
    native = _native(redactor)
    for i in range(3):
        headers = [
            (b"Host", b"proxy"),
            (b"TraceParent", b"00-%032x-%016x-01" % (i, i)),
            (b"X-API-Key", SECRET.encode()),
        ]
        ex = _exchange(request_headers=headers)
        record.format_time(ex.received_wall)
        line = native.line(ex)  # before the Python path has seen any of these fields
        assert line is not None
        assert line == record._ENCODER.encode(record.build(ex, redactor, "node-a", 1 << 20))
        assert SECRET.encode() not in line
        assert orjson.loads(line)["request"]["headers"]["x-api-key"] == "[REDACTED]"
    # Not plain: the Python path.
    for field in [(b"x-note", "caf\u00e9".encode("latin-1")), (b"x-n\xe9", b"1"), (b"x-note", b"Bearer abcdefgh1234")]:
        assert native.line(_exchange(request_headers=[field])) is None, field


def test_no_c_path_when_a_pattern_has_no_literal_or_body_fields_are_set() -> None:
    assert Redactor(patterns=[r"\d{16}"]).native_caches is None  # any text could match
    assert Redactor(body_fields=["user"]).native_caches is None  # needs the parsed body
    assert Redactor().native_caches is not None  # nothing to redact but listed headers


def test_a_record_outside_the_cached_second_goes_through_python() -> None:
    redactor = Redactor.from_settings(RedactSettings())
    ex = _exchange()
    record.format_time(ex.received_wall - 5)  # the cache holds an older second
    record.build(ex, redactor, "node-a", 1 << 20)  # warm the header caches (moves the second)
    record.format_time(ex.received_wall - 5)
    assert _native(redactor).line(ex) is None


text = (
    st.text(st.characters(max_codepoint=127), max_size=60)
    | st.text(max_size=30)
    | st.sampled_from(
        ["K \u212a", "\u0130stanbul", "sk-\u00e9" + "x" * 20, "Bearer \u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9"]
    )
)
field = st.tuples(st.sampled_from([b"host", b"accept", b"x-trace", b"content-type", b"cookie"]), st.binary(max_size=30))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request_headers=st.lists(field, max_size=5),
    response_headers=st.lists(field, max_size=5),
    request_body=st.binary(max_size=80) | text.map(str.encode),
    chunks=st.lists(st.binary(max_size=40) | text.map(str.encode), max_size=3),
    path=st.sampled_from([b"/", b"/v1/models", b"/a%20b", b"/\x7f", b"/sk-x"]),
    status=st.integers(100, 599),
    attempts=st.integers(0, 3),
    first_byte=st.floats(0, 0.0009) | st.just(0.0),
    client=st.none() | st.just("::1"),
)
def test_c_and_python_paths_agree_on_any_record(**case: Any) -> None:
    redactor = Redactor.from_settings(RedactSettings())
    ex = _exchange(**{**case, "response_headers": tuple(case["response_headers"])})
    native, python = _paths(ex, redactor)
    if native is not None:
        assert native == python
        orjson.loads(native)


def test_an_exchange_the_c_path_cannot_read_goes_through_python() -> None:
    redactor = Redactor.from_settings(RedactSettings())
    odd = SimpleNamespace(id="x", received_wall=WALL)  # no other attribute
    assert _native(redactor).line(odd) is None


@pytest.mark.parametrize("literal", [b"sk-", b"BEARER", b"aKiA", b"hf_", b"ghp_", b"AIza"])
def test_a_literal_is_found_at_any_offset(literal: bytes) -> None:
    # The pre-scan reads sixteen bytes at a time and the rest one by one: a literal starting in
    # any lane, across a block's edge or in the tail must send the record to Python.
    redactor = Redactor.from_settings(RedactSettings())
    for offset in range(0, 50):
        body = b'{"t": "' + b"x" * offset + literal + b'yz"}'
        native, python = _paths(_exchange(chunks=[body]), redactor)
        assert native is None, (literal, offset)
        near = body.replace(literal, literal[:-1] + b" " + literal[-1:])  # split: no literal
        native, python = _paths(_exchange(chunks=[near]), redactor)
        assert native == python, (literal, offset)


def test_a_batch_keeps_order_and_hands_the_rest_to_python() -> None:
    redactor = Redactor.from_settings(RedactSettings())
    encoder = record.RecordEncoder(redactor, "node-a", 1 << 20)
    common = [_exchange() for _ in range(3)]
    secret = _exchange(request_body=f'{{"prompt": "{SECRET}"}}'.encode())
    batch = [common[0], secret, common[1], common[2]]
    for i, ex in enumerate(batch):
        ex.id = f"{i:032x}"
    offset = WALL - 500.0
    record.format_time(WALL)
    lines: list[bytes] = []
    change = encoder.batch(batch, lines, offset)
    assert [orjson.loads(line)["id"] for line in lines] == [ex.id for ex in batch]
    assert SECRET.encode() not in b"".join(lines)
    assert change == sum(map(len, lines)) - sum(len(ex.request_body) + ex.kept for ex in batch)
    for ex, line in zip(batch, lines, strict=True):
        ex.received_wall = ex.received + offset
        assert line == record._ENCODER.encode(record.build(ex, redactor, "node-a", 1 << 20))


def test_a_record_the_python_path_cannot_encode_is_dropped_and_reported() -> None:
    failures: list[int] = []
    encoder = record.RecordEncoder(
        Redactor.from_settings(RedactSettings()), "node-a", 1 << 20, lambda: failures.append(1)
    )
    broken = _exchange()
    broken.chunks = [None]  # type: ignore[list-item]  # neither path can write it
    lines: list[bytes] = []
    encoder.batch([_exchange(), broken, _exchange()], lines, WALL - 500.0)
    assert len(lines) == 2 and failures == [1]


def test_header_fields_beyond_the_table_bound_are_still_right() -> None:
    # Unique values (dates, ids) would fill the table: it is cleared like the Redactor's caches.
    redactor = Redactor.from_settings(RedactSettings())
    native = _native(redactor)
    record.format_time(WALL)
    for i in range(4200):
        ex = _exchange(request_headers=[(b"host", b"proxy"), (b"x-trace", b"%d" % i)])
        python = record._ENCODER.encode(record.build(ex, redactor, "node-a", 1 << 20))
        assert native.line(ex) == python


def test_the_c_exchange_behaves_as_the_python_one() -> None:
    assert record.Exchange is not record.PyExchange  # the request path fills the C one
    made = []
    for cls in (record.Exchange, record.PyExchange):
        ex = cls("id-1", 7.5, "POST", b"/v1", b"a=1", [(b"host", b"h")], None, 10)
        before = (ex.request_id, ex.request_body, ex.status, ex.response_headers, ex.first_byte, ex.done, ex.ended,
                  ex.error, ex.backend, ex.attempts, ex.chunks, ex.tail, ex.kept, ex.response_bytes)  # fmt: skip
        ex.respond(206, [(b"a", b"b")], 7.75)
        for chunk in [b"12345678", b"abc", b"x", b"yy", b"zzz", b"w", b"v"]:
            ex.add(chunk)
        made.append((before, ex.status, ex.response_headers, ex.first_byte, ex.chunks, ex.tail, ex.kept,
                     ex.response_bytes, ex.received, ex.body_cap, ex.id, ex.method, ex.raw_path, ex.query))  # fmt: skip
    assert made[0] == made[1]
    assert made[0][5] == [b"yy", b"zzz", b"w", b"v"]  # past the cap: only the last four chunks


@pytest.mark.parametrize("change", [{}, {"attempts": 3}, {"chunks": [BODY[:40], BODY[40:]]}, {"error": "reset"}])
def test_both_exchange_classes_make_the_same_record(change: dict[str, Any]) -> None:
    redactor = Redactor.from_settings(RedactSettings())
    lines = []
    for cls in (record.Exchange, record.PyExchange):
        ex = _exchange(cls, **change)
        record.format_time(ex.received_wall)
        lines.append(record.encode(ex, redactor, "node-a", 1 << 20))
        lines.append(record._ENCODER.encode(record.build(ex, redactor, "node-a", 1 << 20)))
    assert len(set(lines)) == 1


def test_an_exchange_missing_an_attribute_is_dropped_and_reported_not_a_crash() -> None:
    failures: list[int] = []
    encoder = record.RecordEncoder(
        Redactor.from_settings(RedactSettings()), "node-a", 1 << 20, lambda: failures.append(1)
    )
    broken = _exchange()
    del broken.backend
    lines: list[bytes] = []
    encoder.batch([broken, _exchange()], lines, WALL - 500.0)
    assert len(lines) == 1 and failures == [1]
    with pytest.raises(TypeError):
        del broken.chunks
        broken.add(b"more")

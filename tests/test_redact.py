"""Secret redaction: every channel a record, log line or error message can carry a secret through."""

from __future__ import annotations

import copy
import io
import json
import logging
import random
import re
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haproxy_ai.mirror.redact import RedactingFilter, Redactor, _group_literals, install_log_redaction
from haproxy_ai.settings import RedactSettings

R = "[REDACTED]"
_rng = random.Random()
# Shaped like an OpenAI key, so the default patterns catch it wherever it appears.
CANARY = "sk-canary" + "".join(_rng.choices(string.ascii_letters + string.digits, k=24))
# Matches no pattern: only a listed header/parameter, a body field or a URL password hides it.
PLAIN = "plaincanary" + "".join(_rng.choices(string.ascii_lowercase, k=16))
FIELDS = ("user", "metadata.*.token", "messages.*.content", "tools", "choices.0.text")

DEFAULT = Redactor.from_settings(RedactSettings())
FIELDED = Redactor.from_settings(RedactSettings(body_fields=FIELDS))
BARE = Redactor()  # nothing configured


# -- construction ------------------------------------------------------------------------------


def test_from_settings_uses_every_field() -> None:
    r = Redactor.from_settings(
        RedactSettings(
            headers=("X-Secret",), query_params=("Pw",), body_fields=("a.b",), patterns=(r"zz\d+",), replacement="<x>"
        )
    )
    assert r.replacement == "<x>"
    assert r.header("x-secret", "v") == "<x>"
    assert r.query("pw=1&q=zz12") == "pw=<x>&q=<x>"
    assert r.json({"a": {"b": 1, "c": 2}}) == {"a": {"b": "<x>", "c": 2}}


@pytest.mark.parametrize(
    "patterns",
    [("(unclosed",), ("a*",), (r"\b",), ("x?",), ("$",), ("(?P<n>a)", "(?P<n>b)")],
)
def test_bad_patterns_are_rejected(patterns: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="redact pattern"):
        Redactor(patterns=patterns)


def test_global_flags_become_scoped_in_the_alternation() -> None:
    r = Redactor(patterns=(r"(?i)secret\d+", r"tok-\w{4}", r"(?x) zz \d+  # a verbose comment"))
    assert r.text("SECRET12 and tok-abcd and Tok-abcd zz12") == f"{R} and {R} and Tok-abcd {R}"


def test_replacement_is_literal_even_with_backslashes() -> None:
    r = Redactor(patterns=(r"(sk)-\w+",), replacement=r"\1\g<0>")
    assert r.text("x sk-abc") == r"x \1\g<0>"


def test_unencodable_replacement_is_rejected() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        Redactor(replacement="\ud800")


# -- text --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        ("plain words", "plain words"),
        ("key sk-" + "a" * 20 + " end", f"key {R} end"),
        ("sk-proj-Ab_9" + "x" * 20, R),
        ("Authorization: Bearer abc.def-123", f"Authorization: {R}"),
        ("BEARER   abcdefgh", R),
        ("bearer short", "bearer short"),  # fewer than 8 token characters
        ("id AKIAABCDEFGHIJKLMNOP.", f"id {R}."),
        ("hf_" + "a" * 30, R),
        ("ghp_" + "b" * 36, R),
        ("AIza" + "c" * 35, R),
        ("task-force skeleton sk- sk-short", "task-force skeleton sk- sk-short"),
        ("mask-" + "a" * 20, "mask-" + "a" * 20),  # no word boundary before "sk-"
        ("two sk-" + "1" * 16 + ",sk-" + "2" * 16, f"two {R},{R}"),
    ],
)
def test_text(value: str, expected: str) -> None:
    assert DEFAULT.text(value) == expected


def test_text_without_patterns_is_identity() -> None:
    value = "sk-" + "a" * 30
    assert BARE.text(value) is value


# -- headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("Authorization", "Basic dXNlcjpwYXNz", R),
        ("COOKIE", "a=b", R),
        ("set-cookie", "", R),
        ("X-Api-Key", "anything", R),
        ("api-key", "x", R),
        ("proxy-authorization", "x", R),
        ("content-type", "application/json", "application/json"),
        ("x-forwarded-auth", "Bearer abcdefghijkl", R),  # unlisted, but the value has a pattern
        ("x-note", "see sk-" + "z" * 20 + " now", f"see {R} now"),
    ],
)
def test_header(name: str, value: str, expected: str) -> None:
    assert DEFAULT.header(name, value) == expected


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], {}),
        ([("Content-Type", "text/plain")], {"content-type": "text/plain"}),
        ([(b"Authorization", b"Bearer x"), (b"Accept", b"*/*")], {"authorization": R, "accept": "*/*"}),
        ([(b"X-A", b"1"), (b"x-a", b"2"), (b"X-a", b"3")], {"x-a": "1, 2, 3"}),
        ([("Cookie", "a=1"), ("cookie", "b=2")], {"cookie": f"{R}, {R}"}),
        ([(b"x-note", b"caf\xe9")], {"x-note": "caf\u00e9"}),  # latin-1
        ([("x-a", "ok"), ("x-a", "token Bearer abcdefghij")], {"x-a": f"ok, token {R}"}),
    ],
)
def test_headers(pairs: list[Any], expected: dict[str, str]) -> None:
    assert DEFAULT.headers(pairs) == expected


def test_headers_keep_first_arrival_order() -> None:
    out = DEFAULT.headers([("B", "1"), ("A", "2"), ("b", "3")])
    assert list(out) == ["b", "a"]


# -- query, target, url ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ""),
        ("q=sk", "q=sk"),
        ("a=1&key=s3cr3t&b=2", f"a=1&key={R}&b=2"),
        ("KEY=x", f"KEY={R}"),
        ("api%5Fkey=x&API%5fKEY=y", f"api%5Fkey={R}&API%5fKEY={R}"),
        ("api_key=x;token=y&&sig=", f"api_key={R};token={R}&&sig={R}"),
        ("key", "key"),  # no value
        ("key=a=b&c=d", f"key={R}&c=d"),
        ("api+key=x&api-key=y", f"api+key=x&api-key={R}"),  # "+" decodes to a space: not listed
        ("%zz=1&%=2&key%=3&%E9=4&%ff%fe=5", "%zz=1&%=2&key%=3&%E9=4&%ff%fe=5"),  # malformed: kept
        ("k%65y=1", f"k%65y={R}"),
        ("a=%20%2B+&b=x", "a=%20%2B+&b=x"),
        ("x=sk-" + "a" * 20, f"x={R}"),  # patterns over the rest
        ("x=Bearer%20abcdefghijk&y=Bearer+abcdefghijk", f"x={R}&y={R}"),  # encoded pattern match
        ("signature=abc&signed=1", f"signature={R}&signed=1"),
    ],
)
def test_query(query: str, expected: str) -> None:
    assert DEFAULT.query(query) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/v1/models", "/v1/models"),
        ("/v1/chat/completions?stream=true", "/v1/chat/completions?stream=true"),
        ("/v1/x?key=abc&a=1", f"/v1/x?key={R}&a=1"),
        ("/v1/x?", "/v1/x?"),
        ("/keys/sk-" + "a" * 20 + "?token=1", f"/keys/{R}?token={R}"),
        ("/a?b=1?key=2", "/a?b=1?key=2"),  # the parameter is named "b": its value "1?key=2" is kept
    ],
)
def test_target(target: str, expected: str) -> None:
    assert DEFAULT.target(target) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://host:8000/v1", "http://host:8000/v1"),
        ("http://u:p@h", f"http://u:{R}@h"),
        ("https://user:pa:ss@host/x?key=1&y=2#f", f"https://user:{R}@host/x?key={R}&y=2#f"),
        ("postgresql://app:s3cret@db.internal:5432/mirror", f"postgresql://app:{R}@db.internal:5432/mirror"),
        ("https://u:p@ss@host/", f"https://u:{R}@host/"),  # the last "@" ends the userinfo
        ("https://user@host/", "https://user@host/"),  # no password
        ("https://host/path@x:y", "https://host/path@x:y"),  # "@" in the path is not userinfo
        ("//u:p@host/x", f"//u:{R}@host/x"),
        ("https://cb.example/#access_token=abc&state=1", f"https://cb.example/#access_token={R}&state=1"),
        ("/relative?api_key=1", f"/relative?api_key={R}"),
        ("http://[::1", "http://[::1"),  # malformed: urllib would raise
        ("https://h/?x=sk-" + "a" * 20, f"https://h/?x={R}"),
    ],
)
def test_url(url: str, expected: str) -> None:
    assert DEFAULT.url(url) == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("nothing to see", "nothing to see"),
        ("what? really?", "what? really?"),
        ("connect postgresql://app:pw@db/x failed", f"connect postgresql://app:{R}@db/x failed"),
        ('"GET /v1/x?key=abc&n=1 HTTP/1.1" 200', f'"GET /v1/x?key={R}&n=1 HTTP/1.1" 200'),
        ("upstream https://h/v1?api-key=zz: 500", f"upstream https://h/v1?api-key={R} 500"),
        ("got token sk-" + "q" * 20, f"got token {R}"),
        ("email a@b.c asked?", "email a@b.c asked?"),
        ("body {'p': 'line\\nsk-" + "e" * 20 + "'}", f"body {{'p': 'line\\n{R}'}}"),  # a repr's escape
        ("path C:\\new\\task-force", "path C:\\new\\task-force"),
    ],
)
def test_message(message: str, expected: str) -> None:
    assert DEFAULT.message(message) == expected


# -- JSON --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "value", "expected"),
    [
        ((), {"a": 1, "b": [True, None, 1.5, "x"]}, {"a": 1, "b": [True, None, 1.5, "x"]}),
        (("user",), {"user": "alice", "users": "bob"}, {"user": R, "users": "bob"}),
        (("user",), {"x": {"user": "alice"}}, {"x": {"user": "alice"}}),  # paths start at the root
        (("a.b",), {"a": {"b": {"deep": [1]}, "c": 1}}, {"a": {"b": R, "c": 1}}),  # whole value, any type
        (("a.*",), {"a": {"x": 1, "y": [2]}, "b": 3}, {"a": {"x": R, "y": R}, "b": 3}),
        (("a.*",), {"a": [1, 2]}, {"a": [R, R]}),
        (("metadata.*.token",), {"metadata": {"x": {"token": "t", "k": 1}}}, {"metadata": {"x": {"token": R, "k": 1}}}),
        (
            ("messages.*.content",),
            {"messages": [{"role": "u", "content": "hi"}]},
            {"messages": [{"role": "u", "content": R}]},
        ),
        (
            ("messages.1.content",),
            {"messages": [{"content": "a"}, {"content": "b"}]},
            {"messages": [{"content": "a"}, {"content": R}]},
        ),
        (("*.token",), [{"token": 1}, {"other": 2}], [{"token": R}, {"other": 2}]),
        (("a.*.c", "a.b.d"), {"a": {"b": {"c": 1, "d": 2, "e": 3}}}, {"a": {"b": {"c": R, "d": R, "e": 3}}}),
        (("a.b",), {"a": "scalar"}, {"a": "scalar"}),
        (("a",), "top", "top"),
        ((), {"sk-" + "k" * 20: "Bearer abcdefghij"}, {R: R}),
    ],
)
def test_json(fields: tuple[str, ...], value: Any, expected: Any) -> None:
    r = Redactor(body_fields=fields, patterns=RedactSettings().patterns)
    before = copy.deepcopy(value)
    assert r.json(value) == expected
    assert value == before  # never mutated


def test_json_returns_new_containers() -> None:
    value = {"a": [{"b": 1}]}
    out = BARE.json(value)
    assert out == value
    assert out is not value and out["a"] is not value["a"] and out["a"][0] is not value["a"][0]


def test_json_accepts_tuples() -> None:
    assert DEFAULT.json(("x", ("sk-" + "a" * 20,))) == ["x", [R]]


# -- bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", b""),
        (b"hello", b"hello"),
        (b'{"a": 1, "b": "x"}', b'{"a": 1, "b": "x"}'),  # nothing redacted: byte for byte
        (b' \n [1, "sk-' + b"a" * 20 + b'"]', b'[1,"[REDACTED]"]'),
        (b'{"user": "alice", "model": "m"}', b'{"user":"[REDACTED]","model":"m"}'),
        ('{"t": "caf\u00e9 \u2028"}'.encode(), '{"t": "caf\u00e9 \u2028"}'.encode()),
        (b'{"t": "\\u00e9"}', b'{"t": "\\u00e9"}'),
        (b'{"x": "\\ud800", "user": "a"}', b'{"x":"\\ud800","user":"[REDACTED]"}'),  # re-serialised: valid UTF-8
        (b"not json {", b"not json {"),
        (b"token=sk-" + b"a" * 20, b"token=[REDACTED]"),
        (b"repr: 'x\\nsk-" + b"a" * 20 + b"'", b"repr: 'x\\n[REDACTED]'"),  # an escape glued to the key
        (b"\xff\xfe\x00binary sk-" + b"a" * 20, b"\xff\xfe\x00binary sk-" + b"a" * 20),  # binary: unchanged
        # truncated / malformed JSON: path-aware scan plus "key": value replacement
        (
            b'{"user": "alice", "model": "m", "messages": [{"role": "user", "content": "my se',
            b'{"user": "[REDACTED]", "model": "m", "messages": [{"role": "user", "content": "[REDACTED]"',
        ),
        (b'{"tools": [{"name": "x"}, {"name": "y"', b'{"tools": "[REDACTED]"'),
        (
            b'{"tools": [{"name": "x"}], "user": 12, "n": 1, "metadata": {"a": {"token": tru',
            b'{"tools": "[REDACTED]", "user": "[REDACTED]", "n": 1, "metadata": {"a": {"token": "[REDACTED]"',
        ),
        # by their last key, "text" values are replaced at any path: over-redaction, never a leak
        (
            b'{"choices": [{"text": "a"}, {"text": "b"}], "x": ',
            b'{"choices": [{"text": "[REDACTED]"}, {"text": "[REDACTED]"}], "x": ',
        ),
        # escapes: decoded before the patterns run (a raw pass misses both)
        (
            b'{"a": "\\u0073k-' + b"c" * 20 + b'", "b": "x\\nsk-' + b"d" * 20,
            b'{"a": "[REDACTED]", "b": "x\\n[REDACTED]',
        ),
        (b'{"model": "m", "b": "\\u2028', b'{"model": "m", "b": "\\u2028'),
        (b'{"user\\u0000": 1, "user": "a\\"b\\\\', b'{"user\\u0000": 1, "user": "[REDACTED]"'),
        (b'{"user": "a"}\n{"user": "b"}\n', b'{"user": "[REDACTED]"}\n{"user": "[REDACTED]"}\n'),  # NDJSON
        (b'{"a": sk-' + b"b" * 20, b'{"a": [REDACTED]'),
    ],
)
def test_body(raw: bytes, expected: bytes) -> None:
    assert FIELDED.body(raw) == expected


def test_body_none_and_unconfigured() -> None:
    assert DEFAULT.body(None) is None
    raw = b'{"a": "sk-' + b"a" * 20 + b'"}'
    assert BARE.body(raw) is raw


def test_body_nested_too_deep_falls_back_to_the_text_scan() -> None:
    raw = b'{"user": "alice", "x": ' + b"[" * 5000 + b'"sk-' + b"a" * 20 + b'"' + b"]" * 5000 + b"}"
    out = FIELDED.body(raw)
    assert b"alice" not in out and b"sk-aaaa" not in out
    assert out.startswith(b'{"user": "[REDACTED]", "x": ' + b"[" * 5000 + b'"[REDACTED]"]')  # structure kept


def test_body_huge_integer_falls_back_to_the_text_scan() -> None:
    raw = b'{"user": "alice", "n": ' + b"9" * 5000 + b"}"
    out = FIELDED.body(raw)
    assert out == b'{"user": "[REDACTED]", "n": ' + b"9" * 5000 + b"}"


SSE_IN = (
    b": keep-alive\r\n"
    b"event: message\r\n"
    b'data: {"id": "1", "choices": [{"delta": {"content": "sk-' + b"x" * 20 + b'"}}], "user": "alice"}\r\n'
    b"\r\n"
    b'data:{"choices":[{"text":"plain"}]}\n'
    b"\n"
    b'data: {"choices": [{"text": "cut sho\n'
    b'data: "user": "bob"}\n'
    b"data: [DONE]\n"
    b"\n"
    b"id: sk-" + b"y" * 20 + b"\r"
)
SSE_OUT = (
    b": keep-alive\r\n"
    b"event: message\r\n"
    b'data: {"id":"1","choices":[{"delta":{"content":"[REDACTED]"}}],"user":"[REDACTED]"}\r\n'
    b"\r\n"
    b'data:{"choices":[{"text":"[REDACTED]"}]}\n'
    b"\n"
    b'data: {"choices": [{"text": "[REDACTED]"\n'
    b'data: "user": "[REDACTED]"}\n'
    b"data: [DONE]\n"
    b"\n"
    b"id: [REDACTED]\r"
)


def test_body_sse_keeps_the_line_structure() -> None:
    assert FIELDED.body(SSE_IN) == SSE_OUT


@pytest.mark.parametrize(
    "prefix", [b"data: x\n", b"event: e\n", b": c\n", b"\n\n  data: x\n", b"id: 1\n", b"retry: 5\n"]
)
def test_body_sse_detection(prefix: bytes) -> None:
    raw = prefix + b'data: {"a": 1, "user": "alice"}\n'
    assert FIELDED.body(raw) == prefix + b'data: {"a":1,"user":"[REDACTED]"}\n'


# -- no over-redaction -------------------------------------------------------------------------


def test_non_secret_content_is_kept() -> None:
    prose = "The task-force met; skeleton keys, a sketch, the key question, token ring, Bearer of news."
    assert DEFAULT.text(prose) == prose
    assert DEFAULT.message(prose + " Why? Because.") == prose + " Why? Because."
    assert DEFAULT.query("q=sk&task=force&keys=1&tokens=2") == "q=sk&task=force&keys=1&tokens=2"
    assert DEFAULT.headers([("User-Agent", "skeleton/1.0"), ("Accept", "*/*")]) == {
        "user-agent": "skeleton/1.0",
        "accept": "*/*",
    }
    body = b'{"model":"llama","messages":[{"role":"user","content":"skeleton task-force"}],"user":"alice"}'
    assert DEFAULT.body(body) == body  # no body_fields configured: "alice" is not a secret shape
    assert FIELDED.body(body) == body.replace(b'"skeleton task-force"', b'"[REDACTED]"').replace(
        b'"alice"', b'"[REDACTED]"'
    )


# -- logging -----------------------------------------------------------------------------------


def _record(msg: Any, *args: Any, exc: BaseException | None = None, stack: str | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("lib", logging.ERROR, __file__, 1, msg, args or None, exc_info, sinfo=stack)


def test_filter_redacts_message_args_exception_and_stack() -> None:
    try:
        raise RuntimeError(f"auth failed for {CANARY}")
    except RuntimeError as exc:
        record = _record("calling %s with %s", "https://u:pw@h/?key=k", "Bearer abcdefghijk", exc=exc, stack=CANARY)
    assert RedactingFilter(DEFAULT).filter(record) is True
    assert record.msg == f"calling https://u:{R}@h/?key={R} with {R}"
    assert record.args is None
    assert record.exc_info is None
    assert record.exc_text is not None and "RuntimeError: auth failed for [REDACTED]" in record.exc_text
    assert record.stack_info == R
    assert CANARY not in logging.Formatter().format(record)


def test_filter_leaves_clean_records_alone() -> None:
    record = _record("%s %d", "GET", 200)
    assert RedactingFilter(DEFAULT).filter(record) is True
    assert record.msg == "%s %d" and record.args == ("GET", 200)


def test_filter_survives_bad_format_arguments() -> None:
    record = _record("%d items", CANARY)
    assert RedactingFilter(DEFAULT).filter(record) is True
    assert CANARY not in str(record.msg) and record.args is None


def test_filter_redacts_a_cached_exception_text() -> None:
    record = _record("x")
    record.exc_text = f"Traceback: {CANARY}"
    RedactingFilter(DEFAULT).filter(record)
    assert record.exc_text == f"Traceback: {R}"


@pytest.fixture
def clean_logging() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    yield root
    root.handlers = saved_handlers
    everything: list[logging.Filterer] = [root, *root.handlers]
    everything.extend(x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger))
    for each in list(everything):
        if isinstance(each, logging.Logger):
            everything.extend(each.handlers)
    if logging.lastResort is not None:
        everything.append(logging.lastResort)
    for each in everything:
        each.filters = [f for f in each.filters if not isinstance(f, RedactingFilter)]


def test_install_log_redaction_covers_every_handler_once(clean_logging: logging.Logger) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    clean_logging.addHandler(handler)
    isolated = logging.getLogger("test_redact.isolated")
    isolated_stream = io.StringIO()
    isolated_handler = logging.StreamHandler(isolated_stream)
    isolated.addHandler(isolated_handler)
    isolated.propagate = False
    try:
        install_log_redaction(DEFAULT)
        install_log_redaction(FIELDED)  # replaces, never stacks
        for filterer in (handler, isolated_handler, logging.getLogger("haproxy_ai")):
            found = [f for f in filterer.filters if isinstance(f, RedactingFilter)]
            assert len(found) == 1 and found[0].redactor is FIELDED
        logging.getLogger("some.library").error("token %s", CANARY)
        isolated.error("token %s", CANARY)
        assert stream.getvalue() == f"some.library token {R}\n"
        assert isolated_stream.getvalue() == f"token {R}\n"
    finally:
        isolated.removeHandler(isolated_handler)
        isolated.propagate = True


def test_install_log_redaction_on_a_given_logger(clean_logging: logging.Logger) -> None:
    mine = logging.getLogger("test_redact.mine")
    install_log_redaction(DEFAULT, mine)
    assert any(isinstance(f, RedactingFilter) for f in mine.filters)
    assert not any(isinstance(f, RedactingFilter) for f in logging.getLogger("haproxy_ai").filters)


# -- the canary: it must appear in no output ---------------------------------------------------


def test_canary_never_survives(clean_logging: logging.Logger) -> None:
    """CANARY (a key shape) must vanish from every channel; PLAIN (no shape) from every configured one."""
    r = FIELDED
    outputs: list[str] = []
    listed = list(RedactSettings().headers)
    params = list(RedactSettings().query_params)
    for secret in (CANARY, PLAIN):
        # listed headers, parameters (also by an encoded name), body fields, URL passwords
        pairs = [(n, secret) for n in [*listed, *(n.upper() for n in listed)]]
        outputs.extend(r.headers(pairs).values())
        outputs.extend(r.headers([(n.encode(), v.encode()) for n, v in pairs]).values())
        outputs.extend(r.header(n, v) for n, v in pairs)
        query = "&".join([*(f"{p}={secret}" for p in params), f"api%5Fkey={secret}", f"KEY={secret}", "q=1"])
        query += f";Api%5FKey={secret}"
        outputs += [r.query(query), r.target(f"/v1/x?{query}"), r.url(f"https://h/p?{query}#access_token={secret}")]
        outputs.append(r.url(f"postgresql://app:{secret}@db:5432/x?sslmode=require"))
        outputs.append(r.message(f"cannot reach https://u:{secret}@h/v1?key={secret} (GET /x?token={secret})"))
        body = {
            "user": secret,
            "model": "m",
            "metadata": {"a": {"token": secret}, "b": {"token": {"nested": [secret]}}},
            "messages": [{"role": "user", "content": secret}, {"role": "assistant", "content": [secret]}],
            "choices": [{"text": secret}],
            "tools": [{"function": {"description": secret}}],
        }
        raw = json.dumps(body).encode()
        outputs.append(r.body(raw).decode())
        outputs.append(json.dumps(r.json(body)))
        for cut in range(1, len(raw)):  # truncated at every length
            outputs.append(r.body(raw[:cut]).decode())
        event = json.dumps({"choices": [{"text": secret}], "user": secret}).encode()
        sse = b"data: " + event + b"\r\n\r\ndata:" + event + b"\n\n"
        outputs.append(r.body(sse).decode())
        for cut in range(1, len(sse)):
            outputs.append(r.body(sse[:cut]).decode())

    # unlisted places: the pattern alone must catch CANARY
    pairs = [(n, CANARY) for n in ("x-custom", "user-agent", "X-Request-Id")]
    pairs += [(n, f"Bearer {CANARY}") for n in ("x-forwarded-authorization", "forwarded")]
    outputs.extend(r.headers(pairs).values())
    outputs += [r.query(f"foo={CANARY}&bar=Bearer%20{CANARY}&baz=x+{CANARY}"), r.target(f"/v1/{CANARY}?a=1")]
    body = {
        "model": "m",
        CANARY: "as a key",
        "metadata": {"a": {"note": f"see {CANARY}"}},
        "deep": [[[{"x": [f"\u2028{CANARY}", {f"k {CANARY}": 1}]}]]],
        "messages": [{"role": "user", "name": CANARY}],
    }
    raw = json.dumps(body).encode()
    outputs.append(r.body(raw).decode())
    outputs.append(DEFAULT.body(raw).decode())
    escaped = json.dumps(body, ensure_ascii=True).replace("sk-", "\\u0073k-").encode()
    outputs.append(r.body(escaped).decode())
    for cut in range(1, len(raw)):
        outputs.append(r.body(raw[:cut]).decode())
        outputs.append(r.body(escaped[:cut]).decode())
    event = json.dumps({"choices": [{"delta": {"content": CANARY}}]})
    sse = f": {CANARY}\nevent: e {CANARY}\r\ndata: {event}\r\n\r\ndata: {CANARY}\n\ndata: [DONE]\n\n".encode()
    outputs.append(r.body(sse).decode())
    outputs.append(r.message(f"failed: {CANARY}"))

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    clean_logging.addHandler(handler)
    install_log_redaction(r)
    log = logging.getLogger("test_redact.canary")
    try:
        raise ValueError(f"upstream said {CANARY} for https://u:{PLAIN}@h/")
    except ValueError:
        log.exception("request to %s with %r failed", f"https://h/?api_key={PLAIN}", {"auth": f"Bearer {CANARY}"})
    log.warning("cookie %s", CANARY, stack_info=True)
    log.warning("%r", {"prompt": f"line\n{CANARY}"})
    outputs.append(stream.getvalue())
    assert "ValueError: upstream said [REDACTED]" in stream.getvalue()
    assert "{'prompt': 'line\\n[REDACTED]'}" in stream.getvalue()

    for out in outputs:
        assert CANARY not in out
        assert PLAIN not in out


# -- properties --------------------------------------------------------------------------------

# No example database: the suite must not leave files behind.
_FAST = settings(max_examples=200, deadline=None, database=None)

_PARAM_NAMES = [*RedactSettings().query_params, "q", "stream", "API%5FKEY", "Key", "k%65y", "model"]
_query_part = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="&;"), max_size=12),
    st.builds(lambda n, v: f"{n}={v}", st.sampled_from(_PARAM_NAMES), st.text(max_size=8)),
)
_queries = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda parts, seps: "".join(p + s for p, s in zip(parts, seps, strict=False)),
        st.lists(_query_part, max_size=6),
        st.lists(st.sampled_from("&;"), min_size=6, max_size=6),
    ),
)
_UNPATTERNED = Redactor(query_params=RedactSettings().query_params)


@_FAST
@given(_queries)
def test_query_keeps_unlisted_params(query: str) -> None:
    DEFAULT.query(query)  # never raises, patterns or not
    DEFAULT.message(f"GET /x?{query} and https://u:p@h/?{query}")
    out = _UNPATTERNED.query(query)
    listed = set(RedactSettings().query_params)
    ins, outs = re.split(r"[&;]", query), re.split(r"[&;]", out)
    assert len(ins) == len(outs)
    for before, after in zip(ins, outs, strict=True):
        name, eq, _ = before.partition("=")
        if eq and unquote(name.replace("+", " ")).lower() in listed:
            assert after == f"{name}={R}"
        else:
            assert after == before


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10))
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=6,
)
# Any non-word character before the canary keeps its leading word boundary; "\n" and U+2028 come out of
# json.dumps as escapes, which must not hide it.
_canary_text = st.builds(
    lambda a, sep, b: f"{a}{sep}{CANARY}{sep}{b}",
    st.text(max_size=4),
    st.sampled_from(' \n\t\u2028/"\\'),
    st.text(max_size=4),
) | st.just(CANARY)


def _plant(value: Any, route: list[int], canary: str, as_key: bool) -> Any:
    """``value`` with ``canary`` planted at the container that ``route`` leads to (as a key or a value)."""
    if isinstance(value, list) and value and route:
        i = route[0] % len(value)
        return [*value[:i], _plant(value[i], route[1:], canary, as_key), *value[i + 1 :]]
    if isinstance(value, dict) and value and route:
        key = sorted(value)[route[0] % len(value)]
        return {**value, key: _plant(value[key], route[1:], canary, as_key)}
    if isinstance(value, list):
        return [*value, [canary] if as_key else canary]
    if isinstance(value, dict):
        return {**value, canary: 1} if as_key else {**value, "k": canary}
    return canary


_with_canary = st.builds(_plant, _json_values, st.lists(st.integers(0, 7), max_size=4), _canary_text, st.booleans())


@_FAST
@given(_with_canary)
def test_json_never_keeps_the_canary(value: Any) -> None:
    before = copy.deepcopy(value)
    out = DEFAULT.json(value)
    assert CANARY not in json.dumps(out, ensure_ascii=False)
    assert value == before
    raw = json.dumps(value).encode()
    assert CANARY not in FIELDED.body(raw).decode()
    assert isinstance(FIELDED.body(raw[: len(raw) // 2]), bytes)  # a cut body never raises either


@_FAST
@given(st.lists(st.tuples(st.text(max_size=6), st.text(max_size=4)), max_size=6), st.booleans())
def test_headers_keys_are_lowercased_names(pairs: list[tuple[str, str]], as_bytes: bool) -> None:
    if as_bytes:
        encoded = [(n.encode("utf-8"), v.encode("utf-8")) for n, v in pairs]
        out = DEFAULT.headers(encoded)
        names = [n.decode("latin-1").lower() for n, _ in encoded]
    else:
        out = DEFAULT.headers(pairs)
        names = [n.lower() for n, _ in pairs]
    assert list(out) == list(dict.fromkeys(names))


def test_literals_differing_in_one_character_are_checked_as_one_regex() -> None:
    literals = ("sk-", "gho_", "ghp_", "ghr_", "ghs_", "ghu_", "ab1x", "ab2x", "ab3x", "hf_")
    plain, groups = _group_literals(literals)
    assert plain == ("sk-", "hf_")
    assert sorted(g.pattern for g in groups) == ["ab[123]x", "gh[oprsu]_"]
    rng = random.Random(7)
    alphabet = "ghoprsuabx123_-skf "
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        expected = any(literal in text for literal in literals)
        assert (any(p in text for p in plain) or any(g.search(text) for g in groups)) == expected, text
    assert _group_literals(None) == (None, ())
    assert _group_literals(("gh1_", "gh2_")) == (("gh1_", "gh2_"), ())  # two: not worth a regex


@pytest.mark.parametrize(
    "text",
    [
        "key s\u212a-abcdef0123456789",  # KELVIN SIGN: (?i) matches it as k
        "key \u017fk-abcdef0123456789",  # LONG S: as s
        "id A\u0130ZA-abcdef0123456789",  # I WITH DOT ABOVE: as i (its lowercase is i + a combining dot)
        "id a\u0131za-abcdef0123456789",  # DOTLESS I: as i
    ],
)
def test_the_pre_scan_lets_no_case_insensitive_match_through(text: str) -> None:
    patterns = [r"(?i)sk-[a-z0-9]{16,}", r"(?i)aiza-[a-z0-9]{16,}"]
    r = Redactor(patterns=patterns)
    assert any(re.search(p, text) for p in patterns)  # the regex engine does match it
    assert "abcdef0123456789" not in r.text(text)
    assert "abcdef0123456789" not in r.body_text(text)

"""What routing reads from a request: the OpenAI-style body's ``model`` and the affinity key.

The body is parsed at most once per request and kept on the context, so the router, every
retry and every hedge share one parse. Only JSON objects are parsed; anything else (a binary
upload, a form) has no model and no prompt, and is routed on path, method and headers alone.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ..context import RequestContext
from ..types import ProxyRequest

__all__ = [
    "MAX_PARSE",
    "affinity_key",
    "body_of",
    "model_of",
    "prompt_prefix",
    "release",
    "request_model",
    "system_prompt",
]

_MAX_MODEL = 256  # longer "model" values are not model names; they are treated as absent
# Bodies up to this size are parsed whole. A larger one could be built to cost the event loop
# hundreds of milliseconds and hundreds of MB (millions of tiny objects in 10 MiB): its model is
# found by a bounded scan instead, and it has no prompt key (the fallback balancer picks).
MAX_PARSE = 1024 * 1024
# A top-level-looking "model": "..." pair. A quote inside a JSON string is escaped (\"), so the
# look-behind keeps text in messages from matching; the first match is taken.
_MODEL_PAIR = re.compile(rb'(?<!\\)"model"\s*:\s*"((?:[^"\\]|\\.){1,256})"')


def body_of(request: ProxyRequest, ctx: RequestContext) -> dict[str, Any] | None:
    """The request body as a JSON object, or None (not JSON, not an object, or larger than
    MAX_PARSE); parsed once per request and cached on ``ctx`` until ``release``."""
    if ctx.body_parsed:
        return ctx.body_doc
    ctx.body_parsed = True
    body = request.body
    if body and len(body) <= MAX_PARSE and body.lstrip()[:1] == b"{":
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None  # the replica answers malformed JSON itself, with its own error
        if isinstance(doc, dict):
            ctx.body_doc = doc
    return ctx.body_doc


def release(ctx: RequestContext) -> None:
    """Drop the parsed body once routing and the affinity key are done with it: a request that
    streams for minutes must not hold a second copy of its prompt as Python objects."""
    ctx.body_doc = None


def model_of(doc: dict[str, Any] | None) -> str | None:
    model = doc.get("model") if doc is not None else None
    if isinstance(model, str) and 0 < len(model) <= _MAX_MODEL:
        return model
    return None


def request_model(request: ProxyRequest, ctx: RequestContext) -> str | None:
    """The body's ``model``: from the parsed body, or for a body over MAX_PARSE by a scan."""
    body = request.body
    if not body:
        return None
    if len(body) <= MAX_PARSE:
        return model_of(body_of(request, ctx))
    match = _MODEL_PAIR.search(body)
    if match is None:
        return None
    try:
        value = orjson.loads(b'"' + match.group(1) + b'"')
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, str) and value else None


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_prefix(doc: dict[str, Any], chars: int) -> str:
    """The first ``chars`` characters of the conversation's opening: the messages up to and
    including the first user message (chat), or the prompt / input (completions, embeddings).

    Stopping at the first user message keeps the key of a conversation the same on every turn:
    later turns append messages, and the cached prefix they share is exactly this opening.
    """
    messages = doc.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        size = 0
        for message in messages:
            if not isinstance(message, dict):
                continue
            role = message.get("role")
            text = f"{role}:{_text(message.get('content'))}\n"
            parts.append(text)
            size += len(text)
            if role == "user" or size >= chars:
                break
        return "".join(parts)[:chars]
    for field in ("prompt", "input"):
        value = doc.get(field)
        if isinstance(value, str):
            return value[:chars]
        if isinstance(value, list) and value and isinstance(value[0], str):
            return value[0][:chars]  # a batch: its first prompt
    return ""


def system_prompt(doc: dict[str, Any], chars: int) -> str:
    """The system (or developer) messages' text, first ``chars`` characters; '' when none."""
    messages = doc.get("messages")
    if not isinstance(messages, list):
        return ""
    texts = [
        _text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")
    ]
    return "".join(texts)[:chars]


def affinity_key(request: ProxyRequest, ctx: RequestContext, kind: str, chars: int) -> bytes | None:
    """The request's hash key for ``kind`` (``header:NAME``, ``prompt`` or ``system_prompt``),
    computed once per request; None when the request has none (the fallback balancer picks)."""
    if ctx.affinity_done:
        return ctx.affinity
    ctx.affinity_done = True
    key: bytes | None = None
    if kind.startswith("header:"):
        name = kind[7:]
        for header, value in request.headers:
            if len(header) == len(name) and header.lower() == name:
                key = value.strip().encode("utf-8", "surrogateescape") or None
                break
    else:
        doc = body_of(request, ctx)
        if doc is not None:
            text = prompt_prefix(doc, chars) if kind == "prompt" else system_prompt(doc, chars)
            key = text.encode("utf-8", "surrogatepass") if text else None
        release(ctx)
    ctx.affinity = key
    return key

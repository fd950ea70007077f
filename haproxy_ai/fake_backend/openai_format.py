"""The OpenAI wire format: reading an inference request, and building errors, bodies and SSE.

Pure functions of the request and the options; nothing here touches a socket or a clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from .options import FakeBackendOptions

__all__ = ["BadRequest", "Plan", "error_response", "full_body", "plan_request", "stream_events"]


class BadRequest(Exception):
    """An inference request body that cannot be served; becomes a 400 with ``code``."""

    def __init__(self, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.code = code


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_response(
    status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """An OpenAI-style error; statuses that forbid a body (1xx, 204, 304) get none."""
    if status < 200 or status in (204, 304):
        return web.Response(status=status, headers=headers)
    body = {"error": {"message": message, "type": _error_type(status), "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _count_words(value: object) -> int:
    """A deterministic stand-in for tokenisation: words in strings, one per int token id."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return 1
    if isinstance(value, list):
        return sum(_count_words(item) for item in value)
    if isinstance(value, dict):
        # Chat messages and content parts: only the text matters.
        return sum(_count_words(value.get(key)) for key in ("content", "text"))
    return 0


def _text_of(content: object) -> str:
    """A message's text content: a string, or the ``text`` of its ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def _prompt_text(value: object, chat: bool) -> str:
    """The text the prefix cache sees: each chat message's role then its text, in order; or the
    completions prompt (a list is joined; token ids count as their digits and a space)."""
    if chat:
        if not isinstance(value, list):
            return ""
        return "".join(
            (m["role"] if isinstance(m.get("role"), str) else "") + _text_of(m.get("content"))
            for m in value
            if isinstance(m, dict)
        )
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return f"{value} "
    if isinstance(value, list):
        return "".join(_prompt_text(item, False) for item in value)
    return ""


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


_SSE_DONE: Final = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Plan:
    """What one valid inference request asked for."""

    chat: bool
    model: str
    stream: bool
    include_usage: bool
    completion_tokens: int
    finish_reason: str
    prompt_tokens: int
    prompt_text: str = ""  # what the prefix cache keys on (see _prompt_text)

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def token_text(self, i: int) -> str:
        # Stream pieces concatenate to exactly the non-stream content.
        return f"tok{i}" if i == 0 else f" tok{i}"


def plan_request(payload: object, chat: bool, options: FakeBackendOptions) -> Plan:
    """Read a decoded request body into a ``Plan``; raises ``BadRequest`` if it is malformed."""
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object", "invalid_json")
    stream = payload.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean")
    stream_options = payload.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise BadRequest("'stream_options' must be an object")
        include_usage = stream_options.get("include_usage") is True
    limit: object = None
    for key in ("max_completion_tokens", "max_tokens"):  # the newer chat name wins
        if payload.get(key) is not None:
            limit = payload[key]
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise BadRequest(f"'{key}' must be a positive integer")
            break
    completion_tokens = options.tokens
    finish_reason = "stop"
    if isinstance(limit, int) and limit < options.tokens:
        completion_tokens, finish_reason = limit, "length"
    model = payload.get("model")
    prompt = payload.get("messages" if chat else "prompt")
    return Plan(
        chat=chat,
        model=model if isinstance(model, str) and model else options.model,
        stream=stream,
        include_usage=stream and include_usage,
        completion_tokens=completion_tokens,
        finish_reason=finish_reason,
        prompt_tokens=_count_words(prompt),
        prompt_text=_prompt_text(prompt, chat),
    )


def full_body(plan: Plan, rid: str, created: int) -> dict[str, Any]:
    """The JSON body of a non-streamed answer."""
    content = "".join(plan.token_text(i) for i in range(plan.completion_tokens))
    choice: dict[str, Any]
    if plan.chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": None,
            "finish_reason": plan.finish_reason,
        }
    else:
        choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": plan.finish_reason}
    return {
        "id": rid,
        "object": "chat.completion" if plan.chat else "text_completion",
        "created": created,
        "model": plan.model,
        "choices": [choice],
        "usage": plan.usage,
    }


def stream_events(plan: Plan, rid: str, created: int) -> list[bytes]:
    """Every SSE event of a streamed answer, in order: one per token, the finish chunk, the
    usage chunk if asked for, then ``[DONE]``."""
    base: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if plan.chat else "text_completion",
        "created": created,
        "model": plan.model,
    }
    if plan.include_usage:
        base["usage"] = None  # as OpenAI does: only the extra last chunk carries usage

    def chunk(text: str | None, finish: str | None, first: bool = False) -> bytes:
        choice: dict[str, Any]
        if plan.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    events = [chunk(plan.token_text(i), None, first=i == 0) for i in range(plan.completion_tokens)]
    events.append(chunk(None, plan.finish_reason))
    if plan.include_usage:
        events.append(_sse({**base, "choices": [], "usage": plan.usage}))
    events.append(_SSE_DONE)
    return events

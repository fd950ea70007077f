"""Locust users for an OpenAI-compatible endpoint (haproxy-ai, or a model server directly).

Run: ``locust -f loadtests/locustfile.py --host http://127.0.0.1:8080`` (web UI), or headless:
``locust -f loadtests/locustfile.py --headless -u 8 -r 4 -t 30s --host http://127.0.0.1:8080``.
``loadtests/run.py`` runs it against simulated replicas and checks thresholds.

Each user alternates two tasks on ``POST /v1/chat/completions``:

- ``chat``: a non-streamed completion; it fails on a non-200 status or a body without ``choices``.
- ``chat [stream]``: ``"stream": true``; the SSE lines are read as they arrive. The request's
  time is the whole stream (first byte to ``data: [DONE]``), and the time to the first token
  (the first event carrying content) is reported as its own entry, request type ``TTFT``. It
  fails on a non-200 status, an event that is not JSON, or a stream that does not end with
  ``data: [DONE]`` (haproxy-ai cuts a failed stream short rather than faking the end).

Environment (all optional):

| variable | default | meaning |
|---|---|---|
| ``LOADTEST_MODEL`` | ``fake-model`` | ``model`` in every request |
| ``LOADTEST_PROMPT`` | ``Say hello in five words.`` | the user message |
| ``LOADTEST_MAX_TOKENS`` | ``16`` | ``max_tokens`` |
| ``LOADTEST_API_KEY`` | none | sent as ``Authorization: Bearer ...`` |
| ``LOADTEST_WAIT`` | ``0.1,0.5`` | seconds a user waits between tasks: uniform in MIN,MAX (one number: constant) |
| ``LOADTEST_TIMEOUT`` | ``120`` | seconds a connect or a read may take before the request fails |
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from locust import between, task
from locust.contrib.fasthttp import FAILURE_EXCEPTIONS, FastHttpUser, ResponseContextManager

PATH = "/v1/chat/completions"
MODEL = os.environ.get("LOADTEST_MODEL", "fake-model")
PROMPT = os.environ.get("LOADTEST_PROMPT", "Say hello in five words.")
MAX_TOKENS = int(os.environ.get("LOADTEST_MAX_TOKENS", "16"))
API_KEY = os.environ.get("LOADTEST_API_KEY", "")
TIMEOUT = float(os.environ.get("LOADTEST_TIMEOUT", "120"))


def _wait_range(spec: str) -> tuple[float, float]:
    low, _, high = spec.partition(",")
    lo = float(low)
    hi = float(high) if high else lo
    if not 0 <= lo <= hi:
        raise ValueError(f"LOADTEST_WAIT must be MIN,MAX seconds with 0 <= MIN <= MAX, got {spec!r}")
    return lo, hi


WAIT_MIN, WAIT_MAX = _wait_range(os.environ.get("LOADTEST_WAIT", "0.1,0.5"))


def _payload(stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    }


def _first_token(event: dict[str, Any]) -> bool:
    """True if this chunk carries generated text (the first chunk often has only the role)."""
    for choice in event.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if (isinstance(delta, dict) and delta.get("content")) or choice.get("text"):
            return True
    return False


def _problem(resp: ResponseContextManager) -> str | None:
    """Why a response is a failure, or None; the status comes first so errors show the proxy's message."""
    if resp.status_code != 200:
        # Status 0: nothing answered; locust keeps the connection error on the response.
        body = (resp.text or "")[:200] if resp.status_code else repr(getattr(resp, "error", None))
        return f"HTTP {resp.status_code}: {body}"
    return None


class ChatUser(FastHttpUser):
    """One client of the chat-completions API. FastHttpUser (geventhttpclient) costs a fraction of
    HttpUser's CPU per request, which matters when locust shares a small box with the proxy."""

    network_timeout = TIMEOUT
    connection_timeout = TIMEOUT
    wait_time = between(WAIT_MIN, WAIT_MAX)

    def _headers(self, stream: bool) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if API_KEY:
            headers["Authorization"] = f"Bearer {API_KEY}"
        if stream:
            # SSE is read raw, line by line: a compressed stream could not be split into events.
            headers["Accept"] = "text/event-stream"
            headers["Accept-Encoding"] = "identity"
        return headers

    @task
    def chat(self) -> None:
        body = json.dumps(_payload(stream=False))
        with self.client.post(PATH, data=body, headers=self._headers(False), name="chat", catch_response=True) as resp:
            if problem := _problem(resp):
                resp.failure(problem)
                return
            try:
                choices = json.loads(resp.content or b"").get("choices")
            except (ValueError, AttributeError):
                choices = None
            if not choices:
                resp.failure(f"200 but not a completion ({len(resp.content or b'')} bytes, no choices)")

    @task
    def chat_stream(self) -> None:
        body = json.dumps(_payload(stream=True))
        name = "chat [stream]"
        started = time.perf_counter()
        with self.client.post(
            PATH, data=body, headers=self._headers(True), name=name, stream=True, catch_response=True
        ) as resp:
            if problem := _problem(resp):
                resp.failure(problem)
                return
            ttft: float | None = None
            length, done, problem = 0, False, None
            try:
                # Read to the end even after a bad event: the connection goes back to the pool, and
                # leftover bytes would be taken for the next response on it.
                while line := resp.stream.readline(b"\n"):
                    length += len(line)
                    text = line.strip()
                    if not text.startswith(b"data:"):
                        continue  # blank separators, comments (": ping"), event:/id: fields
                    data = text[5:].strip()
                    if done:
                        problem = problem or "data after data: [DONE]"
                    elif data == b"[DONE]":
                        done = True
                    elif problem is None:
                        try:
                            event = json.loads(data)
                        except ValueError as exc:
                            problem = f"event is not JSON: {exc}"
                            continue
                        if ttft is None and isinstance(event, dict) and _first_token(event):
                            ttft = time.perf_counter()
            except FAILURE_EXCEPTIONS as exc:
                # A reset, a read timeout, or a chunked body cut short (haproxy-ai's abnormal end).
                problem = f"stream broken after {length} bytes: {exc!r}"
            if problem is None and not done:
                problem = f"stream ended after {length} bytes without data: [DONE]"
            # The client measured only up to the headers (stream=True); report the whole stream.
            resp.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            resp.request_meta["response_length"] = length
            if problem:
                resp.failure(problem)
                return
            resp.success()
        if ttft is not None:
            # Through the environment's hooks, which are locust.events when run from the CLI.
            self.environment.events.request.fire(
                request_type="TTFT",
                name=name,
                response_time=(ttft - started) * 1000,
                response_length=0,
                exception=None,
                context={},
            )

"""A simulated OpenAI-compatible inference replica, for tests, demos and load tests.

``FakeBackend`` serves ``/v1/chat/completions``, ``/v1/completions`` (streaming and not),
``/v1/models`` and ``/health`` with configurable latency, jitter, tail latency, error rate and
token count, plus test hooks:

* ``/_fault`` (or ``FakeBackend.set_fault``) switches on a failure mode: ``ok``, ``error``,
  ``hang``, ``slow``, ``reset`` and ``retry_after``, optionally for the next ``count``
  inference requests only.
* ``/_stats`` reports exact counters. Every inference request ends in exactly one of
  ``completed``, ``errors``, ``cancelled`` or ``resets``, so between resets of the counters
  ``requests == completed + errors + cancelled + resets + in_flight``.
* ``/_echo`` reflects the request line, headers (original order and case) and body, to check
  that a proxy passes requests through untouched.
* ``/metrics`` serves the engine's load as vLLM does (``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``, prefix-cache counters, ...), so
  load-aware routing and prefix-cache affinity can be measured against it.

An engine model sits behind the faults: at most ``max_batch`` generations run at once, the rest
queue FIFO; a vLLM-style prefix cache (chained block hashes, LRU) remembers prompt blocks, and
``prefill_per_kchar`` makes time to first token grow with the characters it missed. The
defaults (no batch limit, no prefill cost) leave timing as it was.

Faults act on inference requests as they arrive, before the configured latency (``slow``
adds to it). Configured errors (``error_rate``) are sent after the latency, like a replica
that fails while working. ``/_fault``, ``/_stats`` and ``/_echo`` are never faulted; ``/health``
keeps answering 200 except in ``error`` mode, because real model servers report healthy while
their inference path is stuck.

Modules: ``options`` (settings and CLI flags), ``faults``, ``stats``, ``openai_format`` (wire
format), ``cache`` (the prefix cache), ``scheduler`` (batch slots and queue), ``metrics``
(``/metrics``), ``inference`` (the inference request path) and ``server`` (``FakeBackend``).
Run one from a shell with ``haproxy-ai fake-backend --port 8001 --latency 50ms``.
"""

from __future__ import annotations

from .faults import FAULT_MODES
from .options import FakeBackendOptions, add_arguments, options_from_args
from .server import FakeBackend, serve_forever
from .stats import FakeStats

__all__ = [
    "FAULT_MODES",
    "FakeBackend",
    "FakeBackendOptions",
    "FakeStats",
    "add_arguments",
    "options_from_args",
    "serve_forever",
]

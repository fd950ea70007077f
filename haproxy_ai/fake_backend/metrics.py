"""``GET /metrics``: the replica's load in vLLM's Prometheus exposition format.

Names, HELP texts and TTFT buckets follow vLLM, and the text is produced by prometheus_client
exactly as vLLM does, so a scraper that reads this reads a real vLLM too. Besides the gauges a
load-aware router wants (running, waiting, KV-cache use, prefix-cache counters) it serves
metrics a router should ignore, so a scraper has to pick out the names it needs.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .scheduler import Scheduler

__all__ = ["CONTENT_TYPE", "EngineMetrics", "MetricsExposition"]

# Pinned rather than prometheus_client.CONTENT_TYPE_LATEST, which newer releases moved to
# version=1.0.0; vLLM replicas in the field answer with this one.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# vLLM's buckets for vllm:time_to_first_token_seconds.
_TTFT_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip


@dataclass(eq=False)
class EngineMetrics:
    """Counters that only ``/metrics`` reports; like a real replica's they never reset."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    ttft_sum: float = 0.0
    # Per-bucket (not cumulative) counts; the last slot is +Inf.
    ttft_counts: list[int] = field(default_factory=lambda: [0] * (len(_TTFT_BUCKETS) + 1))

    def first_token(self, seconds: float, prompt_tokens: int, generation_tokens: int) -> None:
        """Record an answer whose first token came ``seconds`` after the request arrived."""
        self.ttft_counts[bisect.bisect_left(_TTFT_BUCKETS, seconds)] += 1
        self.ttft_sum += seconds
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generation_tokens


class _Collector(Collector):
    def __init__(self, model: str, scheduler: Scheduler, engine: EngineMetrics) -> None:
        self._model = model
        self._scheduler = scheduler
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        labels = ["model_name"]
        value = [self._model]
        scheduler, cache, engine = self._scheduler, self._scheduler.cache, self._engine

        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=["block_size", "enable_prefix_caching", "num_gpu_blocks"],
        )
        info.add_metric([str(cache.block_chars), str(cache.capacity > 0), str(cache.capacity)], 1.0)
        yield info

        def gauge(name: str, doc: str, number: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(value, number)
            return family

        def counter(name: str, doc: str, number: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(value, number)
            return family

        usage = scheduler.kv_cache_usage
        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", scheduler.running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", scheduler.waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)
        yield gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", usage)
        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried blocks (vLLM counts tokens).",
            cache.queries,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached blocks (vLLM counts tokens).",
            cache.hits,
        )
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", 0)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", engine.prompt_tokens)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", engine.generation_tokens)

        ttft = HistogramMetricFamily(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", labels=labels
        )
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, _TTFT_BUCKETS), "+Inf"), engine.ttft_counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        ttft.add_metric(value, buckets, engine.ttft_sum)
        yield ttft


class MetricsExposition:
    """Renders one replica's ``/metrics`` body from its live state on every call."""

    def __init__(self, model: str, scheduler: Scheduler, engine: EngineMetrics) -> None:
        # A registry per replica: several fake backends share a test process.
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(model, scheduler, engine))

    def render(self) -> bytes:
        return generate_latest(self._registry)

"""Tail-latency benchmark: hedging off vs on in front of a pool with one heavy-tailed replica.

Run: ``python loadtests/tail.py [--requests 3000] [--concurrency 16] [--tail 2.0] [--delay p95]``

Three simulated replicas (``haproxy-ai fake-backend``): two answer in ~10 ms; the third does too,
except that 10% of its requests take ``--tail`` seconds (2 s, as in a GC pause or a long prefill
behind a big batch). Two proxies run in front of the same replicas: one with hedging off, one
with ``hedge.enabled`` and ``hedge.delay`` (default p95 of recent time to first byte). The same
closed-loop load (N requests, C at a time, from aiohttp on loopback) goes through each; the
script prints p50/p99/p99.9 latency and how many extra upstream requests hedging sent, read
from each proxy's own /metrics. Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import spawn_reading, stop_processes

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _upstream_attempts(admin: str) -> float:
    text = urllib.request.urlopen(admin + "/metrics", timeout=5).read().decode()  # loopback only
    return sum(float(m[1]) for m in re.finditer(r"^haproxy_ai_upstream_attempts_total\{[^}]*\} (\S+)$", text, re.M))


async def _drive(url: str, requests: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal errors
            for _ in counter:
                started = time.perf_counter()
                async with session.post(url + "/v1/chat/completions", json=CHAT) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    if errors:
        print(f"  ! {errors} non-200 responses", file=sys.stderr)
    return latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tail", type=float, default=2.0, help="seconds the slow 10%% of one replica take")
    parser.add_argument("--delay", default="p95", help="hedge.delay: p95, or a duration like 50ms")
    args = parser.parse_args()
    procs: list[subprocess.Popen[str]] = []
    try:
        replicas = []
        for i in range(3):
            tail = ["--tail-fraction", "0.1", "--tail-latency", str(args.tail)] if i == 0 else []
            flags = ["--port", "0", "--latency", "0.01", "--jitter", "0.002", "--seed", str(i), "--name", f"r{i}"]
            replicas.append(spawn_reading(["fake-backend", *flags, *tail], [r"serving (http://\S+)"], procs)[0])
        backends = [f"{url},name=r{i}" for i, url in enumerate(replicas)]
        results = {}
        for label, hedge in (("hedging off", "false"), ("hedging on", "true")):
            config = Path(f"/tmp/haproxy-ai-tail-{os.getpid()}-{hedge}.yaml")
            config.write_text(
                f"hedge: {{enabled: {hedge}, delay: {args.delay}}}\n"
                "health: {passive: {enabled: false}, slow_start: 0s}\n"
            )
            flags = ["serve", "--config", str(config), "--port", "0", "--admin-port", "0", "--balancer", "round_robin"]
            for backend in backends:
                flags += ["--backend", backend]
            url, admin = spawn_reading(flags, [r"proxying (http://\S+)", r"admin on (http://\S+)"], procs)
            asyncio.run(_drive(url, 200, args.concurrency))  # warm-up: pools, and p95 samples for the delay
            before = _upstream_attempts(admin)
            latencies = asyncio.run(_drive(url, args.requests, args.concurrency))
            extra = (_upstream_attempts(admin) - before - args.requests) / args.requests
            results[label] = (latencies, extra)
            config.unlink()
        print(f"# {args.requests} requests, {args.concurrency} concurrent; 1 of 3 replicas sends 10% of its "
              f"answers after {args.tail:g} s; hedge.delay {args.delay}")  # fmt: skip
        print(f"{'':12} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'extra upstream':>15}")
        for label, (latencies, extra) in results.items():
            print(
                f"{label:12} {_pct(latencies, 0.5):8.1f} {_pct(latencies, 0.99):8.1f} "
                f"{_pct(latencies, 0.999):9.1f} {extra:14.1%}"
            )
        return 0
    finally:
        stop_processes(procs)


if __name__ == "__main__":
    sys.exit(main())

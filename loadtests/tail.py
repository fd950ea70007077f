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
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _cmd() -> list[str]:
    exe = Path(sys.executable).parent / "haproxy-ai"
    return [str(exe)] if os.access(exe, os.X_OK) else [sys.executable, "-m", "haproxy_ai"]


def _start(args: list[str], pattern: str, procs: list[subprocess.Popen[str]]) -> str:
    proc = subprocess.Popen([*_cmd(), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(proc)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(pattern, line)
        if match:
            return match.group(1)
    raise RuntimeError(f"{args[0]} did not start")


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
            replicas.append(_start(["fake-backend", *flags, *tail], r"serving (http://\S+)", procs))
        backends = [f"{url},name=r{i}" for i, url in enumerate(replicas)]
        results = {}
        for label, hedge in (("hedging off", "false"), ("hedging on", "true")):
            env = dict(os.environ, HAPROXY_AI_LOG_LEVEL="warning")
            config = Path(f"/tmp/haproxy-ai-tail-{os.getpid()}-{hedge}.yaml")
            config.write_text(
                f"hedge: {{enabled: {hedge}, delay: {args.delay}}}\n"
                "health: {passive: {enabled: false}, slow_start: 0s}\n"
            )
            flags = ["serve", "--config", str(config), "--port", "0", "--admin-port", "0", "--balancer", "round_robin"]
            for backend in backends:
                flags += ["--backend", backend]
            proc = subprocess.Popen([*_cmd(), *flags], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    env=env)  # fmt: skip
            procs.append(proc)
            assert proc.stdout is not None
            url = re.search(r"proxying (http://\S+)", proc.stdout.readline() or "")
            admin = re.search(r"admin on (http://\S+)", proc.stdout.readline() or "")
            if not url or not admin:
                raise RuntimeError("proxy did not start")
            asyncio.run(_drive(url[1], 200, args.concurrency))  # warm-up: pools, and p95 samples for the delay
            before = _upstream_attempts(admin[1])
            latencies = asyncio.run(_drive(url[1], args.requests, args.concurrency))
            extra = (_upstream_attempts(admin[1]) - before - args.requests) / args.requests
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
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())

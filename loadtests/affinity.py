"""Prefix-cache affinity benchmark: time to first token with round robin, load_aware and hash.

Run: ``python loadtests/affinity.py [--replicas 4] [--conversations 64] [--turns 5]
[--concurrency 16] [--context 3000] [--modes round_robin,load_aware,hash]``

Each mode gets fresh simulated replicas (``haproxy-ai fake-backend``) that model an inference
engine with automatic prefix caching: a prompt's first token costs ``--prefill-per-kchar`` per
1,000 characters that are not already in that replica's prefix cache (an LRU of 64-character
blocks, ``--cache-chars`` per replica), on top of a fixed ``--latency``; ``--max-batch``
generations run at once and the rest queue. Conversations look like chat with retrieved
context: a long opening message (``--context`` characters, different per conversation), then
``--turns`` turns that each append the answer and a short follow-up, as a chat client does.
``--concurrency`` conversations run at a time, each turn a streamed request (openai wire
format) through one proxy whose balancer is the mode:

- ``round_robin``: spreads turns evenly, so a conversation's cached prefix is on the replica
  that served it only 1 time in N;
- ``load_aware``: least loaded by the replicas' own /metrics (queue, KV cache), no affinity;
- ``hash``: ``hash_key: prompt`` with bounded load (``--balance-factor``, default 1.25), so a
  conversation stays on the replica that holds its prefix unless that replica is over its bound.

Reported per mode: time to first token (first content event) p50/p95/mean over every turn after
the first (the first turn of a conversation is a cache miss in every mode), the replicas'
prefix-cache hit rate (blocks, from their vLLM-style /metrics), and wall time. Everything runs
on 127.0.0.1, is bounded by the request count, and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import spawn_reading, stop_processes

from haproxy_ai.settings import parse_duration

MODES = ("round_robin", "load_aware", "hash")


def _cache_counters(replicas: list[str]) -> tuple[float, float]:
    hits = queries = 0.0
    for url in replicas:
        text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()  # loopback only
        for name, value in re.findall(r"^(vllm:prefix_cache_(?:hits|queries)_total)\{[^}]*\} (\S+)$", text, re.M):
            if name.endswith("hits_total"):
                hits += float(value)
            else:
                queries += float(value)
    return hits, queries


def _context(rng: random.Random, chars: int) -> str:
    words = ["replica", "token", "cache", "prefix", "latency", "budget", "stream", "model", "queue", "shard"]
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(words)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:chars]


async def _turn(session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]]) -> tuple[float, str]:
    """One streamed chat turn: (seconds to the first content event, the answer text)."""
    body = {"model": "fake-model", "messages": messages, "max_tokens": 8, "stream": True}
    started = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if first is None:
                        first = time.perf_counter() - started
                    text.append(content)
    if first is None:
        raise RuntimeError("a stream without content")
    return first, "".join(text)


async def _drive(url: str, args: argparse.Namespace) -> tuple[list[float], float]:
    rng = random.Random(7)
    openings = [_context(rng, args.context) for _ in range(args.conversations)]
    later: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.conversations):
        queue.put_nowait(i)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                messages = [
                    {"role": "system", "content": "You answer from the document."},
                    {"role": "user", "content": f"Document {i}: {openings[i]}\nSummarise it."},
                ]
                for turn in range(args.turns):
                    ttft, answer = await _turn(session, url, messages)
                    if turn:
                        later.append(ttft)
                    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Go on."}]

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return later, time.perf_counter() - started


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run_mode(mode: str, args: argparse.Namespace) -> tuple[list[float], float, float]:
    procs: list[subprocess.Popen[str]] = []
    try:
        replicas = []
        for i in range(args.replicas):
            flags = [
                "fake-backend", "--port", "0", "--name", f"r{i}", "--seed", str(i),
                "--latency", args.latency, "--chunk-interval", "1ms", "--max-batch", str(args.max_batch),
                "--prefill-per-kchar", args.prefill_per_kchar, "--prefix-cache-chars", str(args.cache_chars),
            ]  # fmt: skip
            replicas += spawn_reading(flags, [r"serving (http://\S+)"], procs)
        config = Path(f"/tmp/haproxy-ai-affinity-{os.getpid()}-{mode}.yaml")
        balancer = {"type": mode}
        if mode == "hash":
            balancer.update(hash_key="prompt", hash_balance_factor=args.balance_factor)
        config.write_text(
            json.dumps(
                {
                    "backends": [{"url": url, "name": f"r{i}"} for i, url in enumerate(replicas)],
                    "balancer": balancer,
                    "scrape": {"enabled": mode == "load_aware", "interval": "100ms"},
                    "health": {"passive": {"enabled": False}, "slow_start": "0s", "active": {"enabled": False}},
                }
            )
        )
        try:
            flags = ["serve", "--config", str(config), "--port", "0", "--admin-port", "0"]
            url, _admin = spawn_reading(flags, [r"proxying (http://\S+)", r"admin on (http://\S+)"], procs)
            later, wall = asyncio.run(_drive(url, args))
        finally:
            config.unlink()
        hits, queries = _cache_counters(replicas)
        return later, hits / queries if queries else 0.0, wall
    finally:
        stop_processes(procs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--context", type=int, default=3000, help="characters of each conversation's opening")
    parser.add_argument("--latency", default="10ms", help="fixed part of time to first token")
    parser.add_argument("--prefill-per-kchar", default="40ms", help="first-token cost per 1,000 uncached chars")
    parser.add_argument("--cache-chars", type=int, default=120_000, help="prefix-cache capacity per replica")
    parser.add_argument("--max-batch", type=int, default=8, help="generations at once per replica")
    parser.add_argument("--balance-factor", type=float, default=1.25, help="hash: hash_balance_factor")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes takes a comma list of {', '.join(MODES)}")
    if min(args.replicas, args.conversations, args.concurrency, args.context) < 1:
        parser.error("--replicas, --conversations, --concurrency and --context must be at least 1")
    if args.turns < 2:
        parser.error("--turns must be at least 2: only turns after the first are measured")
    if min(args.cache_chars, args.max_batch) < 0 or args.balance_factor < 0:
        parser.error("--cache-chars, --max-batch and --balance-factor must not be negative")
    for flag in ("latency", "prefill_per_kchar"):
        try:
            parse_duration(getattr(args, flag))
        except ValueError as exc:
            parser.error(f"--{flag.replace('_', '-')}: {exc}")
    print(
        f"# {args.replicas} replicas, {args.conversations} conversations x {args.turns} turns, "
        f"{args.concurrency} at a time; opening {args.context} chars; prefill {args.prefill_per_kchar}/kchar "
        f"uncached + {args.latency}; cache {args.cache_chars} chars/replica; batch {args.max_batch}"
    )
    print(f"{'balancer':12} {'TTFT p50 ms':>12} {'p95 ms':>8} {'mean ms':>8} {'cache hits':>11} {'wall s':>7}")
    for mode in modes:
        later, hit_rate, wall = run_mode(mode, args)
        mean = sum(later) / len(later) * 1000
        print(
            f"{mode:12} {_pct(later, 0.5):12.1f} {_pct(later, 0.95):8.1f} {mean:8.1f} {hit_rate:10.1%} {wall:7.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

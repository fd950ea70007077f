"""What routing costs: one pool vs named pools routed by model vs prefix-affinity hashing, A/B/C.

Run: ``python loadtests/routing_cost.py [--rounds 6] [--duration 3]`` (needs wrk; nginx for the
backend, else the same tiny uvloop server bench.py uses).

Three proxies run the whole time, each pinned to CPU 0 (one process, as in bench.py), in front of
the same fixed-answer backend on CPU 1 with wrk (32 connections) posting a 245-byte chat body:

- ``single``: the top-level ``backends`` (one pool, p2c): no body is parsed;
- ``routed``: three pools declaring their models, the request's ``model`` picks the pool through
  the model catalog (the body is parsed once, the route table tried, the catalog consulted);
- ``hash``: one pool with ``balancer: {type: hash, hash_key: prompt}``: the body is parsed and
  the conversation's opening hashed with rendezvous over four replicas.

Rounds alternate between them. Per run: req/s from wrk and the proxy's own CPU time per request;
medians over the rounds, and each one's cost against ``single`` paired per round (a positive
cost is lost throughput, or more CPU per request).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import CPU_PROXY, fixed_backend_scratch, free_port, haproxy_ai_cmd, tool
from mirror_cost import measure_rounds, positive_int

BODY = {
    "model": "llama-3-8b",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant that answers briefly."},
        {"role": "user", "content": "Which replica served this request, and how long did its first token take?"},
    ],
    "max_tokens": 16,
}


def configs(backend: str) -> dict[str, dict[str, object]]:
    url = backend.rstrip("/")
    quiet = {"active": {"enabled": False}}
    return {
        "single": {"backends": [{"url": url, "name": "b0"}], "health": quiet},
        "routed": {
            "pools": {
                name: {"backends": [{"url": url, "name": f"{name}-0"}], "models": [model], "discover_models": False}
                for name, model in (("qwen", "qwen-2-7b"), ("mistral", "mistral-7b"), ("llama", "llama-3-8b"))
            },
            "health": quiet,
        },
        "hash": {
            "backends": [{"url": url, "name": f"b{i}"} for i in range(4)],
            "balancer": {"type": "hash", "hash_key": "prompt"},
            "health": quiet,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=positive_int, default=6, help="rounds (default 6)")
    ap.add_argument("--duration", type=positive_int, default=3, help="seconds per run (default 3)")
    args = ap.parse_args(argv)
    wrk = tool("wrk")
    if not wrk:
        print("routing_cost.py: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    with fixed_backend_scratch("haproxy-ai-routing-cost-") as (procs, tmp, backend):
        script = tmp / "post.lua"
        body = json.dumps(BODY).replace("\\", "\\\\").replace('"', '\\"')
        script.write_text(
            f'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.headers["Content-Type"] = "application/json"\n'
        )
        targets = {}
        for name, config in configs(backend).items():
            path = tmp / f"{name}.yaml"
            path.write_text(json.dumps(config))
            port, admin = free_port(), free_port()
            cmd = [*haproxy_ai_cmd(), "serve", "--config", str(path), "--port", str(port), "--admin-port", str(admin)]
            proc = procs.start(f"proxy-{name}", cmd, CPU_PROXY, f"http://127.0.0.1:{admin}/readyz")
            targets[name] = (proc, f"http://127.0.0.1:{port}/v1/chat/completions")
        results = measure_rounds(wrk, targets, args.rounds, args.duration, script)
        base = results["single"]
        print()
        for name, runs in results.items():
            rps = statistics.median(r for r, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            line = f"{name:6}: {rps:8.0f} req/s, {cpu:6.1f} us CPU/request (medians of {args.rounds})"
            if name != "single":
                d_rps = statistics.median(1 - r[0] / b[0] for b, r in zip(base, runs, strict=True))
                d_cpu = statistics.median(r[1] / b[1] - 1 for b, r in zip(base, runs, strict=True))
                line += f"; cost vs single, paired per round: {d_rps:+.1%} throughput, {d_cpu:+.1%} CPU per request"
            print(line)
        return 0


if __name__ == "__main__":
    raise SystemExit(main())

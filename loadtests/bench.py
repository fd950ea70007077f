"""Benchmark: what haproxy-ai costs compared with talking to the backend directly, and with HAProxy.

Run: ``python loadtests/bench.py [--quick] [--json FILE]`` (see ``--help``); needs wrk, and nginx and
haproxy for the full comparison (Debian: ``apt-get install wrk nginx-light haproxy``).

Layout (2 cores): the proxy under test (haproxy-ai as ONE process; HAProxy with ``nbthread 1``)
is pinned to CPU 0; the backend, the load generator and this script share CPU 1. The proxy
gets a whole core to itself, and "direct" shows what backend + load generator do without it.

1. Closed loop (throughput): ``wrk -t1 -cN -dD --latency`` (without wrk: a Python aiohttp
   generator, N connections each sending its next request as soon as the last one returned)
   against a fixed 285-byte JSON body from nginx (``worker_processes 1``; without nginx a tiny
   uvloop server). Targets: direct, haproxy-ai with each upstream client, HAProxy configured like
   haproxy-ai's defaults (3 attempts with redispatch on connect failure, empty response, timeout
   and 500/502-504; GET /health checks every 2 s, rise 2, fall 3). Columns:
   req/s, p50 and p99 latency, and each as a ratio to direct ("req/s vs direct" 0.25 = a quarter
   of direct's throughput; "p99 vs direct" 3.0 = three times direct's p99). Each target gets a
   1 s warm-up first. Direct is bounded by nginx + wrk sharing CPU 1, so it is a reference, not a
   ceiling a proxy could reach; HAProxy shows what one native proxy thread does on the same core.
2. Fixed rate (added latency): 500 req/s on a fixed schedule from the Python generator
   (request i is due at t0 + i/500 and is sent then, on a free or a new connection, whatever
   earlier requests are doing: open loop, so a slow response does not delay later sends).
   Latency is counted from the send; "lag p99" shows how late the generator itself sent (it
   should stay ~1 ms). wrk2 is not in Debian and wrk's lua ``delay()`` only adds per-connection
   think time, hence Python. "added" = through haproxy-ai minus direct, at p50 and at p99.
3. Streaming: 8 concurrent SSE streams (3 rounds; 1 with --quick) from ``haproxy-ai fake-backend
   --tokens 200 --chunk-interval 0.005``, direct and through haproxy-ai. Per stream: time to the
   first event (ttft), gap between events (mean, p99), time to the last event ("last", median).
   "added/chunk" = (proxied - direct "last") / events: the proxy's mean delay per streamed chunk.
   The mean gap is mostly the backend's own pacing (5 ms + its timer slack); a proxy that holds
   or batches chunks shows up as a larger p99 gap and "last", not as lost events.

Numbers are for this machine over loopback: compare rows of one run, not runs across machines;
on a shared VM expect run-to-run spread of 10-30% in req/s and more in p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")
FIXED_RATE = 500.0
STREAMS, STREAM_TOKENS = 8, 200
CPU_PROXY, CPU_LOAD = (0, 1) if (os.cpu_count() or 1) >= 2 else (None, None)
_BASE = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "fake-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
}
_BASE["choices"][0]["message"]["content"] = "x" * (285 - len(json.dumps(_BASE, separators=(",", ":"))))  # type: ignore[index]
BODY = json.dumps(_BASE, separators=(",", ":"))
assert len(BODY) == 285 and "'" not in BODY and "$" not in BODY and "\\" not in BODY
_URLOPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open  # never via $http_proxy

FALLBACK_SERVER = r"""
import asyncio, sys
BODY = sys.argv[2].encode()
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
class Conn(asyncio.Protocol):
    def connection_made(self, transport): self.t, self.buf = transport, b""
    def data_received(self, data):  # bodiless requests only (GET); pipelining is fine
        self.buf += data
        if n := self.buf.count(b"\r\n\r\n"):
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.t.write(RESP * n)
async def main():
    server = await asyncio.get_running_loop().create_server(Conn, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()
try:
    import uvloop
except ImportError:
    uvloop = asyncio
uvloop.run(main())
"""


def tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def pin(cmd: list[str], cpu: int | None) -> list[str]:
    taskset = tool("taskset")
    return [taskset, "-c", str(cpu), *cmd] if taskset and cpu is not None else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)  # nearest rank
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else math.nan


def ms_pcts(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(seconds, 50) * 1e3, "p99_ms": pct(seconds, 99) * 1e3}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run_async(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(fn(*args))
    return uvloop.run(fn(*args))


class Procs:
    """Children started by this script; stop() sends SIGTERM, then SIGKILL after a timeout."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.live = tmp, list[subprocess.Popen[bytes]]()

    def start(self, name: str, cmd: list[str], cpu: int | None, ready_url: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(
                pin(cmd, cpu),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "HAPROXY_AI_LOG_LEVEL": "warning"},
            )
        self.live.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                with _URLOPEN(ready_url, timeout=1) as resp:
                    if resp.status == 200:
                        return proc
            time.sleep(0.05)
        tail = (self.tmp / f"{name}.log").read_text(errors="replace")[-1500:]
        self.stop(proc)
        raise RuntimeError(f"{name} did not become ready at {ready_url} (exit {proc.returncode}):\n{tail}")

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.live.remove(proc)

    def stop_all(self) -> None:
        while self.live:
            self.stop(self.live[-1])


@contextlib.contextmanager
def fixed_backend_scratch(prefix: str) -> Iterator[tuple[Procs, Path, str]]:
    """A temporary directory, the children started in it and the fixed-body backend's URL; on
    exit every child is stopped and the directory removed (the cost scripts' common frame)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Procs(tmp)
    try:
        backend, _ = start_fixed_backend(procs, tmp)
        yield procs, tmp, backend
    finally:
        procs.stop_all()
        time.sleep(0.1)
        shutil.rmtree(tmp, ignore_errors=True)


def spawn_reading(
    args: list[str], patterns: list[str], procs: list[subprocess.Popen[str]], timeout: float = 20
) -> list[str]:
    """Start ``haproxy-ai ARGS`` (appended to ``procs``) and read its stdout until each pattern
    has matched a line, in order; the first group of each match. RuntimeError if it does not."""
    env = dict(os.environ, HAPROXY_AI_LOG_LEVEL="warning")
    cmd = [*haproxy_ai_cmd(), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    procs.append(proc)
    assert proc.stdout is not None
    found: list[str] = []
    deadline = time.monotonic() + timeout
    while len(found) < len(patterns) and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(patterns[len(found)], line)
        if match:
            found.append(match.group(1))
    if len(found) < len(patterns):
        raise RuntimeError(f"{args[0]} did not start")
    return found


def stop_processes(procs: list[subprocess.Popen[str]]) -> None:
    """SIGTERM every child in ``procs``, wait up to 10 s each, kill the ones still running."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    procs.clear()


def start_fixed_backend(procs: Procs, tmp: Path) -> tuple[str, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    if nginx := tool("nginx"):
        user = "user root;" if os.geteuid() == 0 else ""  # workers stay the current user
        temps = "".join(f"{k}_temp_path {tmp}/{k}; " for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (tmp / "nginx.conf").write_text(
            f"{user} worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log warn;\n"
            f"events {{ worker_connections 4096; }}\n"
            f"http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 300s; {temps}\n"
            f"  server {{ listen 127.0.0.1:{port} backlog=1024; default_type application/json;\n"
            f"    location / {{ return 200 '{BODY}'; }} }} }}\n"
        )
        cmd = [nginx, "-p", str(tmp), "-e", f"{tmp}/nginx-error.log", "-c", str(tmp / "nginx.conf")]
        procs.start("nginx", cmd, CPU_LOAD, url)
        return url, "nginx (worker_processes 1)"
    log("nginx not found: using the built-in Python fallback backend (slower than nginx; install nginx-light)")
    (tmp / "backend.py").write_text(FALLBACK_SERVER)
    procs.start("backend", [sys.executable, str(tmp / "backend.py"), str(port), BODY], CPU_LOAD, url)
    return url, "python/uvloop fallback"


def start_haproxy(procs: Procs, tmp: Path, haproxy: str, backend: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    host_port = backend.removeprefix("http://").rstrip("/")
    # Configured like haproxy-ai's defaults, so both do the same work per request: 3 attempts
    # (2 retries, redispatched) on connect failures, empty responses, timeouts and 500/502-504;
    # active checks GET /health every 2 s (rise 2, fall 3); passive marking down after 5 errors.
    (tmp / "haproxy.cfg").write_text(
        f"global\n  nbthread 1\n  maxconn 4096\n\ndefaults\n  mode http\n  option http-keep-alive\n"
        f"  http-reuse always\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n"
        f"  retries 2\n  option redispatch 1\n"
        f"  retry-on conn-failure empty-response response-timeout 500 502 503 504\n\n"
        f"frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\n"
        f"backend be\n  option httpchk GET /health\n"
        f"  server s1 {host_port} check inter 2s rise 2 fall 3 observe layer7 error-limit 5 on-error mark-down\n"
    )
    url = f"http://127.0.0.1:{port}/"
    return procs.start("haproxy", [haproxy, "-db", "-f", str(tmp / "haproxy.cfg")], CPU_PROXY, url), url


def haproxy_ai_cmd() -> list[str]:
    exe = str(Path(sys.executable).parent / "haproxy-ai")
    return [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "haproxy_ai"]


def start_proxy(
    procs: Procs, backend: str, client: str, balancer: str, config: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port, admin = free_port(), free_port()
    flags = f"serve --backend {backend.rstrip('/')} --port {port} --admin-port {admin}"
    cmd = [*haproxy_ai_cmd(), *flags.split(), "--upstream-client", client, "--balancer", balancer]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = procs.start(f"haproxy-ai-{client}-{port}", cmd, CPU_PROXY, f"http://127.0.0.1:{admin}/readyz")
    return proc, f"http://127.0.0.1:{port}/"


# --- load generators -------------------------------------------------------------------------


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit), timeout=aiohttp.ClientTimeout(total=30))


async def _get(s: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with s.get(url) as resp:
            return bool(await resp.read()) and resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def wrk_load(wrk: str, url: str, conns: int, duration: int) -> dict[str, Any]:
    cmd = pin([wrk, "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "10s", url], CPU_LOAD)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=False).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    lat = {m[1]: float(m[2]) * scale[m[3]] for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses:|connect|read|write|timeout) (\d+)", out))
    if not rps or len(lat) < 2:
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    return {"rps": float(rps[1]), "p50_ms": lat["50"], "p99_ms": lat["99"], "errors": errors}


async def closed_loop(url: str, conns: int, duration: float) -> dict[str, Any]:
    lat, errors = list[float](), 0
    async with _session(conns) as s:
        start = time.perf_counter()
        end = start + duration

        async def worker() -> None:
            nonlocal errors
            while (t := time.perf_counter()) < end:
                if await _get(s, url):
                    lat.append(time.perf_counter() - t)
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - start
    return {"rps": len(lat) / elapsed, **ms_pcts(lat), "errors": errors}


async def fixed_rate(url: str, rate: float, duration: float) -> dict[str, Any]:
    lat, lag, errors = list[float](), list[float](), 0
    async with _session(512) as s:

        async def one(due: float) -> None:
            nonlocal errors
            t = time.perf_counter()
            lag.append(t - due)
            if await _get(s, url):
                lat.append(time.perf_counter() - t)
            else:
                errors += 1

        for _ in range(int(rate / 2)):  # 0.5 s warm-up, not recorded
            await _get(s, url)
            await asyncio.sleep(1 / rate)
        t0, tasks = time.perf_counter() + 0.01, []
        for i in range(int(rate * duration)):
            due = t0 + i / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
    return {**ms_pcts(lat), "lag_p99_ms": pct(lag, 99) * 1e3, "requests": len(lat), "errors": errors}


async def streaming(url: str, rounds: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hi"}]
    payload = {"model": "fake-model", "messages": messages, "stream": True, "max_tokens": STREAM_TOKENS}
    ttft, total, gaps, counts = list[float](), list[float](), list[float](), list[int]()

    async def one(s: aiohttp.ClientSession) -> None:
        start, times, buf = time.perf_counter(), list[float](), b""
        async with s.post(url, json=payload) as resp:
            async for data in resp.content.iter_any():
                now, buf = time.perf_counter(), buf + data
                if n := buf.count(b"\n\n"):
                    times.extend([now] * n)
                    buf = buf[buf.rfind(b"\n\n") + 2 :]
        ttft.append(times[0] - start)
        total.append(times[-1] - start)
        gaps.extend(b - a for a, b in itertools.pairwise(times))
        counts.append(len(times))

    async with _session(STREAMS) as s:
        await one(s)  # warm-up
        for acc in (ttft, total, gaps, counts):
            acc.clear()
        for _ in range(rounds):
            await asyncio.gather(*(one(s) for _ in range(STREAMS)))
    ms = {"ttft_ms": pct(ttft, 50), "gap_mean_ms": sum(gaps) / len(gaps), "gap_p99_ms": pct(gaps, 99)}
    ms["last_ms"] = pct(total, 50)
    return {"streams": len(total), "events": min(counts), **{k: v * 1e3 for k, v in ms.items()}}


# --- report ----------------------------------------------------------------------------------

_SPECS = {  # section -> "header=result key:format, ..."
    "closed_loop": "req/s=rps:.0f, p50 ms=p50_ms:.2f, p99 ms=p99_ms:.2f, req/s vs direct=rps_vs_direct:.2f, "
    "p50 vs direct=p50_ms_vs_direct:.2f, p99 vs direct=p99_ms_vs_direct:.2f, errors=errors:d",
    "fixed_rate": "p50 ms=p50_ms:.2f, p99 ms=p99_ms:.2f, added p50 ms=added_p50_ms:+.2f, "
    "added p99 ms=added_p99_ms:+.2f, lag p99 ms=lag_p99_ms:.2f, requests=requests:d, errors=errors:d",
    "streaming": "streams=streams:d, events=events:d, ttft ms=ttft_ms:.2f, gap mean ms=gap_mean_ms:.3f, "
    "gap p99 ms=gap_p99_ms:.2f, last ms=last_ms:.1f, added/chunk ms=added_per_chunk_ms:+.3f",
}
COLUMNS = {
    sec: [(h, *kf.split(":", 1)) for h, kf in (c.split("=") for c in spec.split(", "))] for sec, spec in _SPECS.items()
}


def derive(res: dict[str, Any]) -> None:
    """Add the comparisons with the "direct" row of each section to the other rows."""
    for section in COLUMNS:
        direct = next((r for r in res[section] if r["target"] == "direct" and "error" not in r), None)
        for r in res[section] if direct else []:
            if "error" in r or direct is None:
                continue
            if section == "closed_loop":
                for k in ("rps", "p50_ms", "p99_ms"):
                    r[f"{k}_vs_direct"] = r[k] / direct[k] if direct[k] else math.nan
            elif section == "fixed_rate":
                r["added_p50_ms"], r["added_p99_ms"] = (r[k] - direct[k] for k in ("p50_ms", "p99_ms"))
            else:
                r["added_per_chunk_ms"] = (r["last_ms"] - direct["last_ms"]) / r["events"]


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(title: str, section: str, results: list[dict[str, Any]]) -> str:
    cols = COLUMNS[section]
    rows = [["target", *(h for h, _, _ in cols), "note"]]
    rows += [[r["target"], *(fmt(r.get(k), f) for _, k, f in cols), r.get("error", "")] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    return "\n".join([f"\n## {title}", lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def report(res: dict[str, Any]) -> str:
    cfg = res["config"]
    titles = {
        "closed_loop": f"closed loop: {cfg['connections']} connections, {cfg['duration_s']} s, {cfg['load']}",
        "fixed_rate": f"fixed rate: {FIXED_RATE:.0f} req/s for {cfg['duration_s']} s (Python open-loop schedule)",
        "streaming": f"streaming: {STREAMS} concurrent SSE streams x {STREAM_TOKENS} tokens, 5 ms apart",
    }
    head = ["# haproxy-ai bench: " + ", ".join(f"{k}={v}" for k, v in cfg.items())]
    head += [f"#   {k}: {v}" for k, v in res["tools"].items()]
    return "\n".join(head + [table(title, sec, res[sec]) for sec, title in titles.items()])


def versions() -> dict[str, str]:
    found: dict[str, str] = {"python": sys.version.split()[0], "aiohttp": aiohttp.__version__}
    for name, flag in (("wrk", "-v"), ("haproxy", "-v"), ("nginx", "-v")):
        if exe := tool(name):
            p = subprocess.run([exe, flag], capture_output=True, text=True, timeout=10, check=False)
            found[name] = ((p.stdout + p.stderr).strip().splitlines() or ["?"])[0]
        else:
            found[name] = "not installed"
    return found


def measure(results: list[dict[str, Any]], target: str, fn: Callable[..., dict[str, Any]], *args: Any) -> None:
    log(f"{target} ...")
    try:
        results.append({"target": target, **fn(*args)})
    except Exception as exc:  # one failed target must not cost the others' results
        log(f"{target} FAILED: {exc!r}")
        results.append({"target": target, "error": f"failed: {type(exc).__name__}"})


def run(args: argparse.Namespace, procs: Procs, tmp: Path, res: dict[str, Any]) -> None:
    wrk, haproxy = tool("wrk"), tool("haproxy")
    if not wrk:
        log("wrk not found: closed loop uses the Python aiohttp generator, which may be the bottleneck itself")
    if not haproxy and not args.skip_haproxy:
        log("haproxy not found: skipping the HAProxy comparison (apt-get install haproxy)")
    dur, conns, rounds = args.duration, args.connections, 1 if args.quick else 3
    clients = ["aiohttp", "httpx"] if args.client == "both" else [args.client]

    def load(url: str) -> dict[str, Any]:
        if wrk:
            wrk_load(wrk, url, conns, 1)  # warm-up
            return wrk_load(wrk, url, conns, dur)
        run_async(closed_loop, url, conns, 1)
        return run_async(closed_loop, url, conns, dur)

    def through_proxies(backend: str, *jobs: tuple[str, Callable[[str], dict[str, Any]]]) -> None:
        for client in clients:
            try:
                proc, url = start_proxy(procs, backend, client, args.balancer)
            except RuntimeError as exc:
                log(f"haproxy-ai ({client}) FAILED to start: {exc}")
                continue
            for section, job in jobs:
                measure(res[section], f"haproxy-ai ({client})", job, url)
            procs.stop(proc)

    def fixed(url: str) -> dict[str, Any]:
        return run_async(fixed_rate, url, FIXED_RATE, dur)

    def stream(url: str) -> dict[str, Any]:
        return run_async(streaming, f"{url}v1/chat/completions", rounds)

    backend, res["config"]["backend"] = start_fixed_backend(procs, tmp)
    measure(res["closed_loop"], "direct", load, backend)
    measure(res["fixed_rate"], "direct", fixed, backend)
    if haproxy and not args.skip_haproxy:
        try:
            proc, url = start_haproxy(procs, tmp, haproxy, backend)
            measure(res["closed_loop"], "haproxy (nbthread 1)", load, url)
            procs.stop(proc)
        except RuntimeError as exc:
            log(f"haproxy FAILED to start: {exc}")
    through_proxies(backend, ("closed_loop", load), ("fixed_rate", fixed))
    # The same, recording every request/response to a local spool (100% sampling, fsync 200ms).
    mirror = tmp / "mirror.yaml"
    mirror.write_text(f"mirror: {{enabled: true, spool_dir: '{tmp / 'spool'}'}}\n")
    try:
        proc, url = start_proxy(procs, backend, "aiohttp", args.balancer, mirror)
        measure(res["closed_loop"], "haproxy-ai (aiohttp) + mirror", load, url)
        measure(res["fixed_rate"], "haproxy-ai (aiohttp) + mirror", fixed, url)
        procs.stop(proc)
    except RuntimeError as exc:
        log(f"haproxy-ai with mirroring FAILED to start: {exc}")

    port = free_port()
    fake = f"http://127.0.0.1:{port}/"
    flags = f"fake-backend --port {port} --tokens {STREAM_TOKENS} --chunk-interval 0.005"
    procs.start("fake-backend", [*haproxy_ai_cmd(), *flags.split()], CPU_LOAD, f"{fake}health")
    measure(res["streaming"], "direct", stream, fake)
    through_proxies(fake, ("streaming", stream))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: still stop the children and report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run (default 10)")
    ap.add_argument("--connections", type=int, default=32, help="closed-loop connections (default 32)")
    ap.add_argument(
        "--client", choices=["aiohttp", "httpx", "both"], default="both", help="haproxy-ai upstream client(s)"
    )
    ap.add_argument("--balancer", choices=["p2c", "round_robin"], default="p2c")
    ap.add_argument("--skip-haproxy", action="store_true", help="do not run the HAProxy comparison")
    ap.add_argument("--quick", action="store_true", help="2 s runs, for smoke tests")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration = 2
    if CPU_LOAD is not None:
        os.sched_setaffinity(0, {CPU_LOAD})  # this script (and the Python generator) stays off the proxy's core
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = {
        "duration_s": args.duration,
        "connections": args.connections,
        "balancer": args.balancer,
        "load": "wrk" if tool("wrk") else "python aiohttp",
        "pinning": "taskset" if tool("taskset") and CPU_PROXY is not None else "none",
    }
    res: dict[str, Any] = {"config": cfg, "tools": versions(), "closed_loop": [], "fixed_rate": [], "streaming": []}
    tmp = Path(tempfile.mkdtemp(prefix="haproxy-ai-bench-"))
    procs = Procs(tmp)
    try:
        run(args, procs, tmp, res)
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
    except RuntimeError as exc:
        log(f"aborted: {exc}")
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    derive(res)
    print(report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["closed_loop"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

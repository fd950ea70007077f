"""Locust scenarios against haproxy-ai in front of simulated replicas, with pass/fail thresholds.

Run: ``python loadtests/run.py SCENARIO [--duration S] [--users N] [--spawn-rate R] [--out DIR]``

Each scenario starts simulated replicas (``haproxy-ai fake-backend``, one process each) and the
proxy (``haproxy-ai serve``, one process) on ephemeral 127.0.0.1 ports, runs locust headless as a
subprocess (it monkeypatches the standard library with gevent, so it never shares this process)
with ``loadtests/locustfile.py``, reads locust's CSV and checks thresholds on its ``Aggregated``
row. Reports land in ``--out`` (default ``loadtests/reports/``): ``<scenario>_stats.csv`` and the
other locust CSVs, ``<scenario>.html``, and ``logs/`` with every process's output.

Scenarios:

- ``steady``: 3 healthy replicas. Passes with no failed request and p99 within a bound.
- ``failover``: 3 replicas; mid-run one replica answers 500 (``/_fault`` mode ``error``), then
  resets connections before headers (mode ``reset``), then is healed (``ok``). Retries and passive
  ejection must hide all of it: passes only with zero failed requests, and only if the fault was
  actually hit (otherwise the run proved nothing).
- ``tail``: 3 replicas, one answering 10% of its requests after 1 s; run twice, hedging off then
  on (``hedge: {enabled: true, delay: p95}``). Writes ``tail.png`` (latency percentiles, off vs
  on). Passes when the tail showed with hedging off and hedging cut p99 at least in half.
- ``replay``: real traffic, replayed. First locust runs against a proxy that mirrors every
  request to a spool (or ``--source spool:DIR|postgres:DSN`` names an existing recording); then
  ``haproxy-ai replay`` sends the recorded requests to a fresh proxy at ``--users`` concurrency.
  Passes when every recorded request was replayed, none failed in transport, and at least 99%
  got the status they had when recorded.

``steady`` can also target a proxy that is already running: ``--proxy http://HOST:PORT``.

Exit status: 0 passed; 1 a threshold failed (each failed one is printed); 2 bad arguments;
4 the run could not happen (locust or
matplotlib missing, a process did not start, the proxy is unreachable, locust wrote no report).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
DEFAULT_OUT = HERE / "reports"
EXIT_OK, EXIT_THRESHOLD, EXIT_USAGE, EXIT_SETUP = 0, 1, 2, 4
# The percentiles locust writes as CSV columns that the tail plot shows.
PLOT_PERCENTILES = ("50%", "90%", "95%", "99%", "99.9%")
# Never through $http_proxy: every URL here is a loopback process this script started (or --proxy).
_URLOPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open
TAIL_LATENCY = 1.0  # seconds the slow 10% of the tail replica take


class SetupError(Exception):
    """The run could not take place (exit 4); the message is one line for the user."""


# --- thresholds over locust's CSV ------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    max_error_ratio: float = 0.0
    max_p99_ms: float | None = None
    min_requests: int = 1  # a run that sent nothing must not pass by having no errors


@dataclass(frozen=True)
class Summary:
    """What the ``Aggregated`` row of ``<prefix>_stats.csv`` says, in numbers."""

    requests: int  # HTTP requests only: TTFT rows are measurements of a request, not requests
    failures: int
    percentiles: dict[str, float]  # column ("50%", "99%", ...) -> ms; NaN when locust wrote N/A
    ttft: dict[str, float]  # the TTFT row's percentiles, empty if there is none
    ttft_count: int

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def p99(self) -> float:
        return self.percentiles.get("99%", math.nan)


def _ms(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan  # locust writes "N/A" for an entry without samples


def read_summary(prefix: Path) -> Summary:
    """Read ``<prefix>_stats.csv``; raises SetupError if locust did not write a usable one."""
    path = Path(f"{prefix}_stats.csv")
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise SetupError(f"no locust report at {path}: {exc.strerror}") from None
    total = next((r for r in rows if r.get("Name") == "Aggregated"), None)
    if total is None:
        raise SetupError(f"{path} has no Aggregated row")
    ttft_rows = [r for r in rows if r.get("Type") == "TTFT"]
    ttft_count = sum(int(r["Request Count"]) for r in ttft_rows)
    pct_columns = [c for c in total if c.endswith("%")]
    return Summary(
        # Aggregated counts every entry, TTFT samples included; they never fail, and counting them
        # as requests would dilute the error ratio.
        requests=int(total["Request Count"]) - ttft_count,
        failures=int(total["Failure Count"]),
        percentiles={c: _ms(total[c]) for c in pct_columns},
        ttft={c: _ms(ttft_rows[0][c]) for c in pct_columns} if len(ttft_rows) == 1 else {},
        ttft_count=ttft_count,
    )


def evaluate(summary: Summary, limits: Thresholds) -> list[str]:
    """The thresholds this run failed, one readable line each (empty = passed)."""
    failed = []
    if summary.requests < limits.min_requests:
        failed.append(f"requests {summary.requests} < {limits.min_requests}")
    if summary.error_ratio > limits.max_error_ratio:
        ratio = f"{summary.error_ratio:.4f} ({summary.failures}/{summary.requests})"
        failed.append(f"error ratio {ratio} > {limits.max_error_ratio:g}")
    if limits.max_p99_ms is not None and not summary.p99 <= limits.max_p99_ms:  # NaN fails too
        failed.append(f"p99 {summary.p99:g} ms > {limits.max_p99_ms:g} ms")
    return failed


def describe(label: str, s: Summary) -> str:
    pct = s.percentiles
    ttft = f", TTFT p50 {s.ttft.get('50%', math.nan):g} p99 {s.ttft.get('99%', math.nan):g} ms" if s.ttft else ""
    return (
        f"{label}: {s.requests} requests, {s.failures} failed ({s.error_ratio:.2%}), "
        f"p50 {pct.get('50%', math.nan):g} p90 {pct.get('90%', math.nan):g} p99 {s.p99:g} "
        f"p99.9 {pct.get('99.9%', math.nan):g} ms{ttft}"
    )


def verdict(label: str, prefix: Path, limits: Thresholds) -> int:
    """Print the summary and each failed threshold of one locust run; EXIT_OK or EXIT_THRESHOLD."""
    summary = read_summary(prefix)
    print(describe(label, summary), flush=True)
    failed = evaluate(summary, limits)
    for line in failed:
        print(f"FAIL {label}: {line}", flush=True)
    return EXIT_THRESHOLD if failed else EXIT_OK


# --- processes -------------------------------------------------------------------------------


def haproxy_ai_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "haproxy-ai"
    return [str(exe)] if os.access(exe, os.X_OK) else [sys.executable, "-m", "haproxy_ai"]


def find_locust() -> str | None:
    # The locust of this interpreter's environment first: the one on PATH may belong to another.
    return shutil.which("locust", path=str(Path(sys.executable).parent)) or shutil.which("locust")


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    """Status and body; an HTTP error status is an answer too. OSError if nothing answered."""
    try:
        with _URLOPEN(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post_json(url: str, body: dict[str, Any], timeout: float = 3.0) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with _URLOPEN(req, timeout=timeout) as resp:
        resp.read()


def _clean_env() -> dict[str, str]:
    # The proxy reads HAPROXY_AI_* from its environment; one left in the caller's shell (a token,
    # a balancer) would change what a scenario measures.
    return {k: v for k, v in os.environ.items() if not k.startswith("HAPROXY_AI_")}


class Procs:
    """Children of this script. Each writes to ``<logs>/<name>.log``; stop() sends SIGTERM, then
    SIGKILL after a grace period, and only ever to a process started here (by its PID)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.live: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session: a Ctrl-C at the terminal reaches only this script, which then
                # stops the children in order instead of having them die mid-report.
                start_new_session=True,
                env={**_clean_env(), "HAPROXY_AI_LOG_LEVEL": "warning", **(env or {})},
            )
        self.live.append(proc)
        return proc

    def start(
        self, name: str, args: list[str], patterns: Sequence[str], timeout: float = 30.0
    ) -> tuple[subprocess.Popen[bytes], list[str]]:
        """Start ``haproxy-ai ARGS`` and wait for its log to print each pattern; returns the process
        and group 1 of each match (the URLs it picked: the ports are ephemeral, so the log is the
        only source)."""
        proc = self.spawn(name, [*haproxy_ai_cmd(), *args])
        path = self.logs / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = path.read_text(errors="replace")
            found = [re.search(p, text) for p in patterns]
            if all(found):
                return proc, [m.group(1) for m in found if m]
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        self.stop(proc)
        raise SetupError(f"{name} did not start (exit {proc.returncode}): {tail[0]}")

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        while self.live:
            self.stop(self.live[-1])


@dataclass
class Replica:
    name: str
    url: str

    def fault(self, mode: str, **params: Any) -> None:
        http_post_json(f"{self.url}/_fault", {"mode": mode, **params})

    def stats(self) -> dict[str, int]:
        status, body = http_get(f"{self.url}/_stats")
        data = json.loads(body) if status == 200 else {}
        return {k: v for k, v in data.items() if isinstance(v, int)}


@dataclass
class Proxy:
    url: str
    admin: str | None  # None for an external --proxy

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels`` (0 when absent)."""
        if self.admin is None:
            return math.nan
        _, body = http_get(f"{self.admin}/metrics")
        total = 0.0
        for m in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", body.decode(), re.M):
            have = dict(re.findall(r'(\w+)="([^"]*)"', m[1] or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m[2])
        return total


@dataclass
class Run:
    """One invocation: where the reports go, the children, and the locust command line."""

    scenario: str
    out: Path
    duration: int
    users: int
    spawn_rate: float
    locust: str
    procs: Procs = field(init=False)

    def __post_init__(self) -> None:
        self.procs = Procs(self.out / "logs")

    def replicas(self, flags: list[list[str]]) -> list[Replica]:
        """One fake-backend per entry of ``flags`` (extra flags for that replica), named r0, r1, ..."""
        started = []
        for i, extra in enumerate(flags):
            name = f"r{i}"
            args = ["fake-backend", "--port", "0", "--seed", str(i), "--name", name, *extra]
            _, (url,) = self.procs.start(f"{self.scenario}-{name}", args, [r"serving (http://\S+)"])
            started.append(Replica(name, url))
        return started

    def proxy(self, label: str, replicas: list[Replica], config: str = "") -> tuple[Proxy, subprocess.Popen[bytes]]:
        """Start ``haproxy-ai serve`` in front of ``replicas`` (with YAML ``config`` if given), ready."""
        args = ["serve", "--port", "0", "--admin-port", "0"]
        if config:
            path = self.out / "logs" / f"{label}.yaml"
            path.write_text(config)
            args += ["--config", str(path)]
        for r in replicas:
            args += ["--backend", f"{r.url},name={r.name}"]
        proc, (url, admin) = self.procs.start(label, args, [r"proxying (http://\S+)", r"admin on (http://\S+)"])
        wait_ready(f"{admin}/readyz")
        return Proxy(url, admin), proc

    def locust_run(self, label: str, host: str, wait: str) -> Path:
        """Run locust headless for ``duration`` seconds against ``host`` with think time ``wait``
        (LOADTEST_WAIT, unless the caller set it); returns the CSV prefix."""
        prefix = self.out / label
        for old in self.out.glob(f"{label}_*.csv"):
            old.unlink()  # a stale CSV from an earlier run must not pass for this one's
        cmd = [
            self.locust,
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            str(self.users),
            "-r",
            f"{self.spawn_rate:g}",
            "-t",
            f"{self.duration}s",
            "--host",
            host,
            "--csv",
            str(prefix),
            "--html",
            str(self.out / f"{label}.html"),
            "--only-summary",
            # In-flight requests may finish when time is up, so the last ones count as what they are.
            "--stop-timeout",
            "5",
        ]
        proc = self.procs.spawn(f"{label}-locust", cmd, env={"LOADTEST_WAIT": os.environ.get("LOADTEST_WAIT", wait)})
        try:
            # Generous: locust needs a few seconds to start and to write its reports.
            proc.wait(self.duration + 60)
        except subprocess.TimeoutExpired:
            self.procs.stop(proc)
            raise SetupError(f"locust did not finish within {self.duration + 60} s") from None
        self.procs.stop(proc)
        # Exit 1 only means "some request failed": the thresholds judge that. Anything else is a crash.
        if proc.returncode not in (0, 1) or not Path(f"{prefix}_stats.csv").exists():
            lines = (self.out / "logs" / f"{label}-locust.log").read_text(errors="replace").strip().splitlines()
            raise SetupError(f"locust failed (exit {proc.returncode}): {(lines or ['(no output)'])[-1]}")
        return prefix


def wait_ready(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, _ = http_get(url, timeout=1)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise SetupError(f"{url} not ready after {timeout:g} s ({last})")


def check_reachable(url: str) -> None:
    """One request to an existing proxy before minutes of load are spent on a wrong address."""
    try:
        http_get(f"{url.rstrip('/')}/v1/models", timeout=5)
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        raise SetupError(f"proxy {url} is unreachable: {reason}") from None


# --- scenarios -------------------------------------------------------------------------------

# Replicas answer like a small model: ~20 ms to the first token, then 16 tokens 2 ms apart.
REPLICA = ["--latency", "0.02", "--jitter", "0.005", "--chunk-interval", "0.002"]
STEADY = Thresholds(max_error_ratio=0.0, max_p99_ms=500.0)
FAILOVER = Thresholds(max_error_ratio=0.0)
TAIL = Thresholds(max_error_ratio=0.0)
TAIL_MIN_GAIN = 2.0  # hedging must divide p99 by at least this


def steady(run: Run, external: str | None) -> int:
    if external:
        check_reachable(external)
        host = external
    else:
        proxy, _ = run.proxy("steady-proxy", run.replicas([REPLICA] * 3))
        host = proxy.url
        check_reachable(host)
    return verdict("steady", run.locust_run("steady", host, wait="0.05,0.2"), STEADY)


def _fault_schedule(run: Run, victim: Replica, log_lines: list[str]) -> None:
    """Break ``victim`` at 20% of the run (500s), make it reset connections at 40%, heal it at 65%.
    Times count from locust's start; its users arrive within about a second of it."""
    steps = [(0.2, "error", {"status": 500}), (0.4, "reset", {}), (0.65, "ok", {})]
    t0 = time.monotonic()
    for at, mode, params in steps:
        time.sleep(max(0.0, t0 + at * run.duration - time.monotonic()))
        try:
            victim.fault(mode, **params)
            log_lines.append(f"{time.monotonic() - t0:5.1f} s  {victim.name} -> {mode}")
        except OSError as exc:
            log_lines.append(f"{time.monotonic() - t0:5.1f} s  {victim.name} -> {mode} FAILED: {exc}")


def failover(run: Run) -> int:
    replicas = run.replicas([REPLICA] * 3)
    # A short ejection, so the broken replica comes back while still broken (and is ejected again,
    # for longer) and comes back healed, all within a short run.
    proxy, _ = run.proxy("failover-proxy", replicas, "health: {passive: {base_ejection_time: 2s}}\n")
    victim = replicas[1]
    timeline: list[str] = []
    thread = threading.Thread(target=_fault_schedule, args=(run, victim, timeline), daemon=True)
    thread.start()
    try:
        prefix = run.locust_run("failover", proxy.url, wait="0.05,0.2")
    finally:
        thread.join(run.duration)
        with contextlib.suppress(OSError):
            victim.fault("ok")  # whatever happened, leave nothing broken behind
    for line in timeline:
        print(f"failover: {line}", flush=True)
    hit = victim.stats()
    retries = proxy.metric("haproxy_ai_retries_total")
    ejections = proxy.metric("haproxy_ai_ejections_total", backend=victim.name)
    print(
        f"failover: {victim.name} answered {hit.get('errors', 0)} x 500 and reset {hit.get('resets', 0)} "
        f"connections; proxy retried {retries:g}, ejected {victim.name} {ejections:g} times; "
        f"{victim.name} completed {hit.get('completed', 0)} requests in all",
        flush=True,
    )
    code = verdict("failover", prefix, FAILOVER)
    if hit.get("errors", 0) + hit.get("resets", 0) == 0:
        print(f"FAIL failover: the fault on {victim.name} was never hit, so the run proved nothing", flush=True)
        code = EXIT_THRESHOLD
    return code


def tail(run: Run) -> int:
    slow = ["--tail-fraction", "0.1", "--tail-latency", f"{TAIL_LATENCY:g}"]
    # Fast streams (no pause between tokens) keep the replicas' CPU down, so that the one slow
    # replica, not a saturated box, makes the tail.
    fast = ["--latency", "0.01", "--jitter", "0.002"]
    replicas = run.replicas([fast + slow, fast, fast])
    results: dict[str, tuple[Summary, float]] = {}
    code = EXIT_OK
    for label, enabled in (("off", "false"), ("on", "true")):
        # round_robin: the slow replica keeps its third of the traffic in both runs (p2c would
        # learn to avoid it, and the comparison would measure the balancer, not hedging).
        # Passive detection off and no slow start, as in loadtests/tail.py: only hedging differs.
        config = (
            f"hedge: {{enabled: {enabled}, delay: p95}}\n"
            "balancer: {type: round_robin}\n"
            "health: {passive: {enabled: false}, slow_start: 0s}\n"
        )
        proxy, proc = run.proxy(f"tail-{label}-proxy", replicas, config)
        try:
            prefix = run.locust_run(f"tail-{label}", proxy.url, wait="0,0.02")
            attempts = proxy.metric("haproxy_ai_upstream_attempts_total")
        finally:
            run.procs.stop(proc)
        summary = read_summary(prefix)
        extra = attempts / summary.requests - 1 if summary.requests else math.nan
        results[label] = (summary, extra)
        code = max(code, verdict(f"tail hedging {label}", prefix, TAIL))
        print(f"tail hedging {label}: {extra:+.1%} upstream attempts over client requests", flush=True)
    off, on = results["off"][0], results["on"][0]
    plot = run.out / "tail.png"
    plot_tail(plot, results)
    print(f"tail: plot {plot}", flush=True)
    if not off.p99 >= 0.8 * TAIL_LATENCY * 1000:
        print(f"FAIL tail: p99 with hedging off is {off.p99:g} ms: the {TAIL_LATENCY:g} s tail did not show")
        code = EXIT_THRESHOLD
    if not on.p99 * TAIL_MIN_GAIN <= off.p99:
        print(f"FAIL tail: p99 with hedging on {on.p99:g} ms is not under 1/{TAIL_MIN_GAIN:g} of off {off.p99:g} ms")
        code = EXIT_THRESHOLD
    return code


REPLAY_MIN_SAME = 0.99  # share of replayed requests that must get the status they were recorded with


def replay(run: Run, source: str | None) -> int:
    replicas = run.replicas([REPLICA] * 3)
    recorded: int | None = None
    if source is None:
        spool = run.out / "replay-spool"
        shutil.rmtree(spool, ignore_errors=True)  # this run's recording only
        config = f"mirror: {{enabled: true, spool_dir: '{spool}', fsync_interval: 50ms}}\n"
        proxy, proc = run.proxy("replay-record-proxy", replicas, config)
        prefix = run.locust_run("replay-record", proxy.url, wait="0.05,0.2")
        recorded = int(proxy.metric("haproxy_ai_mirror_records_spooled_total"))
        run.procs.stop(proc)  # SIGTERM: the queue is written and synced before it exits
        code = verdict("replay recording", prefix, STEADY)
        if code != EXIT_OK:
            return code
        source = f"spool:{spool}"
    target, _ = run.proxy("replay-proxy", replicas)
    cmd = [*haproxy_ai_cmd(), "replay", "--source", source, "--target", target.url]
    cmd += ["--concurrency", str(run.users), "--json"]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=max(run.duration * 10, 300))
    (run.out / "replay.json").write_text(done.stdout)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise SetupError(f"haproxy-ai replay exited {done.returncode}: {done.stderr.strip()[-300:]}")
    summary = json.loads(done.stdout)
    sent, same = summary["sent"], summary["same_status"]
    errors = sum(summary["errors"].values())
    latency = summary.get("latency_ms") or {}
    print(
        f"replay: {summary['records']} records from {source}: sent {sent} in {time.monotonic() - started:.1f} s, "
        f"skipped {summary['skipped'] or 0}, same status {same}, different {summary['status_changes'] or 0}, "
        f"transport errors {errors}; latency ms {latency}",
        flush=True,
    )
    code = EXIT_OK
    if recorded is not None and summary["records"] != recorded:
        print(f"FAIL replay: {summary['records']} records read, but the recording proxy spooled {recorded}")
        code = EXIT_THRESHOLD
    if sent == 0 or sent + sum(summary["skipped"].values()) != summary["records"]:
        print(f"FAIL replay: sent {sent} of {summary['records']} records")
        code = EXIT_THRESHOLD
    if errors:
        print(f"FAIL replay: {errors} transport errors: {summary['errors']}")
        code = EXIT_THRESHOLD
    if sent and same < REPLAY_MIN_SAME * sent:
        print(f"FAIL replay: only {same} of {sent} replayed requests got their recorded status")
        code = EXIT_THRESHOLD
    return code


def plot_tail(path: Path, results: dict[str, tuple[Summary, float]]) -> None:
    """Latency percentiles of the Aggregated rows, hedging off vs on, on a log scale (the two
    curves differ by more than an order of magnitude at p99)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI or over ssh
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    xs = list(range(len(PLOT_PERCENTILES)))
    # Off above its points, on below: at p50-p95 the two runs have nearly the same values.
    styles = {"off": ("tab:red", "hedging off", 8), "on": ("tab:blue", "hedging on, delay p95", -16)}
    seen: list[float] = []
    for label, (summary, extra) in results.items():
        color, name, dy = styles[label]
        ys = [summary.percentiles.get(p, math.nan) for p in PLOT_PERCENTILES]
        seen += [y for y in ys if not math.isnan(y)]
        more = f", {extra:+.1%} upstream" if not math.isnan(extra) else ""
        ax.plot(xs, ys, marker="o", color=color, linewidth=2, label=f"{name} ({summary.requests} req{more})")
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:g} ms", (x, y), textcoords="offset points", xytext=(0, dy), ha="center", color=color)
    ax.set_yscale("log")
    if seen:
        ax.set_ylim(min(seen) / 2, max(seen) * 5)  # room for the labels above and below the points
    ax.set_xticks(xs, [f"p{p.rstrip('%')}" for p in PLOT_PERCENTILES])
    ax.set_xlabel("percentile (locust, all requests and TTFT samples)")
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_title(f"haproxy-ai hedging: 1 of 3 replicas answers 10% of its requests after {TAIL_LATENCY:g} s")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlim(-0.5, len(xs) - 0.5)  # the value labels of the end points stay inside
    ax.legend(loc="upper left")  # above the fast percentiles, where no curve goes
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- command line ----------------------------------------------------------------------------

SCENARIOS: dict[str, tuple[Callable[..., int], int, int]] = {  # name -> runner, default seconds, users
    "steady": (steady, 30, 8),
    "failover": (failover, 30, 8),
    "tail": (tail, 20, 16),
    "replay": (replay, 15, 8),
}


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: scripts and CI logs grep for it.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value" messages
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = Parser(prog="run.py", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("scenario", choices=list(SCENARIOS), help="what to run")
    ap.add_argument("--duration", type=_positive(int), help="seconds of load per locust run (default: per scenario)")
    ap.add_argument("--users", type=_positive(int), help="concurrent locust users (default: per scenario)")
    ap.add_argument("--spawn-rate", type=_positive(float), help="users started per second (default: all in 1 s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report directory (default {DEFAULT_OUT})")
    ap.add_argument("--proxy", metavar="URL", help="steady only: load this running proxy instead of starting one")
    ap.add_argument(
        "--source", metavar="SRC", help="replay only: an existing recording (spool:DIR or postgres:DSN) to replay"
    )
    return ap.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.source and args.scenario != "replay":
        print(f"run.py: error: --source is for replay only, not {args.scenario}", file=sys.stderr)
        return EXIT_USAGE
    if args.proxy and args.scenario != "steady":
        print(f"run.py: error: --proxy is for steady only ({args.scenario} starts its own replicas)", file=sys.stderr)
        return EXIT_USAGE
    if args.proxy and not re.fullmatch(r"https?://[^/\s]+/?", args.proxy):
        print(f"run.py: error: --proxy must look like http://HOST:PORT, got {args.proxy!r}", file=sys.stderr)
        return EXIT_USAGE
    locust = find_locust()
    if locust is None:
        print("run.py: locust is not installed (pip install -e '.[load]')", file=sys.stderr)
        return EXIT_SETUP
    if args.scenario == "tail":
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("run.py: the tail scenario needs matplotlib (pip install -e '.[load]')", file=sys.stderr)
            return EXIT_SETUP
    runner, duration, users = SCENARIOS[args.scenario]
    users = args.users or users
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"run.py: cannot create {out}: {exc.strerror}", file=sys.stderr)
        return EXIT_SETUP
    run = Run(args.scenario, out, args.duration or duration, users, args.spawn_rate or float(users), locust)
    # SIGTERM (CI cancelling the job) must still stop the children; only the main thread may set it.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        if args.scenario == "steady":
            return runner(run, args.proxy)
        if args.scenario == "replay":
            return runner(run, args.source)
        return runner(run)
    except SetupError as exc:
        print(f"run.py: {args.scenario}: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        print(f"run.py: {args.scenario}: interrupted", file=sys.stderr)
        return 130
    finally:
        run.procs.stop_all()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())

"""What mirroring costs: haproxy-ai without and with ``mirror`` (100% sampling), A/B interleaved.

Run: ``python loadtests/mirror_cost.py [--rounds 8] [--duration 3] [--sample-rate 1.0] [--together] [--aa]``
(needs wrk; nginx for the backend, else the same tiny uvloop server bench.py uses).

Both proxies run the whole time, each pinned to CPU 0 (one process, as in bench.py); the backend
and wrk (32 connections) share CPU 1. Rounds alternate between the two, so drift of a shared VM
hits both alike. Per run: req/s from wrk, and the proxy's own CPU time (utime + stime of the
process, every thread included: encoding, the spool thread, fsync) divided by the requests it
served. CPU per request is the steadier number on a noisy VM; the cost is reported on both as
medians over the rounds. ``--together`` loads both proxies at the same time instead: they split
CPU 0, so a slow spell of the VM hits both within the same seconds, and the lost throughput of
the mirroring one is its cost at an equal share of the core. ``--aa`` turns mirroring off in
both: the "cost" it reports is the method's own noise.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import CPU_LOAD, CPU_PROXY, Procs, fixed_backend_scratch, free_port, haproxy_ai_cmd, pin, tool


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(procs: Procs, backend: str, name: str, config: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    port, admin = free_port(), free_port()
    cmd = [*haproxy_ai_cmd(), "serve", "--backend", backend.rstrip("/"), "--port", str(port)]
    cmd += ["--admin-port", str(admin), *(["--config", str(config)] if config else [])]
    proc = procs.start(name, cmd, CPU_PROXY, f"http://127.0.0.1:{admin}/readyz")
    return proc, f"http://127.0.0.1:{port}/"


def load(wrk: str, url: str, duration: int, script: Path | None = None) -> tuple[float, int]:
    cmd = pin([wrk, "-t1", "-c32", f"-d{duration}s", *(["-s", str(script)] if script else []), url], CPU_LOAD)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=False).stdout
    rps, count = re.search(r"Requests/sec:\s+([\d.]+)", out), re.search(r"(\d+) requests in", out)
    if not rps or not count:
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    return float(rps[1]), int(count[1])


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1, with a one-line error otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def measure_rounds(
    wrk: str,
    targets: dict[str, tuple[subprocess.Popen[bytes], str]],
    rounds: int,
    duration: int,
    script: Path | None = None,
    label: str = "",
) -> dict[str, list[tuple[float, float]]]:
    """Warm each target up, then run ``rounds`` rounds that load each one in turn (so a shared
    VM's drift hits them alike): per target and round, (req/s, proxy CPU microseconds/request)."""
    for _, url in targets.values():
        load(wrk, url, 1, script)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    width = max(len(name) for name in targets)
    for i in range(rounds):
        for name, (proc, url) in targets.items():
            before = cpu_seconds(proc.pid)
            rps, count = load(wrk, url, duration, script)
            per = (cpu_seconds(proc.pid) - before) / count * 1e6
            results[name].append((rps, per))
            print(f"round {i + 1} {label}{name:{width}}: {rps:8.0f} req/s  {per:6.1f} us CPU/request", flush=True)
    return results


def measure_together(
    wrk: str, targets: dict[str, tuple[subprocess.Popen[bytes], str]], rounds: int, duration: int
) -> list[tuple[float, float]]:
    """Load both proxies at the same time, ``rounds`` times: they share CPU 0, so the scheduler
    gives each half of it and whatever slows the VM down slows both alike. Per round: (lost
    throughput of "on" against "off", its added CPU per request)."""
    names = list(targets)
    out = []
    for i in range(rounds + 1):  # round 0 warms up
        before = [cpu_seconds(targets[n][0].pid) for n in names]
        cmds = [pin([wrk, "-t1", "-c32", f"-d{duration}s", targets[n][1]], CPU_LOAD) for n in names]
        runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE) for cmd in cmds]
        texts = [r.communicate(timeout=duration + 30)[0].decode() for r in runs]
        counts = [int(m[1]) if (m := re.search(r"(\d+) requests in", t)) else 0 for t in texts]
        if not all(counts):
            raise RuntimeError(f"could not parse wrk output:\n{texts}")
        per = [(cpu_seconds(targets[n][0].pid) - b) / c * 1e6 for n, b, c in zip(names, before, counts, strict=True)]
        if i == 0:
            continue
        out.append((1 - counts[1] / counts[0], per[1] / per[0] - 1))
        print(
            f"round {i} together: off {counts[0] / duration:6.0f} req/s {per[0]:6.1f} us CPU/request, on"
            f" {counts[1] / duration:6.0f} req/s {per[1]:6.1f} us CPU/request: cost {out[-1][0]:+.1%}",
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=positive_int, default=8, help="A/B rounds (default 8)")
    ap.add_argument("--duration", type=positive_int, default=3, help="seconds per run (default 3)")
    ap.add_argument("--sample-rate", type=float, default=1.0, help="mirror.sample_rate (default 1.0)")
    ap.add_argument(
        "--together",
        action="store_true",
        help="load both proxies at once on the shared core instead of in turn (steadier on a noisy VM)",
    )
    ap.add_argument(
        "--aa",
        action="store_true",
        help="mirroring off in both proxies: what the method reads when there is nothing to measure (its noise)",
    )
    args = ap.parse_args(argv)
    if not 0 < args.sample_rate <= 1:
        ap.error(f"--sample-rate must be in (0, 1], got {args.sample_rate:g}")
    wrk = tool("wrk")
    if not wrk:
        print("mirror_cost.py: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    with fixed_backend_scratch("haproxy-ai-mirror-cost-") as (procs, tmp, backend):
        config = tmp / "mirror.yaml"
        config.write_text(f"mirror: {{enabled: true, spool_dir: '{tmp / 'spool'}', sample_rate: {args.sample_rate}}}\n")
        targets = {
            "off": start(procs, backend, "proxy-off", None),
            "on": start(procs, backend, "proxy-on", None if args.aa else config),
        }
        if args.together:
            paired = measure_together(wrk, targets, args.rounds, args.duration)
            throughput = statistics.median(t for t, _ in paired)
            cpu_cost = statistics.median(c for _, c in paired)
            print(
                f"\ncost (both loaded at once, medians of {args.rounds} rounds): {throughput:+.1%} throughput,"
                f" {cpu_cost:+.1%} CPU per request at sample_rate {args.sample_rate:g}"
            )
            return 0
        results = measure_rounds(wrk, targets, args.rounds, args.duration, label="mirror ")
        spooled = sum(1 for p in (tmp / "spool").glob("*.jsonl*") for _ in p.open("rb"))
        rps = {k: statistics.median(r for r, _ in v) for k, v in results.items()}
        cpu = {k: statistics.median(c for _, c in v) for k, v in results.items()}
        print(f"\nmirror off: {rps['off']:.0f} req/s, {cpu['off']:.1f} us CPU/request (medians of {args.rounds})")
        print(f"mirror on : {rps['on']:.0f} req/s, {cpu['on']:.1f} us CPU/request; {spooled} records spooled")
        # Each round's on/off pair ran back to back: the median of the paired ratios is the
        # estimate least moved by the VM's drift between rounds.
        paired_rps = statistics.median(
            1 - on[0] / off[0] for off, on in zip(results["off"], results["on"], strict=True)
        )
        paired_cpu = statistics.median(
            on[1] / off[1] - 1 for off, on in zip(results["off"], results["on"], strict=True)
        )
        print(
            f"cost: {1 - rps['on'] / rps['off']:+.1%} throughput, {cpu['on'] / cpu['off'] - 1:+.1%} CPU per request"
            f" at sample_rate {args.sample_rate:g} (medians); paired per round: {paired_rps:+.1%} throughput,"
            f" {paired_cpu:+.1%} CPU per request"
        )
        return 0


if __name__ == "__main__":
    raise SystemExit(main())

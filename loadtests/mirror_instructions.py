"""What mirroring costs in CPU instructions per request: deterministic, where req/s on a VM is not.

Run: ``python loadtests/mirror_instructions.py [--requests 2000]`` (needs valgrind; nginx for the
backend, else the same tiny uvloop server bench.py uses). Takes about two minutes.

Each proxy (mirroring off, then on at 100% sampling) runs under ``valgrind --tool=cachegrind``
twice: serving ``--requests`` GETs over 32 keep-alive connections, then idle for as long as
that took; the difference of their instruction counts divided by the requests is the proxy's
user-space work per request, every thread included. Active health checks are off and periodic
work (the spool's fsync tick) is in both runs, so the count does not depend on how long the
slowed-down run takes. Kernel time (sockets, fsync) is not counted, so the share
this reports is higher than the share of throughput; its use is comparing two versions of the
code within a fraction of a percent, which timing runs on a shared VM cannot.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import fixed_backend_scratch, free_port, haproxy_ai_cmd, tool
from mirror_cost import positive_int

CONNECTIONS = 32


async def send_requests(port: int, count: int) -> None:
    """``count`` GETs like wrk's over CONNECTIONS keep-alive connections."""
    left = count
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: wrk\r\n\r\n".encode()

    async def connection() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left > 0:
                left -= 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if length is None:
                    raise RuntimeError(f"unexpected response: {head!r}")
                await reader.readexactly(int(length[1]))
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(connection() for _ in range(CONNECTIONS))), timeout=600)


def instructions(
    valgrind: str, tmp: Path, backend: str, mirror: bool, count: int, idle: float = 0.0
) -> tuple[int, float]:
    """Instructions the proxy executed from start to exit, serving ``count`` requests (or idling
    ``idle`` seconds), and the seconds between ready and exit."""
    port, admin = free_port(), free_port()
    name = f"{'on' if mirror else 'off'}-{count}"
    config = tmp / f"{name}.yaml"
    text = "health: {active: {enabled: false}}\n"
    if mirror:
        text += f"mirror: {{enabled: true, spool_dir: '{tmp / ('spool-' + name)}'}}\n"
    config.write_text(text)
    out = tmp / f"cachegrind-{name}.out"
    cmd = [valgrind, "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}", *haproxy_ai_cmd()]
    cmd += ["serve", "--backend", backend.rstrip("/"), "--port", str(port), "--admin-port", str(admin)]
    with open(tmp / f"{name}.log", "wb") as log:
        proc = subprocess.Popen([*cmd, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"proxy did not start:\n{(tmp / f'{name}.log').read_text()[-1500:]}") from None
                time.sleep(0.5)
        ready = time.monotonic()
        if count:
            asyncio.run(send_requests(port, count))
        else:
            time.sleep(idle)
        elapsed = time.monotonic() - ready
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    summary = re.search(r"^summary: (\d+)", out.read_text(), re.M)
    if summary is None:
        raise RuntimeError(f"no cachegrind summary in {out}")
    return int(summary[1]), elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--requests", type=positive_int, default=2000, help="requests per measured run (default 2000)")
    args = ap.parse_args(argv)
    valgrind = tool("valgrind")
    if not valgrind:
        print("mirror_instructions.py: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    with fixed_backend_scratch("haproxy-ai-mirror-instructions-") as (_, tmp, backend):
        per = {}
        for mirror in (False, True):
            busy, elapsed = instructions(valgrind, tmp, backend, mirror, args.requests)
            # The baseline idles as long as the busy run took: periodic work (the spool's fsync
            # tick) is paid per second, not per request, and under valgrind seconds are long.
            idle, _ = instructions(valgrind, tmp, backend, mirror, 0, idle=elapsed)
            per[mirror] = (busy - idle) / args.requests
            print(f"mirror {'on ' if mirror else 'off'}: {per[mirror]:,.0f} instructions per request", flush=True)
        added = per[True] - per[False]
        print(f"mirroring adds {added:,.0f} instructions per request (+{added / per[False]:.1%})")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The locust load tests (loadtests/run.py and loadtests/locustfile.py).

Two short real runs (steady, failover: ~13 s of locust in all), the bad-input paths, and the
threshold evaluation on synthetic CSVs. locust is only ever run as a subprocess: importing it
would monkeypatch this test process with gevent.
"""

from __future__ import annotations

import csv
import http.server
import importlib.util
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "loadtests" / "run.py"


def _load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("loadtests_run", RUN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


run = _load_run()
needs_locust = pytest.mark.skipif(run.find_locust() is None, reason="locust not installed (pip install -e '.[load]')")


def _run(*args: str | Path, timeout: float = 50) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


# --- real runs -------------------------------------------------------------------------------


@needs_locust
def test_steady_smoke_passes_and_writes_reports(tmp_path: Path) -> None:
    proc = _run("steady", "--duration", "5", "--users", "4", "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "steady.html").stat().st_size > 0
    rows = _rows(tmp_path / "steady_stats.csv")
    total = rows[("", "Aggregated")]
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0
    # Both tasks ran, and the streamed one reported its time to first token as its own entry.
    assert int(rows[("POST", "chat")]["Request Count"]) > 0
    assert int(rows[("POST", "chat [stream]")]["Request Count"]) > 0
    assert int(rows[("TTFT", "chat [stream]")]["Request Count"]) > 0
    assert "steady: " in proc.stdout and "FAIL" not in proc.stdout


@needs_locust
def test_failover_is_hidden_from_clients(tmp_path: Path) -> None:
    # One replica answers 500, then resets connections, then heals: zero failed requests, and
    # run.py itself fails the run if the fault was never hit.
    proc = _run("failover", "--duration", "8", "--users", "4", "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "r1 -> error" in proc.stdout and "r1 -> ok" in proc.stdout
    assert int(_rows(tmp_path / "failover_stats.csv")[("", "Aggregated")]["Failure Count"]) == 0


# --- bad input -------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_unknown_scenario_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = _run("nosuch", "--out", tmp_path, timeout=20)
    assert proc.returncode == 2
    assert "invalid choice: 'nosuch'" in _one_line(proc.stderr)
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


@needs_locust
def test_replay_records_real_traffic_and_replays_it(tmp_path: Path) -> None:
    proc = _run("replay", "--duration", "4", "--users", "4", "--out", tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "replay.json").read_text())
    assert summary["sent"] > 10 and summary["errors"] == {}
    assert summary["sent"] == summary["records"] and summary["same_status"] == summary["sent"]
    assert "replay: " in proc.stdout


def test_source_is_for_replay_only(tmp_path: Path) -> None:
    proc = _run("steady", "--source", "spool:/nonexistent", "--out", tmp_path, timeout=20)
    assert proc.returncode == 2
    assert "--source is for replay only" in _one_line(proc.stderr)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on return: nothing listens there


@needs_locust
def test_unreachable_proxy_is_one_line_and_exit_4(tmp_path: Path) -> None:
    proc = _run("steady", "--proxy", f"http://127.0.0.1:{_closed_port()}", "--out", tmp_path, timeout=20)
    assert proc.returncode == run.EXIT_SETUP == 4
    assert "unreachable" in _one_line(proc.stderr)


def test_missing_locust_is_one_line_and_exit_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(run.shutil, "which", lambda *a, **k: None)
    assert run.main(["steady", "--out", str(tmp_path)]) == run.EXIT_SETUP
    assert "locust is not installed" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("args", [["steady", "--duration", "0"], ["failover", "--proxy", "http://127.0.0.1:1"]])
def test_bad_options_exit_2(args: list[str], tmp_path: Path) -> None:
    proc = _run(*args, "--out", tmp_path, timeout=20)
    assert proc.returncode == 2
    _one_line(proc.stderr)


# --- thresholds on synthetic CSVs ------------------------------------------------------------

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def _csv(prefix: Path, requests: int, failures: int, p99: str, ttft: int = 0) -> Path:
    """A locust ``_stats.csv`` as locust 2.x writes it; Aggregated includes the TTFT samples."""
    pcts = f"20,25,30,30,40,50,60,{p99},{p99},{p99},{p99}"
    lines = [HEADER, f"POST,chat,{requests},{failures},20,25,10,90,300,10.0,0.0,{pcts}"]
    if ttft:
        lines.append(f"TTFT,chat [stream],{ttft},0,20,25,10,90,0,10.0,0.0,{pcts}")
    lines.append(f",Aggregated,{requests + ttft},{failures},20,25,10,90,300,10.0,0.0,{pcts}")
    Path(f"{prefix}_stats.csv").write_text("\n".join(lines) + "\n")
    return prefix


def test_summary_excludes_ttft_samples_from_requests(tmp_path: Path) -> None:
    s = run.read_summary(_csv(tmp_path / "x", requests=100, failures=1, p99="80", ttft=40))
    assert (s.requests, s.failures, s.ttft_count) == (100, 1, 40)
    assert s.error_ratio == pytest.approx(0.01)
    assert s.p99 == 80.0 and s.ttft["99%"] == 80.0


@pytest.mark.parametrize(
    ("requests", "failures", "p99", "expected"),
    [
        (100, 0, "80", []),
        (100, 1, "80", ["error ratio 0.0100 (1/100) > 0"]),
        (100, 0, "900", ["p99 900 ms > 500 ms"]),
        (100, 0, "N/A", ["p99 nan ms > 500 ms"]),
        (0, 0, "N/A", ["requests 0 < 1", "p99 nan ms > 500 ms"]),
    ],
)
def test_evaluate_names_each_failed_threshold(
    tmp_path: Path, requests: int, failures: int, p99: str, expected: list[str]
) -> None:
    summary = run.read_summary(_csv(tmp_path / "x", requests, failures, p99))
    assert run.evaluate(summary, run.Thresholds(max_error_ratio=0.0, max_p99_ms=500.0)) == expected


def test_verdict_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    limits = run.Thresholds(max_error_ratio=0.0, max_p99_ms=500.0)
    assert run.verdict("good", _csv(tmp_path / "good", 50, 0, "80"), limits) == run.EXIT_OK
    assert run.verdict("bad", _csv(tmp_path / "bad", 50, 2, "80"), limits) == run.EXIT_THRESHOLD == 1
    assert "FAIL bad: error ratio 0.0400 (2/50) > 0" in capsys.readouterr().out
    with pytest.raises(run.SetupError, match="no locust report"):
        run.read_summary(tmp_path / "missing")


@pytest.fixture
def answering_server() -> Iterator[str]:
    """A loopback HTTP server that answers 200 to anything: a "proxy" that is reachable."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_failing_threshold_makes_main_exit_nonzero(
    tmp_path: Path, answering_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The whole path from locust's CSV to the exit status, with locust replaced by a CSV whose
    # p99 is over the steady bound.
    monkeypatch.setattr(run, "find_locust", lambda: "locust")
    monkeypatch.setattr(run.Run, "locust_run", lambda self, label, host, wait: _csv(self.out / label, 80, 0, "2000"))
    assert run.main(["steady", "--proxy", answering_server, "--out", str(tmp_path)]) == run.EXIT_THRESHOLD
    assert "FAIL steady: p99 2000 ms > 500 ms" in capsys.readouterr().out
    monkeypatch.setattr(run.Run, "locust_run", lambda self, label, host, wait: _csv(self.out / label, 80, 0, "60"))
    assert run.main(["steady", "--proxy", answering_server, "--out", str(tmp_path)]) == run.EXIT_OK


def test_affinity_benchmark_runs_every_mode_and_stops_by_itself() -> None:
    script = ROOT / "loadtests" / "affinity.py"
    args = ["--replicas", "2", "--conversations", "6", "--turns", "2", "--concurrency", "3", "--context", "600"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[2:]}
    assert set(rows) == {"round_robin", "load_aware", "hash"}
    assert all(len(values) == 5 and values[3].endswith("%") for values in rows.values())
    bad = subprocess.run(
        [sys.executable, str(script), "--modes", "fastest"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "--modes" in bad.stderr


@pytest.mark.parametrize(
    ("script", "args", "named"),
    [
        ("mirror_cost.py", ["--rounds", "0"], "--rounds"),
        ("mirror_cost.py", ["--sample-rate", "2"], "--sample-rate"),
        ("mirror_instructions.py", ["--requests", "many"], "--requests"),
        ("routing_cost.py", ["--rounds", "-1"], "--rounds"),
    ],
)
def test_cost_scripts_reject_bad_arguments_in_one_line(script: str, args: list[str], named: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / script), *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and named in done.stderr and "Traceback" not in done.stderr

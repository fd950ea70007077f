"""The command line as users run it: real processes, real signals, loopback ports only."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from contextlib import AbstractContextManager

import httpx
import pytest

from haproxy_ai import __version__

from .support import ChildProcess, clean_env, spawn, wait_for


def _env(**extra: str) -> dict[str, str]:
    return clean_env(extra, {"PYTHONUNBUFFERED": "1"})


def _spawn(*args: str, env: dict[str, str] | None = None) -> AbstractContextManager[ChildProcess]:
    """``haproxy-ai ARGS`` as a child process, its output readable line by line with deadlines."""
    return spawn([sys.executable, "-m", "haproxy_ai", *args], env or _env())


def _expect(proc: ChildProcess, pattern: str, timeout: float = 15.0) -> re.Match[str]:
    return proc.expect(pattern, timeout)


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "haproxy_ai", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"haproxy-ai {__version__}"


def test_demo_runs_three_replicas_behind_the_proxy() -> None:
    with _spawn("demo", "--port", "0", "--admin-port", "0") as proc:
        url = _expect(proc, r"proxy (http://127\.0\.0\.1:\d+)").group(1)
        admin = _expect(proc, r"(http://127\.0\.0\.1:\d+)/admin/backends").group(1)
        with httpx.Client(base_url=url, trust_env=False, timeout=10) as c:
            seen = {c.get("/v1/models").headers["x-haproxy-ai-backend"] for _ in range(60)}
            assert seen == {"replica-1", "replica-2-slow-tail", "replica-3-flaky"}
            # One replica fails now and then (this is the demo's point), so look for a good
            # answer among a few, and require every failure to be a proper OpenAI error.
            statuses = []
            for _ in range(10):
                r = c.post(
                    "/v1/chat/completions",
                    json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
                )
                statuses.append(r.status_code)
                if r.status_code == 200:
                    assert r.json()["choices"][0]["message"]["content"]
                    break
                assert "error" in r.json()
            assert 200 in statuses
        assert len(httpx.get(admin + "/admin/backends", trust_env=False).json()["backends"]) == 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0


def test_fake_backend_cli_rejects_bad_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "haproxy_ai", "fake-backend", "--error-rate", "2"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "--error-rate" in out.stderr


def test_serve_from_env_vars_drains_open_streams_on_sigterm() -> None:
    with _spawn("fake-backend", "--port", "0", "--tokens", "80", "--chunk-interval", "0.05", "--name", "r1") as fake:
        backend_url = _expect(fake, r"serving (http://\S+)").group(1)
        env = _env(
            HAPROXY_AI_BACKENDS=f"{backend_url},name=r1",
            HAPROXY_AI_PORT="0",
            HAPROXY_AI_ADMIN_PORT="0",
            HAPROXY_AI_BALANCER="round_robin",
        )
        with _spawn("serve", env=env) as proxy:
            url = _expect(proxy, r"proxying (http://\S+) -> r1").group(1)
            admin = _expect(proxy, r"admin on (http://\S+) ").group(1)
            wait_for(lambda: httpx.get(admin + "/readyz", trust_env=False).status_code == 200)

            events: list[str] = []
            first_event = threading.Event()
            errors: list[BaseException] = []

            def stream() -> None:
                payload = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
                try:
                    with httpx.stream("POST", url + "/v1/chat/completions", json=payload, trust_env=False) as r:
                        for line in r.iter_lines():
                            if line.startswith("data: "):
                                events.append(line)
                                first_event.set()
                except BaseException as exc:  # reported below
                    errors.append(exc)
                    first_event.set()

            reader = threading.Thread(target=stream)
            reader.start()
            assert first_event.wait(10)
            proxy.send_signal(signal.SIGTERM)
            # Draining: readiness fails at once so load balancers stop sending, and no new
            # connections are accepted, while the open stream (4 s long, so a loaded machine
            # still sees the drain in progress) runs to its end.
            wait_for(lambda: httpx.get(admin + "/readyz", trust_env=False).status_code == 503)

            def refused() -> bool:
                try:
                    httpx.get(url + "/v1/models", trust_env=False, timeout=1)
                except httpx.ConnectError:
                    return True
                return False

            wait_for(refused)
            reader.join(15)
            assert not errors, errors
            assert events[-1] == "data: [DONE]"
            assert len(events) >= 81
            assert proxy.wait(15) == 0
            stats = httpx.get(backend_url + "/_stats", trust_env=False).json()
            assert stats["completed"] == 1 and stats["cancelled"] == 0


def test_serve_refuses_bad_env_config_and_names_the_variable() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "haproxy_ai", "serve"],
        capture_output=True,
        text=True,
        env=_env(HAPROXY_AI_BACKENDS="http://127.0.0.1:1,weight=0", HAPROXY_AI_PORT="0"),
        timeout=30,
    )
    assert out.returncode == 2
    assert "env HAPROXY_AI_BACKENDS: backends[0].weight: must be > 0" in out.stderr


def test_serve_reports_a_taken_port() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "haproxy_ai",
                "serve",
                "--backend",
                "http://127.0.0.1:1",
                "--port",
                str(port),
                "--admin-port",
                "0",
            ],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=30,
        )
    assert out.returncode != 0
    assert "cannot bind" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", [["check-config"], ["serve", "--port", "x"]])
def test_usage_errors_exit_2(command: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "haproxy_ai", *command], capture_output=True, text=True, env=_env())
    assert out.returncode == 2
    json.dumps(out.stderr)  # printable
    assert "Traceback" not in out.stderr


def test_tune_gc_freezes_start_up_objects_and_batches_young_collections() -> None:
    import gc

    from haproxy_ai.server import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (20_000, 20, 20)
        assert gc.isenabled()  # cycles are still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

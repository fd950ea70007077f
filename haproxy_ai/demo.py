"""``haproxy-ai demo``: three simulated replicas and the proxy in one process."""

from __future__ import annotations

import dataclasses
import tempfile

from .fake_backend import FakeBackend, FakeBackendOptions
from .server import ProxyServer
from .settings import load_settings

__all__ = ["run_demo"]

_REPLICAS = (
    FakeBackendOptions(name="replica-1", latency=0.05, jitter=0.02, chunk_interval=0.02),
    # Heavy tail: one request in ten waits 1.5 s for its first token.
    FakeBackendOptions(
        name="replica-2-slow-tail", latency=0.05, tail_fraction=0.1, tail_latency=1.5, chunk_interval=0.02
    ),
    # Fails now and then, as a replica with a flaky engine would.
    FakeBackendOptions(name="replica-3-flaky", latency=0.05, error_rate=0.05, error_status=500, chunk_interval=0.02),
)


def _snippets(url: str, admin: str | None, spool: str) -> str:
    text = f"""
haproxy-ai demo is up: proxy {url}  ->  3 simulated replicas
Try it:

  curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "fake-model", "messages": [{{"role": "user", "content": "hi"}}]}}'

  curl -sN {url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "fake-model", "stream": true, "messages": [{{"role": "user", "content": "hi"}}]}}'

  pip install openai && python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="unused")
for chunk in client.chat.completions.create(model="fake-model", stream=True,
        messages=[{{"role": "user", "content": "hi"}}]):
    print(chunk.choices[0].delta.content or "", end="", flush=True) if chunk.choices else None
print()
PY
"""
    if admin:
        text += f"""
  curl -s {admin}/admin/backends     # backends, in-flight, latency
  curl -s {admin}/metrics            # Prometheus metrics
  curl -s {admin}/admin/mirror       # the request/response mirror: spool, sinks, drops
"""
    text += f"""
Every request/response is recorded (redacted) in the spool {spool}:

  haproxy-ai logs tail --source spool:{spool} -f
"""
    return text + "\nCtrl-C to stop.\n"


async def run_demo(
    host: str = "127.0.0.1", port: int = 8080, admin_port: int = 9901, spool_dir: str | None = None
) -> None:
    replicas = [FakeBackend(options) for options in _REPLICAS]
    for replica in replicas:
        await replica.start("127.0.0.1", 0)
    try:
        settings = load_settings(
            overrides={
                "backend": [f"{r.url},name={o.name}" for r, o in zip(replicas, _REPLICAS, strict=True)],
                "host": host,
                "port": port,
                "admin_port": admin_port,
            },
            environ={},
        )
        # The embedded default store: a local spool (a fresh directory unless one is given).
        spool = spool_dir or tempfile.mkdtemp(prefix="haproxy-ai-demo-spool-")
        settings = dataclasses.replace(
            settings, mirror=dataclasses.replace(settings.mirror, enabled=True, spool_dir=spool)
        )
        server = ProxyServer(settings)

        def ready(s: ProxyServer) -> None:
            h, p = s.data_address
            admin = s.admin_address
            admin_url = f"http://{admin[0]}:{admin[1]}" if admin else None
            print(_snippets(f"http://{h}:{p}", admin_url, spool), flush=True)

        # SIGINT/SIGTERM drain the proxy; the replicas stop once it is done.
        await server.serve(handle_signals=True, on_ready=ready, own_process=True)
    finally:
        for replica in replicas:
            await replica.stop()

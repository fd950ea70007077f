"""Test support: a background event loop that hosts real servers on ephemeral loopback ports.

Tests act as ordinary external clients (httpx, the openai SDK, raw sockets) against the
proxy and the simulated replicas, exactly as users do.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from haproxy_ai.app import Proxy
from haproxy_ai.fake_backend import FakeBackend, FakeBackendOptions
from haproxy_ai.server import ProxyServer, bind_socket
from haproxy_ai.settings import Settings, parse_settings

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread; ``run`` executes a coroutine on it."""

    def __init__(self) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass
class RunningProxy:
    server: ProxyServer
    task: asyncio.Task[None]
    url: str
    admin_url: str

    @property
    def proxy(self) -> Proxy:
        return self.server.proxy


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout``. Never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class Stack:
    """Starts fake backends and proxies on the loop thread and stops them at teardown."""

    def __init__(self, loop: LoopThread) -> None:
        self.loop = loop
        self._backends: list[FakeBackend] = []
        self._proxies: list[RunningProxy] = []

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a synchronous function on the loop thread (proxy state has one writer: the loop)."""

        async def run() -> T:
            return fn(*args, **kwargs)

        return self.loop.run(run())

    def backend(self, **options: Any) -> FakeBackend:
        backend = FakeBackend(FakeBackendOptions(**options))
        self.loop.run(backend.start("127.0.0.1", 0))
        self._backends.append(backend)
        return backend

    def settings(self, backends: list[Any], **sections: Any) -> Settings:
        data: dict[str, Any] = {"backends": [b if isinstance(b, dict) else {"url": b.url} for b in backends]}
        data.update(sections)
        return parse_settings(data, require_backends=False)

    def proxy(self, backends: list[Any], **sections: Any) -> RunningProxy:
        settings = self.settings(backends, **sections)
        return self.proxy_for(settings)

    def proxy_for(self, settings: Settings, **proxy_kwargs: Any) -> RunningProxy:
        async def start() -> RunningProxy:
            data_sock = bind_socket("127.0.0.1", 0)
            admin_sock = bind_socket("127.0.0.1", 0)
            server = ProxyServer(
                settings, proxy=Proxy(settings, **proxy_kwargs), data_socket=data_sock, admin_socket=admin_sock
            )
            started = asyncio.Event()
            task = asyncio.create_task(server.serve(on_ready=lambda _s: started.set()))
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            if not started.is_set():
                waiter.cancel()
                if task.done():
                    task.result()
                raise RuntimeError("proxy did not start")
            host, port = server.data_address
            admin = server.admin_address
            assert admin is not None
            return RunningProxy(server, task, f"http://{host}:{port}", f"http://{admin[0]}:{admin[1]}")

        running = self.loop.run(start())
        self._proxies.append(running)
        return running

    def close(self) -> None:
        async def stop_all() -> None:
            for running in self._proxies:
                running.server.request_shutdown()
                try:
                    await asyncio.wait_for(running.task, 10)
                except Exception:
                    running.task.cancel()
            for backend in self._backends:
                await backend.stop()

        self.loop.run(stop_all())


def client(base_url: str, timeout: float = 10.0) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=timeout, trust_env=False)


def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection; return everything read until the server closes
    or goes quiet after a complete response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                joined = b"".join(chunks)
                if b"\r\n\r\n" in joined and _complete(joined):
                    break
        except TimeoutError:
            pass
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


class RawBackend:
    """A scripted replica speaking raw HTTP/1.1: answers every request with ``response`` bytes
    (then closes), so tests can send framing and headers no well-behaved server would."""

    def __init__(self, loop: LoopThread, response: bytes) -> None:
        self.loop = loop
        self.response = response
        self.requests: list[bytes] = []
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    def start(self) -> RawBackend:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                writer.write(self.response)
                await writer.drain()
            finally:
                writer.close()

        async def start() -> None:
            self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self.loop.run(start())
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        self.loop.run(stop())


# Child processes (the CLI as users run it)


class ChildProcess:
    """A child whose merged output is read by a thread, so a test can wait for a line with a deadline."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=dict(env)
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"{self.args}: no line matching {pattern!r}; output:\n{''.join(self.seen)}")

    def output(self, timeout: float = 15.0) -> str:
        """Everything the child printed, once it has exited (waits for the end of its output)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"{self.args}: output did not end within {timeout}s") from None
            if line is None:
                self.lines.put(None)
                return "".join(self.seen)
            self.seen.append(line)

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` (SIGTERM: what docker stop and the kubelet send); the exit code. A child
        that does not exit in time fails the test with what it printed (its shutdown log)."""
        self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
            raise AssertionError(
                f"{self.args}: still running {timeout}s after {sig.name}; output:\n{self.output(5)[-6000:]}"
            ) from None


@contextmanager
def spawn(args: list[str], env: Mapping[str, str]) -> Iterator[ChildProcess]:
    proc = ChildProcess(args, env)
    try:
        yield proc
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
        proc.popen.wait(10)
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()


def clean_env(*layers: Mapping[str, str]) -> dict[str, str]:
    """This process's env without HAPROXY_AI_* variables, then ``layers`` in order."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAPROXY_AI_")}
    for layer in layers:
        env.update(layer)
    return env

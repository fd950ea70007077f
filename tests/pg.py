"""PostgreSQL for tests: the local service when one answers, else a throwaway cluster of our own.

Test modules import the fixtures they use::

    from .pg import fresh_table, pg_cluster, postgres_dsn  # noqa: F401

``postgres_dsn`` (session) never skips: without a reachable service it runs a ThrowawayCluster, and when
neither works the tests fail with the reason. ``pg_cluster`` is always a private cluster, for tests that
stop or restart the server. Tables from ``fresh_table`` are unique per call and dropped at session end.
"""

from __future__ import annotations

import asyncio
import atexit
import getpass
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

__all__ = ["ThrowawayCluster", "fresh_table", "local_dsn", "pg_cluster", "postgres_dsn"]

LOCAL_HOST = "127.0.0.1"
LOCAL_PORT = 5432

# Tables handed out by fresh_table, dropped (best effort) when the postgres_dsn session fixture ends.
_created_tables: list[str] = []


def _can_login(dsn: str, timeout: float = 3.0) -> bool:
    import asyncpg

    async def attempt() -> bool:
        conn = await asyncpg.connect(dsn, timeout=timeout)
        await conn.close()
        return True

    try:
        return asyncio.run(attempt())
    except Exception:
        return False


def local_dsn() -> str | None:
    """The DSN of a PostgreSQL service on 127.0.0.1:5432 that lets us in without a password (user
    ``postgres``, else the current OS user; database ``test``, else ``postgres``), or None."""
    try:
        socket.create_connection((LOCAL_HOST, LOCAL_PORT), timeout=1.0).close()
    except OSError:
        return None
    users = dict.fromkeys(["postgres", getpass.getuser()])
    for user in users:
        for database in ("test", "postgres"):
            dsn = f"postgresql://{user}@{LOCAL_HOST}:{LOCAL_PORT}/{database}"
            if _can_login(dsn):
                return dsn
    return None


def _version(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (0,)


def find_bindir() -> Path:
    """The directory of initdb/pg_ctl/postgres: the highest /usr/lib/postgresql/<version>/bin, else PATH."""
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file()]
    if candidates:
        return max(candidates, key=_version)
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).resolve().parent
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql or on PATH")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL_HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        socket.create_connection((LOCAL_HOST, port), timeout=0.2).close()
    except OSError:
        return False
    return True


class ThrowawayCluster:
    """A private PostgreSQL server in a temporary directory, on a free loopback port, trust auth.

    initdb, pg_ctl and postgres refuse to run as root, so as root they run as the ``postgres`` OS user
    (else ``nobody``), which then owns the temporary directory. Only this cluster's server is ever
    stopped: pg_ctl is always given its data directory, and a stuck server is killed by the PID its
    postmaster.pid records.
    """

    def __init__(self, *, bindir: Path | None = None, timeout: float = 30.0) -> None:
        self.bindir = bindir or find_bindir()
        self.timeout = timeout
        self.port = _free_port()
        self.running = False
        self._user = self._service_user()
        self.root = Path(tempfile.mkdtemp(prefix="haproxy-ai-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self._initialised = False
        atexit.register(self.cleanup)  # an interrupted session must not leave a server behind

    @staticmethod
    def _service_user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise RuntimeError("running as root, but neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{LOCAL_HOST}:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL binary (as the service user when we are root), output captured."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        extra: dict[str, Any] = {}
        if self._user is not None:
            env["HOME"] = str(self.root)
            extra = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        # pg_ctl start leaves the server running with our stdout unless it is redirected: use a file, not a pipe.
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.run(
                [str(self.bindir / args[0]), *args[1:]],
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=self.timeout + 10,
                check=False,
                **extra,
            )
            out.seek(0)
            output = out.read()
        if check and proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}):\n{output}\n{self._log_tail()}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, output, None)

    def _log_tail(self) -> str:
        try:
            return "server log:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def _initdb(self) -> None:
        self.sockets.mkdir()
        if self._user is not None:
            for path in (self.root, self.sockets):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "-N")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# throwaway test cluster\n"
                f"listen_addresses = '{LOCAL_HOST}'\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 16MB\nmax_connections = 40\n"
            )
        (self.data / "pg_hba.conf").write_text(
            f"local all all trust\nhost all all {LOCAL_HOST}/32 trust\n", encoding="utf-8"
        )
        self._initialised = True

    def start(self) -> None:
        """initdb on first use, then start the server and wait until it accepts TCP connections."""
        if self.running:
            return
        if not self._initialised:
            self._initdb()
        for attempt in range(3):
            result = self._run(
                "pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(self.timeout)),
                "-o", f"-p {self.port}", check=False,
            )  # fmt: skip
            if result.returncode == 0:
                break
            # Another process may have taken the free port between choosing and binding it.
            if attempt < 2 and "could not bind" in self._log_tail() and not self._pid_alive():
                self.port = _free_port()
                continue
            raise RuntimeError(f"pg_ctl start failed:\n{result.stdout}\n{self._log_tail()}")
        self.running = True
        deadline = time.monotonic() + self.timeout
        while not _port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections on port {self.port}\n{self._log_tail()}")
            time.sleep(0.02)

    def _pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _pid_alive(self) -> bool:
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, mode: str = "fast") -> None:
        """Stop this cluster's server (pg_ctl stop -m ``mode``); kill it by its own PID if pg_ctl fails."""
        if not self._initialised:
            return
        result = self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "15", check=False)
        if result.returncode != 0 and self._pid_alive():
            pid = self._pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while self._pid_alive() and time.monotonic() < deadline:
                    time.sleep(0.02)
        self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server if it runs and remove the temporary directory."""
        atexit.unregister(self.cleanup)
        try:
            if self.running or self._pid_alive():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ThrowawayCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


def fresh_table(prefix: str = "t") -> str:
    """A table name no other test uses; postgres_dsn drops it at the end of the session (best effort)."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    _created_tables.append(name)
    return name


def _drop_tables(dsn: str, tables: list[str]) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            for table in tables:
                await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        finally:
            await conn.close()

    try:
        asyncio.run(drop())
    except Exception:
        pass


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A DSN of a working PostgreSQL: the local service when it answers, else a cluster for the session."""
    dsn = local_dsn()
    if dsn is not None:
        yield dsn
        _drop_tables(dsn, _created_tables)
        return
    try:
        cluster = _started_cluster()
    except Exception as exc:
        pytest.fail(
            f"no PostgreSQL for the tests: nothing accepts a passwordless login on {LOCAL_HOST}:{LOCAL_PORT} "
            f"and a throwaway cluster could not be started: {exc}",
            pytrace=False,
        )
    try:
        yield cluster.dsn
    finally:
        cluster.cleanup()


def _started_cluster() -> ThrowawayCluster:
    cluster = ThrowawayCluster()
    try:
        cluster.start()
    except BaseException:
        cluster.cleanup()
        raise
    return cluster


@pytest.fixture
def pg_cluster() -> Iterator[ThrowawayCluster]:
    """A private, running cluster the test may stop and restart."""
    try:
        cluster = _started_cluster()
    except Exception as exc:
        pytest.fail(f"could not start a throwaway PostgreSQL cluster: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.cleanup()

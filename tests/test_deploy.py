"""The deployment files: Dockerfile, .dockerignore, Kubernetes manifests and the compose file.

No container engine, cluster or network is needed. hadolint lints the Dockerfile; every manifest is
validated strictly against the Kubernetes schemas kubernetes-validate ships (offline); the configs the
manifests and the compose file hand the proxy go through the project's own loader, with the env the
image and the pod set; and the image's ENTRYPOINT, HEALTHCHECK and the compose replicas' commands
are run as real processes on loopback with the env the Dockerfile sets.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import kubernetes_validate
import pytest
import yaml

from haproxy_ai import fake_backend
from haproxy_ai.settings import MirrorSettings, Settings, load_settings, parse_settings
from haproxy_ai.settings.values import parse_duration

from .support import clean_env, spawn, wait_for

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "config" / "kubernetes").glob("*.yaml"))
COMPOSE = ROOT / "config" / "compose.yaml"
KUBERNETES_MIN = "1.29.0"
ADMIN_PORT = 9901
DATA_PORT = 8080


# ---------------------------------------------------------------------------------------------
# Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in the stage FROM {self.base}, found {found}"
        return found[0]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV {args!r}: use the KEY=VALUE form"
                out[key] = value
        return out


def _dockerfile() -> list[Stage]:
    """The Dockerfile's stages, with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, inside a continuation too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a line continuation"
    global_args: dict[str, str] = {}
    stages: list[tuple[str, str | None, list[Instruction]]] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        ins = Instruction(keyword.upper(), args.strip())
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append((base, name, []))
        elif not stages and ins.keyword == "ARG":
            key, _, default = ins.args.partition("=")
            global_args[key] = default
        else:
            assert stages, f"{ins.keyword} before the first FROM"
            stages[-1][2].append(ins)
    return [Stage(base, name, tuple(ins)) for base, name, ins in stages]


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec (JSON) form: {args}"
    return value


def _image_env() -> dict[str, str]:
    """What the runtime image sets, less PATH (checked separately)."""
    env = _dockerfile()[-1].env()
    env.pop("PATH", None)
    return env


def _executable(name: str) -> str:
    """A console script of this environment: next to the interpreter first (a venv), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    assert found, f"{name} is neither next to {sys.executable} nor on PATH (pip install -e '.[test]')"
    return found


def _pip_install(stage: Stage) -> list[str]:
    """The words after ``pip install`` in the stage's one pip install, shell quoting removed."""
    installs = re.findall(r"pip install ([^&;|]+)", " && ".join(stage.all("RUN")))
    assert len(installs) == 1, installs
    return shlex.split(installs[0])


def _shell_commands(stage: Stage) -> list[list[str]]:
    """Every simple command of the stage's RUN instructions, split as the shell would."""
    out: list[list[str]] = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;|\|\|", run):
            words = shlex.split(command)
            if words:
                out.append(words)
    return out


def _owned_dirs(stage: Stage) -> dict[str, tuple[str, str, int]]:
    """Directories the stage's RUNs create and hand to an owner: path -> (uid, gid, mode).

    Understands ``install -d -o U -g G [-m MODE] DIR...`` and ``mkdir [-p] DIR...`` followed by
    ``chown [-R] U:G DIR...``; user and group names made by useradd/groupadd resolve to their ids."""
    commands = _shell_commands(stage)
    ids: dict[str, str] = {}
    for words in commands:
        if words[0] in ("useradd", "groupadd"):
            flag = "--uid" if words[0] == "useradd" else "--gid"
            if flag in words:
                ids[f"{words[0]}:{words[-1]}"] = words[words.index(flag) + 1]

    def uid(name: str) -> str:
        return ids.get(f"useradd:{name}", name)

    def gid(name: str) -> str:
        return ids.get(f"groupadd:{name}", name)

    made: dict[str, int] = {}
    owned: dict[str, tuple[str, str, int]] = {}
    for words in commands:
        if words[0] == "install" and ("-d" in words or "--directory" in words):
            opts: dict[str, str] = {}
            dirs: list[str] = []
            it = iter(words[1:])
            for word in it:
                if word in ("-o", "-g", "-m"):
                    opts[word] = next(it)
                elif word.startswith(("--owner=", "--group=", "--mode=")):
                    key, _, value = word.partition("=")
                    opts[{"--owner": "-o", "--group": "-g", "--mode": "-m"}[key]] = value
                elif not word.startswith("-"):
                    dirs.append(word)
            for d in dirs:
                owned[d] = (uid(opts.get("-o", "0")), gid(opts.get("-g", "0")), int(opts.get("-m", "755"), 8))
        elif words[0] == "mkdir":
            for d in (w for w in words[1:] if not w.startswith("-")):
                made[d] = 0o755
        elif words[0] == "chown":
            owner, *paths = [w for w in words[1:] if not w.startswith("-")]
            user, _, group = owner.partition(":")
            for d in paths:
                if d in made or d in owned:
                    mode = owned[d][2] if d in owned else made[d]
                    owned[d] = (uid(user), gid(group or user), mode)
    return owned


def test_hadolint_passes_without_a_warning() -> None:
    result = subprocess.run(
        [_executable("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_dockerfile_builds_a_venv_and_runs_it_as_a_non_root_pid_1() -> None:
    stages = _dockerfile()
    assert len(stages) >= 2, "multi-stage: build the venv in one stage, run it in a clean one"
    assert all(s.base == "python:3.11-slim" for s in stages), [s.base for s in stages]
    build, final = stages[0], stages[-1]

    runs = " && ".join(build.all("RUN"))
    assert "python -m venv /opt/venv" in runs
    words = _pip_install(build)
    # Runtime dependencies only: the project itself (and the extras checked below), no pip cache in a layer.
    assert "--no-cache-dir" in words and len([w for w in words if not w.startswith("-")]) == 1, words

    assert f"--from={build.name} /opt/venv /opt/venv" in final.all("COPY")
    env = final.env()
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HAPROXY_AI_HOST"] == "0.0.0.0"
    # The admin listener stays on loopback unless a deployment also supplies a token, and the image
    # cannot point at a config file it does not contain (a missing file is an error).
    assert "HAPROXY_AI_ADMIN_HOST" not in env and "HAPROXY_AI_ADMIN_TOKEN" not in env
    assert "HAPROXY_AI_CONFIG" not in env

    user = final.one("USER").split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), f"USER {user}: a fixed, non-root UID"
    assert {int(p) for p in " ".join(final.all("EXPOSE")).split()} == {DATA_PORT, ADMIN_PORT}
    # Exec form: haproxy-ai is PID 1 and receives SIGTERM/SIGHUP itself, no shell in between.
    assert _exec_form(final.one("ENTRYPOINT")) == ["haproxy-ai", "serve"]
    healthcheck = final.one("HEALTHCHECK")
    assert "/healthz" in healthcheck and "CMD [" in healthcheck


def test_image_ships_the_postgres_sink_driver() -> None:
    """The mirror's PostgreSQL sink needs asyncpg, an optional extra: the image installs it."""
    words = _pip_install(_dockerfile()[0])
    (requirement,) = [w for w in words if not w.startswith("-")]
    m = re.fullmatch(r"(\.|\./)(?:\[([\w,\s-]+)\])?", requirement)
    assert m, f"pip install {requirement}: install the project from its directory, with its extras"
    extras = {e.strip() for e in (m.group(2) or "").split(",") if e.strip()}
    assert extras == {"postgres"}, f"{requirement}: the postgres extra (the sink's driver), no test/load/dev extras"
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert any(dep.startswith("asyncpg") for dep in optional["postgres"]), optional["postgres"]


def _runtime_spool_home() -> str:
    """The runtime image's WORKDIR, where a relative mirror.spool_dir lands."""
    workdirs = _dockerfile()[-1].all("WORKDIR")
    assert workdirs, "the runtime stage sets no WORKDIR: a relative mirror.spool_dir would land in /"
    assert posixpath.isabs(workdirs[-1]), workdirs
    return posixpath.normpath(workdirs[-1])


def _under(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or inside it, component-wise (/var/lib/x is not under /var/li)."""
    path, directory = posixpath.normpath(path), posixpath.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def test_runtime_gives_the_spool_a_writable_home_owned_by_its_user() -> None:
    final = _dockerfile()[-1]
    uid, gid = final.one("USER").split(":")
    home = _runtime_spool_home()
    # The default spool_dir is relative: it lands in the working directory.
    default_spool = posixpath.normpath(posixpath.join(home, MirrorSettings().spool_dir))
    assert default_spool.startswith(home + "/"), default_spool

    owned = _owned_dirs(final)
    assert home in owned, f"WORKDIR {home} is not created and chowned in the runtime stage ({owned})"
    owner, group, mode = owned[home]
    assert (owner, group) == (uid, gid), f"{home} is owned by {owner}:{group}, the image runs as {uid}:{gid}"
    assert mode & 0o700 == 0o700 and not mode & 0o002, f"{home}: mode {mode:o}"
    # Created while still root, before USER drops to the unprivileged user.
    keywords = [i.keyword for i in final.instructions]
    first_run = next(n for n, i in enumerate(final.instructions) if i.keyword == "RUN" and home in i.args)
    assert first_run < keywords.index("USER")

    # A VOLUME: `docker run` without -v still gets a writable spool (an anonymous volume, even with
    # --read-only), and a new named volume starts as a copy of the directory, owner included.
    volumes: list[str] = []
    for args in final.all("VOLUME"):
        volumes += json.loads(args) if args.startswith("[") else args.split()
    assert home in {posixpath.normpath(v) for v in volumes}, volumes


# ---------------------------------------------------------------------------------------------
# .dockerignore: the build context


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern: Go's filepath.Match, plus ``**`` for any number of directories."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out, i = out + "[" + ("^" + body[1:] if body[:1] in ("!", "^") else body) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _context_filter() -> Any:
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        line = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((keep, _glob_regex(line)))

    def in_context(path: str) -> bool:
        # As Docker does: a rule applies to a path or to any of its parent directories; the last
        # rule that applies wins.
        parts = path.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        included = True
        for keep, regex in rules:
            if any(regex.fullmatch(p) for p in prefixes):
                included = keep
        return included

    return in_context


def test_build_context_holds_what_pip_install_needs_and_nothing_private() -> None:
    in_context = _context_filter()
    build = _dockerfile()[0]
    needed: list[str] = []
    for args in build.all("COPY") + build.all("ADD"):
        words = [w for w in args.split() if not w.startswith("--")]
        needed += words[:-1]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    readme = pyproject["project"].get("readme")
    needed.append(readme if isinstance(readme, str) else readme["file"])
    needed += [p.name for p in ROOT.glob("LICENSE*")]
    for path in needed:
        assert (ROOT / path).exists(), f"{path}: copied or needed by the build, but missing"
        assert in_context(path), f"{path}: needed by the build but excluded by .dockerignore"
    assert "pyproject.toml" in needed and "haproxy_ai" in needed

    package = [p.relative_to(ROOT).as_posix() for p in (ROOT / "haproxy_ai").rglob("*.py")]
    assert package and all(in_context(p) for p in package), [p for p in package if not in_context(p)]
    for private in (".git/config", ".venv/bin/python", "venv/bin/python", "tests/test_deploy.py", "spool/x"):
        assert not in_context(private), f"{private} would be sent to the builder"
    assert not in_context("haproxy_ai/__pycache__/cli.cpython-311.pyc")
    assert not in_context("haproxy_ai.egg-info/PKG-INFO")


# ---------------------------------------------------------------------------------------------
# Processes, for the entrypoint and the compose replicas


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` with an empty shell environment."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def _compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): _interpolate(str(v)) for k, v in env.items()}


def test_entrypoint_serves_with_the_image_env_and_exits_0_on_sigterm() -> None:
    """The image's ENTRYPOINT and HEALTHCHECK, with the env the Dockerfile sets, in front of a replica
    started with compose's r1 command (entrypoint + command, then an ephemeral loopback port)."""
    final = _dockerfile()[-1]
    image_env = _image_env()
    services = _compose()["services"]
    r1 = services["r1"]

    replica_args = [*r1["entrypoint"], *r1["command"], "--host", "127.0.0.1", "--port", "0"]
    replica_args[0] = _executable(replica_args[0])
    with spawn(replica_args, clean_env(image_env)) as replica:
        replica_url = replica.expect(r"serving (http://127\.0\.0\.1:\d+)").group(1)

        # The image's env alone is a valid config once backends are given: 0.0.0.0 data, loopback admin.
        settings = load_settings(environ={**image_env, "HAPROXY_AI_BACKENDS": replica_url})
        assert (settings.listen.host, settings.admin.host) == ("0.0.0.0", "127.0.0.1")

        # Run it on loopback with ephemeral ports: tests bind nothing else, and 8080/9901 may be taken.
        env = clean_env(
            image_env,
            {
                "HAPROXY_AI_BACKENDS": replica_url,
                "HAPROXY_AI_HOST": "127.0.0.1",
                "HAPROXY_AI_PORT": "0",
                "HAPROXY_AI_ADMIN_PORT": "0",
            },
        )
        entrypoint = _exec_form(final.one("ENTRYPOINT"))
        with spawn([_executable(entrypoint[0]), *entrypoint[1:]], env) as proxy:
            data_url = proxy.expect(r"proxying (http://127\.0\.0\.1:\d+)").group(1)
            admin = proxy.expect(r"admin on http://127\.0\.0\.1:(\d+)")
            admin_url = f"http://127.0.0.1:{admin.group(1)}"
            with httpx.Client(timeout=10, trust_env=False) as client:
                assert client.get(admin_url + "/healthz").status_code == 200
                # Ready once a first health probe has passed (within the first probe interval).
                wait_for(lambda: client.get(admin_url + "/readyz").status_code == 200)
                reply = client.post(
                    data_url + "/v1/chat/completions",
                    json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert reply.status_code == 200, reply.text
                assert reply.headers["x-fake-backend"] == "r1"

            # The HEALTHCHECK command, as the container runtime runs it (python is the venv's).
            check = _exec_form(final.one("HEALTHCHECK").split("CMD", 1)[1].strip())
            assert check[0] == "python"
            probe_env = {**env, "HAPROXY_AI_ADMIN_PORT": admin.group(1)}
            probe = subprocess.run([sys.executable, *check[1:]], env=probe_env, capture_output=True, timeout=20)
            assert probe.returncode == 0, probe.stderr

            assert proxy.stop() == 0
        # A container's PID 1 ignores a signal it has no handler for: the replicas' stop_signal is one
        # that fake-backend handles, so `docker compose stop` is prompt and clean.
        assert replica.stop(signal.Signals[r1.get("stop_signal", "SIGTERM")]) == 0
    # With nothing listening any more, the same HEALTHCHECK fails, so it does test something.
    probe = subprocess.run([sys.executable, *check[1:]], env=probe_env, capture_output=True, timeout=20)
    assert probe.returncode != 0


# ---------------------------------------------------------------------------------------------
# Kubernetes


def _documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)
    return docs


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(deployment: Mapping[str, Any], name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == name]
    assert len(found) == 1, f"no container {name!r} in {deployment['metadata']['name']}"
    return found[0]


def _port(container: Mapping[str, Any], port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in by_name, f"port {port!r} is not a named port of container {container['name']}"
    return int(by_name[port])


def _container_env(docs: list[dict[str, Any]], container: Mapping[str, Any]) -> dict[str, str]:
    """The container's env with secretKeyRef values resolved from the Secrets in the same file."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        secret = _one(docs, "Secret", ref["name"])
        assert ref["key"] in secret.get("stringData", {}), f"Secret {ref['name']} has no key {ref['key']!r}"
        env[item["name"]] = secret["stringData"][ref["key"]]
    return env


def _proxy_settings(
    docs: list[dict[str, Any]], deployment: Mapping[str, Any], tmp_path: Path
) -> tuple[Settings, str, dict[str, str]]:
    """What the haproxy-ai container loads: the image's env, the pod's env, the mounted ConfigMap.
    Returns the settings, the config text, and the container env."""
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment, "haproxy-ai")
    env = _container_env(docs, container)
    config_path = env["HAPROXY_AI_CONFIG"]
    mount = next(
        (m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"].rstrip("/") + "/")), None
    )
    assert mount is not None, f"HAPROXY_AI_CONFIG={config_path} is not under any volumeMount"
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates, so SIGHUP could not reload"
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = _one(docs, "ConfigMap", volume["configMap"]["name"])
    key = config_path[len(mount["mountPath"].rstrip("/")) + 1 :]
    text = configmap["data"][key]

    local = tmp_path / key
    local.write_text(text, encoding="utf-8")
    settings = load_settings(environ={**_image_env(), **env, "HAPROXY_AI_CONFIG": str(local)})
    return settings, text, env


def _prestop_sleep(container: Mapping[str, Any]) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep") and len(command) == 2, command
    return float(command[1])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path) -> None:
    """Every document against the Kubernetes 1.29 schemas (the oldest supported) and the newest
    bundled with kubernetes-validate; unknown fields are errors, an unknown kind too."""
    versions = sorted({KUBERNETES_MIN, kubernetes_validate.latest_version()})
    for doc in _documents(path):
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} @ {version}: {where}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{path.name}: {exc.message}")


def test_manifests_exist() -> None:
    assert {p.name for p in MANIFESTS} >= {"sidecar.yaml", "standalone.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_haproxy_ai_pod_is_probed_drained_and_locked_down(path: Path, tmp_path: Path) -> None:
    docs = _documents(path)
    deployment = _one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment, "haproxy-ai")
    settings, text, env = _proxy_settings(docs, deployment, tmp_path)

    # The file alone is valid too (`haproxy-ai check-config` reads it without env).
    parse_settings(yaml.safe_load(text))
    # The pod's env moves the admin listener off loopback, with the token the proxy then requires.
    assert env["HAPROXY_AI_ADMIN_HOST"] == "0.0.0.0" and settings.admin.host == "0.0.0.0"
    assert settings.admin.token and settings.admin.enabled
    assert settings.listen.host == "0.0.0.0"
    assert _port(container, "http") == settings.listen.port == DATA_PORT
    assert _port(container, "admin") == settings.admin.port == ADMIN_PORT

    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (ready["path"], _port(container, ready["port"])) == ("/readyz", settings.admin.port)
    assert (live["path"], _port(container, live["port"])) == ("/healthz", settings.admin.port)

    # SIGTERM comes after preStop; the drain then needs listen.shutdown_grace; all within the grace period.
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > 30 and grace > _prestop_sleep(container) + settings.listen.shutdown_grace

    security = {**pod.get("securityContext", {}), **container["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert security.get("runAsUser", 10001) != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind

    # Secrets in git are placeholders, marked as such.
    for secret in (d for d in docs if d["kind"] == "Secret"):
        assert all("REPLACE" in v for v in secret.get("stringData", {}).values()), secret["metadata"]["name"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_service_reaches_the_proxy_and_its_metrics(path: Path) -> None:
    docs = _documents(path)
    deployment = _one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = _one(docs, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    container = _container(deployment, "haproxy-ai")
    ports = {p["name"]: (p["port"], _port(container, p["targetPort"])) for p in service["spec"]["ports"]}
    assert ports["http"][1] == DATA_PORT
    assert ports["admin"][1] == ADMIN_PORT
    # Only the proxy is published: nothing reaches the model server around it.
    exposed = {target for _, target in ports.values()}
    assert exposed == {DATA_PORT, ADMIN_PORT}


def test_sidecar_fronts_the_model_server_in_its_own_pod(tmp_path: Path) -> None:
    docs = _documents(ROOT / "config" / "kubernetes" / "sidecar.yaml")
    deployment = _one(docs, "Deployment")
    model = _container(deployment, "vllm")
    assert model["image"] == "vllm/vllm-openai:v0.6.0"
    settings, _, _ = _proxy_settings(docs, deployment, tmp_path)

    (backend,) = settings.backends
    url = urlsplit(backend.url)
    assert url.hostname == "127.0.0.1"
    model_ready = model["readinessProbe"]["httpGet"]
    assert url.port == _port(model, model_ready["port"]) == 8000
    # The proxy probes what the kubelet probes.
    assert settings.health.active.enabled and settings.health.active.path == model_ready["path"] == "/health"
    assert settings.retry.enabled


def test_standalone_runs_two_proxies_that_a_drain_cannot_both_take(tmp_path: Path) -> None:
    docs = _documents(ROOT / "config" / "kubernetes" / "standalone.yaml")
    deployment = _one(docs, "Deployment")
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2
    pdb = _one(docs, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["spec"]["minAvailable"] < replicas

    settings, _, _ = _proxy_settings(docs, deployment, tmp_path)
    # One backend per model-server replica (not one ClusterIP), so each is balanced and health-checked.
    assert len(settings.backends) >= 2
    assert settings.health.active.path == "/health" and settings.retry.enabled


_QUANTITY_UNITS = {
    **{s: 1024**n for n, s in enumerate(("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: 1000**n for n, s in enumerate(("", "k", "M", "G", "T", "P", "E")) if s},
}


def _quantity(value: str | int) -> int:
    """A Kubernetes resource quantity in bytes: 2Gi, 512Mi, 1G, 1e9, 1073741824."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?(?:[eE]\d+)?)([A-Za-z]*)", str(value))
    assert m and m.group(2) in _QUANTITY_UNITS, f"{value!r}: not a byte quantity"
    return int(float(m.group(1)) * _QUANTITY_UNITS[m.group(2)])


def _uncommented_sinks(text: str) -> str:
    """The config with its commented-out ``# sinks:`` example block turned back on."""
    lines = text.splitlines()
    start = next((n for n, line in enumerate(lines) if re.fullmatch(r"\s*# sinks:.*", line)), None)
    assert start is not None, "no commented-out `# sinks:` example"
    indent = lines[start].index("#")
    lines[start] = lines[start][:indent] + lines[start][indent + 2 :]
    for n in range(start + 1, len(lines)):
        line = lines[n]
        if not line.startswith(" " * indent + "#   "):
            break
        lines[n] = line[:indent] + line[indent + 2 :]
    return "\n".join(lines) + "\n"


# Volume sources a pod can write to; configMap, secret, downwardAPI and projected are read-only.
WRITABLE_VOLUMES = ("emptyDir", "persistentVolumeClaim", "ephemeral")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_mirror_spool_is_on_a_writable_volume_that_holds_it(path: Path, tmp_path: Path) -> None:
    """The root filesystem is read-only: a pod that mirrors (or is set up to, `enabled: false` with a
    mirror section) needs its spool_dir on a writable volume of its own, big enough for the spool."""
    docs = _documents(path)
    deployment = _one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment, "haproxy-ai")
    settings, text, _ = _proxy_settings(docs, deployment, tmp_path)
    mirror = settings.mirror
    if not mirror.enabled and "mirror" not in yaml.safe_load(text):
        pytest.skip(f"{path.name}: no mirror section")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    # A relative spool_dir lands in the working directory: the container's, else the image's.
    spool_dir = posixpath.join(container.get("workingDir") or _runtime_spool_home(), mirror.spool_dir)
    mounts = [m for m in container.get("volumeMounts", []) if _under(spool_dir, m["mountPath"])]
    assert mounts, f"mirror.spool_dir {spool_dir} is on the read-only root filesystem: mount a volume there"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))  # the innermost mount holds it
    assert not mount.get("readOnly", False), f"{mount['mountPath']} is mounted read-only"
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    kinds = [k for k in WRITABLE_VOLUMES if k in volume]
    assert kinds, f"volume {volume['name']} ({', '.join(k for k in volume if k != 'name')}) is not writable"
    # A spool belongs to one process: no other container of the pod mounts it.
    for other in pod["containers"]:
        if other["name"] != container["name"]:
            assert mount["name"] not in {m["name"] for m in other.get("volumeMounts", [])}, other["name"]

    if kinds == ["emptyDir"]:
        empty_dir = volume["emptyDir"] or {}
        assert empty_dir.get("medium") != "Memory", "a tmpfs spool counts against the memory limit"
        # The kubelet evicts the pod when an emptyDir outgrows its sizeLimit; the spool stays under its
        # own bound, with a segment's worth of room for checkpoints and filesystem overhead.
        assert "sizeLimit" in empty_dir, f"emptyDir {volume['name']}: set a sizeLimit"
        limit = _quantity(empty_dir["sizeLimit"])
        assert mirror.spool_max_bytes + mirror.segment_max_bytes <= limit, (mirror.spool_max_bytes, limit)

    # SIGTERM comes after preStop; the drain, then the sinks' flush, all within the grace period.
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > _prestop_sleep(container) + settings.listen.shutdown_grace + mirror.flush_timeout

    # The commented-out postgres sink is a working example once uncommented, with its password from
    # the env (PGPASSWORD from a Secret, also commented out), never in the DSN.
    example = tmp_path / "with-sinks.yaml"
    example.write_text(_uncommented_sinks(text), encoding="utf-8")
    with_sinks = load_settings(example, environ={})
    (sink,) = with_sinks.mirror.sinks
    assert sink.type == "postgres" and sink.dsn and urlsplit(sink.dsn).password is None
    env_block = re.search(r"# - name: PGPASSWORD\n\s*#\s+valueFrom:\n\s*#\s+secretKeyRef:", path.read_text("utf-8"))
    assert env_block, f"{path.name}: no (commented-out) PGPASSWORD from a secretKeyRef"


def test_sidecar_mirrors_by_default() -> None:
    """At least one shipped manifest records: the sidecar (the standalone one is ready but off)."""
    docs = _documents(ROOT / "config" / "kubernetes" / "sidecar.yaml")
    configmap = _one(docs, "ConfigMap")
    assert parse_settings(yaml.safe_load(configmap["data"]["config.yaml"])).mirror.enabled


# ---------------------------------------------------------------------------------------------
# compose


def _fake_backend_options(args: list[str]) -> fake_backend.FakeBackendOptions:
    parser = argparse.ArgumentParser(prog="haproxy-ai fake-backend", exit_on_error=False)
    fake_backend.add_arguments(parser)
    parsed = parser.parse_args(args)
    assert (parsed.host, int(parsed.port)) == ("0.0.0.0", 8000), "replicas listen on 0.0.0.0:8000"
    return fake_backend.options_from_args(parsed)


def test_compose_defines_three_replicas_the_proxy_and_locust() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"r1", "r2", "r3", "proxy", "locust", "postgres"}

    replicas = {name: services[name] for name in ("r1", "r2", "r3")}
    for name, service in replicas.items():
        assert service["entrypoint"] == ["haproxy-ai", "fake-backend"], name
    options = {name: _fake_backend_options(s["command"]) for name, s in replicas.items()}
    assert [o.name for o in options.values()] == ["r1", "r2", "r3"]
    assert (options["r2"].tail_fraction, options["r2"].tail_latency) == (0.1, 2.0)
    assert options["r3"].error_rate == 0.05

    # One image, built from the repository root with its Dockerfile, for the proxy and the replicas.
    proxy = services["proxy"]
    for name in ("r1", "r2", "r3", "proxy"):
        service = services[name]
        assert service["image"] == proxy["image"]
        build = service["build"]
        context = (COMPOSE.parent / (build if isinstance(build, str) else build["context"])).resolve()
        assert context == ROOT and (context / build.get("dockerfile", "Dockerfile")).is_file()
    assert "entrypoint" not in proxy, "the proxy runs the image's own ENTRYPOINT"
    assert "test" in proxy["healthcheck"]
    # The replicas, and the database the mirror ships records to.
    assert {d: c["condition"] for d, c in proxy["depends_on"].items()} == dict.fromkeys(
        [*replicas, "postgres"], "service_healthy"
    )

    # The proxy's env (over the image's) and its mounted config file are a valid config: every replica,
    # by its service name and port.
    settings = _compose_proxy_settings(proxy)
    assert [(urlsplit(b.url).hostname, urlsplit(b.url).port) for b in settings.backends] == [
        (name, 8000) for name in replicas
    ]
    assert settings.admin.host == "0.0.0.0" and settings.admin.token
    assert (settings.listen.port, settings.admin.port) == (DATA_PORT, ADMIN_PORT)

    locust = services["locust"]
    assert locust["image"].startswith("locustio/locust:")
    locust_env = _compose_env(locust)
    assert locust_env["LOCUST_HOST"] == f"http://proxy:{settings.listen.port}"
    assert locust_env["LOCUST_HEADLESS"] == "true"
    (mount,) = locust["volumes"]
    source, target, *_ = mount.split(":")
    locustfile = locust_env["LOCUST_LOCUSTFILE"]
    assert locustfile.startswith(target + "/")
    assert (COMPOSE.parent / source).resolve() == ROOT / "loadtests"
    assert (ROOT / "loadtests" / locustfile[len(target) + 1 :]).is_file()
    assert {d: c["condition"] for d, c in locust["depends_on"].items()} == {"proxy": "service_healthy"}


def _compose_mounts(service: Mapping[str, Any]) -> list[tuple[str, str, str, bool]]:
    """The service's volumes as (type, source, target, read_only), short or long syntax; a bind
    mount's source is resolved against the compose file's directory."""
    out: list[tuple[str, str, str, bool]] = []
    for item in service.get("volumes", []):
        if isinstance(item, str):
            source, target, *rest = item.split(":")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            read_only = "ro" in (rest[0].split(",") if rest else [])
        else:
            kind, source, target = item["type"], item.get("source", ""), item["target"]
            read_only = bool(item.get("read_only", False))
        if kind == "bind":
            source = str((COMPOSE.parent / source).resolve())
        out.append((kind, source, posixpath.normpath(target), read_only))
    return out


def _compose_proxy_config(proxy: Mapping[str, Any]) -> Path:
    """The host file behind the proxy's HAPROXY_AI_CONFIG: a read-only bind mount of it."""
    config_path = _compose_env(proxy)["HAPROXY_AI_CONFIG"]
    binds = [(source, read_only) for kind, source, target, read_only in _compose_mounts(proxy) if target == config_path]
    assert binds, f"HAPROXY_AI_CONFIG={config_path} is not a file mounted into the proxy"
    ((source, read_only),) = binds
    assert read_only, f"{config_path}: mount it read-only (:ro)"
    path = Path(source)
    assert path.is_file() and path.is_relative_to(ROOT / "config"), path
    return path


def _compose_proxy_settings(proxy: Mapping[str, Any]) -> Settings:
    """What the proxy container loads: the image's env, the service's env, the mounted file."""
    env = {**_image_env(), **_compose_env(proxy)}
    return load_settings(environ={**env, "HAPROXY_AI_CONFIG": str(_compose_proxy_config(proxy))})


def test_compose_proxy_mirrors_to_the_compose_postgres_from_a_spool_volume() -> None:
    compose = _compose()
    services = compose["services"]
    proxy, postgres = services["proxy"], services["postgres"]

    # The file alone is valid, as `haproxy-ai check-config config/compose-proxy.yaml` sees it.
    config_file = _compose_proxy_config(proxy)
    alone = load_settings(config_file, environ={})
    assert alone.mirror.enabled
    settings = _compose_proxy_settings(proxy)
    # The env wins over the file: the backends are those of HAPROXY_AI_BACKENDS (the file agrees).
    env_backends = _compose_env(proxy)["HAPROXY_AI_BACKENDS"].split()
    assert [b.url for b in settings.backends] == env_backends == [b.url for b in alone.backends]

    mirror = settings.mirror
    assert mirror.enabled
    (sink,) = [s for s in mirror.sinks if s.type == "postgres"]
    dsn = urlsplit(sink.dsn)
    db_env = _compose_env(postgres)
    assert dsn.scheme in ("postgresql", "postgres"), dsn.scheme
    assert dsn.hostname == "postgres" and dsn.hostname in services
    container_ports = {int(str(p).split(":")[-1]) for p in postgres.get("ports", [])} or {5432}
    assert (dsn.port or 5432) in container_ports
    assert dsn.username == db_env["POSTGRES_USER"] and dsn.path.lstrip("/") == db_env["POSTGRES_DB"]
    # The password is not in the file: libpq's PGPASSWORD, from the very variable the database is created
    # with (same default), so setting POSTGRES_PASSWORD changes both.
    assert dsn.password is None, "the DSN is a secret in a file in git: no password in it"
    assert proxy["environment"]["PGPASSWORD"] == postgres["environment"]["POSTGRES_PASSWORD"]
    assert _compose_env(proxy)["PGPASSWORD"], "PGPASSWORD needs a default, as POSTGRES_PASSWORD has"
    # The database is up before the proxy starts; it can only be healthy with a healthcheck.
    assert proxy["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "test" in postgres["healthcheck"]

    # The spool is on a named volume (it survives `down`/`up`), writable, and that volume is mounted on the
    # directory the image creates for UID 10001, so a new volume starts owned by the user that writes it.
    spool_dir = posixpath.join(_runtime_spool_home(), mirror.spool_dir)  # a relative spool_dir: WORKDIR
    mounts = [m for m in _compose_mounts(proxy) if _under(spool_dir, m[2])]
    assert mounts, f"mirror.spool_dir {spool_dir} is on no volume of the proxy service"
    kind, source, target, read_only = max(mounts, key=lambda m: len(m[2]))
    assert kind == "volume" and source in (compose.get("volumes") or {}), f"{source}: use a named volume"
    assert not read_only
    assert target in _owned_dirs(_dockerfile()[-1]), f"{target}: not a directory the image hands to its user"
    # One process per spool: no other service mounts the proxy's spool volume.
    for name, service in services.items():
        if name != "proxy":
            assert source not in {m[1] for m in _compose_mounts(service)}, f"{name} also mounts {source}"

    # `docker compose stop` waits for the drain and then the sinks' flush.
    stop_grace = parse_duration(proxy["stop_grace_period"])
    assert stop_grace > settings.listen.shutdown_grace + mirror.flush_timeout


def test_compose_publishes_on_loopback_only() -> None:
    services = _compose()["services"]
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert set(published) == {"proxy", "postgres"}
    for ports in published.values():
        for port in ports:
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), port
    assert {int(p.split(":")[-1]) for p in published["proxy"]} == {DATA_PORT, ADMIN_PORT}

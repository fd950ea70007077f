"""Config parsing: typed values, defaults, precedence, and errors that name their key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from haproxy_ai.cli import main
from haproxy_ai.settings import (
    ConfigError,
    format_duration,
    load_settings,
    parse_duration,
    parse_settings,
    parse_size,
    settings_to_dict,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("2s", 2.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("0", 0.0), (3, 3.0), ("500us", 0.0005)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "2 parsecs", "-1s", "s", "1s2", True, None, "inf"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"), [("10MiB", 10 * 2**20), ("512k", 512_000), ("1GB", 10**9), (42, 42), ("7", 7)]
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["10 bananas", "-1", "MiB", False, 1.5])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_format_duration_round_trips() -> None:
    for seconds in (0.25, 2.0, 90.0, 300.0, 3600.0, 0.0):
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_shipped_configs_are_valid() -> None:
    minimal = load_settings(ROOT / "config" / "minimal.yaml", environ={})
    assert minimal.backends
    full = load_settings(ROOT / "config" / "haproxy-ai.yaml", environ={})
    defaults = parse_settings({"backends": [{"url": b.url, "name": b.name, "weight": b.weight} for b in full.backends]})
    # The reference file documents every key with its default value.
    assert full == defaults
    fleet = load_settings(ROOT / "config" / "pools.yaml", environ={})
    assert [p.name for p in fleet.pools] == ["llama", "qwen", "embed"]
    assert [p.balancer.type for p in fleet.pools] == ["hash", "load_aware", "p2c"]


def test_errors_name_key_path_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "listen:\n"
        "  port: 8080\n"
        "  prot: 1\n"
        "backends:\n"
        "  - url: http://127.0.0.1:8001\n"
        "  - url: http://127.0.0.1:8002\n"
        "    weight: 0\n"
        "  - url: ftp://x\n"
        "timeouts:\n"
        "  connect: soon\n"
        "balancer:\n"
        "  type: random\n"
        "mirrorr: {}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, environ={})
    lines = str(info.value).splitlines()
    assert f"{cfg}:3: listen.prot: unknown key (did you mean 'port'?)" in lines
    assert f"{cfg}:7: backends[1].weight: must be > 0" in lines
    assert any(line.startswith(f"{cfg}:8: backends[2].url: unsupported scheme 'ftp'") for line in lines)
    assert any(line.startswith(f"{cfg}:10: timeouts.connect: 'soon' is not a duration") for line in lines)
    assert any(line.startswith(f"{cfg}:12: balancer.type: must be one of p2c, round_robin") for line in lines)
    assert any(line.startswith(f"{cfg}:13: mirrorr: unknown key") for line in lines)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "backends: at least one backend is required"),
        ({"backends": []}, "backends: at least one backend is required"),
        ({"backends": [{"url": "http://a:1"}, {"url": "http://b:1", "name": "a:1"}]}, "backends[1].name: duplicate"),
        ({"backends": [{"url": "http://a:1", "weight": -2}]}, "backends[0].weight: must be > 0"),
        ({"backends": [{"url": "http://u:p@a:1"}]}, "backends[0].url: must not embed credentials"),
        ({"backends": [{"url": "a:1"}]}, "backends[0].url: unsupported scheme"),
        ({"backends": [{"name": "x"}]}, "backends[0].url: is required"),
        ({"backends": "http://a:1"}, "backends: must be a list"),
        ({"backends": ["http://a:1"], "listen": {"port": 70000}}, "listen.port: must be <= 65535"),
        ({"backends": ["http://a:1"], "limits": {"max_request_body": "lots"}}, "limits.max_request_body:"),
        ({"backends": ["http://a:1"], "admin": {"port": 8080}}, "admin.port: must differ from listen.port"),
        ({"backends": ["http://a:1"], "upstream": {"backend_header": "maybe"}}, "upstream.backend_header:"),
        ({"backends": ["http://a:1"], "timeouts": []}, "timeouts: must be a mapping"),
    ],
)
def test_validation_errors(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(data)
    assert message in str(info.value)


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("listen: {port: 7000, host: 0.0.0.0}\nbackends: [{url: 'http://file:1', name: f}]\n")
    env = {"HAPROXY_AI_PORT": "7100", "HAPROXY_AI_BACKENDS": "http://e1:1,weight=2  http://e2:1,name=two"}
    s = load_settings(cfg, environ=env)
    assert s.listen.port == 7100 and s.listen.host == "0.0.0.0"
    assert [(b.name, b.url, b.weight) for b in s.backends] == [("e1:1", "http://e1:1", 2), ("two", "http://e2:1", 1)]
    s = load_settings(cfg, {"port": "7200", "backend": ["http://flag:1"]}, environ=env)
    assert s.listen.port == 7200
    assert [b.url for b in s.backends] == ["http://flag:1"]
    s = load_settings(None, environ={"HAPROXY_AI_CONFIG": str(cfg)})
    assert s.listen.port == 7000


def test_errors_from_flags_and_env_name_their_source() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"backend": ["http://a:1,weight=x"]}, environ={"HAPROXY_AI_ADMIN_PORT": "-1"})
    text = str(info.value)
    assert "--backend: backends[0].weight: expected an integer, got 'x'" in text
    assert "env HAPROXY_AI_ADMIN_PORT: admin.port: must be >= 0" in text
    with pytest.raises(ConfigError, match="unexpected 'wieght=2'"):
        load_settings(None, {"backend": ["http://a:1,wieght=2"]}, environ={})


def test_settings_are_frozen() -> None:
    s = parse_settings({"backends": ["http://a:1"]})
    with pytest.raises(AttributeError):
        s.listen.port = 1  # type: ignore[misc]


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("backends:\n  - url: http://127.0.0.1:8001\n    weight: 2\ntimeouts: {first_byte: 90s}\n")
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "first_byte: 90s" in out and "weight: 2" in out and "max_request_body: 10MiB" in out

    bad = tmp_path / "bad.yaml"
    bad.write_text("backends:\n  - url: http://127.0.0.1:8001\n  - url: http://127.0.0.1:8002\n    weight: 0\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4: backends[1].weight: must be > 0" in err

    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err

    broken = tmp_path / "broken.yaml"
    broken.write_text("backends: [\n")
    assert main(["check-config", str(broken)]) == 2
    assert "invalid YAML" in capsys.readouterr().err

    dup = tmp_path / "dup.yaml"
    dup.write_text("listen: {port: 1}\nlisten: {port: 2}\nbackends: ['http://a:1']\n")
    assert main(["check-config", str(dup)]) == 2
    assert "duplicate key 'listen'" in capsys.readouterr().err


def test_serve_with_bad_config_exits_2_and_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--backend", "http://a:1,weight=0", "--port", "0", "--admin-port", "0"]) == 2
    assert "backends[0].weight: must be > 0" in capsys.readouterr().err


def test_the_printed_effective_config_loads_back_to_the_same_settings() -> None:
    for name in ("haproxy-ai.yaml", "pools.yaml"):
        settings = load_settings(ROOT / "config" / name, environ={})
        assert parse_settings(settings_to_dict(settings)) == settings, name

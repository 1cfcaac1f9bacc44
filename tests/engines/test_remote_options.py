"""RemoteConfig and the command line's --remote: what a user may type, and the clear refusal of what cannot
work (no server needed; the engine against a live server is tested in tests/remote)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from scanedge.cli import build_parser
from scanedge.cli.arguments import engine_options
from scanedge.engines import EngineConfig, RemoteConfig, open_engine
from scanedge.engines.remote import RemoteEngine
from scanedge.errors import ConfigError


def test_the_url_gives_address_model_and_version():
    opts = RemoteConfig("grpc://127.0.0.1:8001/lesions/3")
    assert (opts.host, opts.port, opts.model, opts.version, opts.tls) == ("127.0.0.1", 8001, "lesions", "3", False)
    assert opts.address == "127.0.0.1:8001" and opts.target() == "grpc://127.0.0.1:8001/lesions/3"
    bare = RemoteConfig("grpc://localhost:8001")
    assert (bare.model, bare.version) == (None, None) and bare.target(
        "from-manifest"
    ) == "grpc://localhost:8001/from-manifest"
    ipv6 = RemoteConfig("grpc://[::1]:8001/m")
    assert ipv6.address == "[::1]:8001"
    assert RemoteConfig("grpc://127.0.0.1:8001", model="m", version="2").target() == "grpc://127.0.0.1:8001/m/2"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8000/m", "grpc:// or grpcs://"),
        ("127.0.0.1:8001", "grpc:// or grpcs://"),
        ("grpc://127.0.0.1/m", "host and a port"),
        ("grpc://127.0.0.1:0/m", "host and a port"),
        ("grpc://127.0.0.1:99999/m", "out of range"),
        ("grpc://127.0.0.1:80a1/m", "grpc://HOST:PORT"),
        ("grpc://127.0.0.1:8001/a/1/extra", "MODEL or MODEL/VERSION"),
        ("grpc://127.0.0.1:8001/m?x=1", "query"),
        ("grpc://user:pw@127.0.0.1:8001/m", "user"),
        ("grpc://127.0.0.1:8001/bad%20name", "letters, digits"),
        ("grpc://127.0.0.1:8001/" + "m" * 3000, "longer than"),
    ],
)
def test_urls_that_cannot_work_are_config_errors(url, why):
    with pytest.raises(ConfigError, match=why):
        RemoteConfig(url)


def test_plain_grpc_beyond_loopback_is_refused_unless_insecure_and_tls_is_not():
    with pytest.raises(ConfigError, match="unencrypted"):
        RemoteConfig("grpc://10.1.2.3:8001/m")
    assert RemoteConfig("grpc://10.1.2.3:8001/m", insecure=True).tls is False
    secure = RemoteConfig("grpcs://inference.example:8001/m", tls_ca=Path("ca.pem"))
    assert secure.tls and secure.target() == "grpcs://inference.example:8001/m"


def test_tls_files_need_tls_and_a_client_certificate_needs_its_key():
    with pytest.raises(ConfigError, match="plain gRPC"):
        RemoteConfig("grpc://127.0.0.1:8001/m", tls_ca=Path("ca.pem"))
    with pytest.raises(ConfigError, match="go together"):
        RemoteConfig("grpcs://127.0.0.1:8001/m", tls_cert=Path("client.pem"))


def test_limits_and_types():
    for bad in (
        {"timeout_s": 0},
        {"retries": -1},
        {"retries": 11},
        {"max_message_bytes": 10},
        {"health_interval_s": 0},
    ):
        with pytest.raises(ConfigError):
            RemoteConfig("grpc://127.0.0.1:8001/m", **bad)
    for bad in ({"timeout_s": "1"}, {"retries": 1.5}, {"insecure": 1}):
        with pytest.raises(TypeError):
            RemoteConfig("grpc://127.0.0.1:8001/m", **bad)
    with pytest.raises(ConfigError, match="in the URL"):
        RemoteConfig("grpc://127.0.0.1:8001/m", model="other")


def test_engine_options_carry_the_remote_and_stay_frozen_and_hashable():
    remote = RemoteConfig("grpc://127.0.0.1:8001/m")
    options = EngineConfig(backend="remote", remote=remote)
    assert hash(options) == hash(dataclasses.replace(options)) and options.remote is remote
    with pytest.raises(ConfigError, match="--remote"):
        EngineConfig(backend="remote")
    with pytest.raises(TypeError):
        EngineConfig(backend="remote", remote="grpc://127.0.0.1:8001/m")  # type: ignore[arg-type]
    assert EngineConfig(backend="ort", remote=remote).backend == "ort"  # other backends ignore it


def test_open_engine_routes_remote_without_reading_the_model_file():
    options = EngineConfig(backend="remote", remote=RemoteConfig("grpc://127.0.0.1:8001"))
    engine = open_engine("no/such/file.onnx", options, name="lesions")
    assert isinstance(engine, RemoteEngine) and not engine.is_active
    assert engine.name == "grpc://127.0.0.1:8001/lesions" and engine.health().status == "inactive"
    with pytest.raises(ConfigError, match="which model"):
        open_engine("x.onnx", options)


def test_the_command_line_remote_implies_the_backend_and_refuses_a_contradiction():
    parser = build_parser()
    args = parser.parse_args(["serve", "--remote", "grpc://127.0.0.1:8001/m/2", "--remote-timeout", "3"])
    options = engine_options(args)
    assert options.backend == "remote" and options.remote.timeout_s == 3 and options.remote.version == "2"
    args = parser.parse_args(["serve", "--engine", "remote", "--remote", "grpc://127.0.0.1:8001"])
    assert engine_options(args).backend == "remote"
    with pytest.raises(ConfigError, match="does not go with --backend ort"):
        engine_options(parser.parse_args(["serve", "--backend", "ort", "--remote", "grpc://127.0.0.1:8001"]))
    with pytest.raises(ConfigError, match="needs the server's address"):
        engine_options(parser.parse_args(["serve", "--backend", "remote"]))
    with pytest.raises(ConfigError, match="unencrypted"):
        engine_options(parser.parse_args(["segment", "x.dcm", "--remote", "grpc://192.168.1.20:8001"]))
    args = parser.parse_args(["segment", "x.dcm", "--remote", "grpc://192.168.1.20:8001", "--remote-insecure"])
    assert engine_options(args).remote.insecure

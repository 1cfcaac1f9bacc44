"""How to run a model: one frozen object for every backend, handed intact from the caller to the engine.

The command line, the pipeline, the server and the bench all build one :class:`EngineConfig` and pass
it down unchanged, so a setting cannot get lost or renamed on the way; only the engine reads it.
Settings a backend does not use (ONNX Runtime's threads for a TensorRT plan, the CUDA device for ONNX
Runtime) are ignored by that backend, never rejected, so one object works for ``backend="auto"``.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

from scanedge._moved import forward_names
from scanedge.errors import ConfigError

__all__ = [
    "BACKENDS",
    "OPTIMIZATION_LEVELS",
    "REMOTE_SCHEMES",
    "Backend",
    "EngineConfig",
    "OptimizationLevel",
    "Provider",
    "RemoteConfig",
    "Threads",
    "parse_threads",
]

#: which inference backend runs the model: ``ort`` (ONNX Runtime, an ``.onnx`` file), ``tensorrt`` (a
#: TensorRT plan), ``auto`` (a plan built from the same graph for this GPU when there is one, else ORT), or
#: ``remote`` (a serving engine speaking the Open Inference Protocol; see :class:`RemoteConfig`)
Backend = Literal["auto", "ort", "tensorrt", "remote"]
BACKENDS: tuple[str, ...] = get_args(Backend)

#: ONNX Runtime graph optimization levels, from none to all (``all`` adds layout changes for this CPU)
OptimizationLevel = Literal["disable", "basic", "extended", "all"]
OPTIMIZATION_LEVELS: tuple[str, ...] = get_args(OptimizationLevel)

#: an ONNX Runtime execution provider: its name, or its name and provider options
Provider = str | tuple[str, Mapping[str, Any]]

#: intra-op threads: a count, ``"auto"`` (measured at start-up: :mod:`scanedge.engines.thread_probe`), or
#: None (ONNX Runtime's default: one per physical core)
Threads = int | Literal["auto"] | None


def parse_threads(text: str) -> int | Literal["auto"]:
    """A ``--threads`` value: ``auto`` or a count of at least 1 (ValueError otherwise, which argparse turns
    into its usual one-line usage error when this is an argument's ``type``)."""
    if text.strip().lower() == "auto":
        return "auto"
    count = int(text)
    if count < 1:
        raise ValueError(f"threads must be at least 1 (or auto), got {count}")
    return count


def _frozen_provider(provider: object) -> str | tuple[str, Mapping[str, Any]]:
    if isinstance(provider, str):
        return provider
    if isinstance(provider, tuple) and len(provider) == 2 and isinstance(provider[0], str):
        name, opts = provider
        if not isinstance(opts, Mapping):
            raise TypeError(f"provider {name!r}: options must be a mapping, got {type(opts).__name__}")
        return name, MappingProxyType(dict(opts))
    raise TypeError(f"an execution provider is a name or a (name, options) pair, got {provider!r}")


#: how the remote engine reaches its server: gRPC in clear, or gRPC over TLS
REMOTE_SCHEMES = ("grpc", "grpcs")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_MAX_URL = 2048


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RemoteConfig:
    """Where and how the ``remote`` backend reaches a serving engine (NVIDIA Triton, KServe, Seldon MLServer)
    over the Open Inference Protocol (KServe V2) on gRPC, tensors sent as raw bytes.

    ``url`` is ``grpc://HOST:PORT[/MODEL[/VERSION]]``, or ``grpcs://`` for TLS. Without a model in the URL
    (or ``model``), each served model is asked for under its manifest's name, which is the name
    ``scanedge export-triton`` gives its repository entry. A server beyond loopback is refused in clear
    text (the tensors are patient images) unless ``insecure`` is set, as the runtime's own bind is.
    Values that cannot work raise :class:`~scanedge.errors.ConfigError`; wrong Python types ``TypeError``.
    """

    #: ``grpc://HOST:PORT[/MODEL[/VERSION]]`` or ``grpcs://...`` (TLS)
    url: str
    #: the model's name on the server; default: the URL's, else the manifest's name
    model: str | None = None
    #: the model version; default: the URL's, else the server's choice (its policy, e.g. the latest)
    version: str | None = None
    #: seconds one call (one inference, one metadata query) may take before it fails (default 10)
    timeout_s: float = 10.0
    #: further attempts after a call finds the server UNAVAILABLE (connection refused, restarting); default 2
    retries: int = 2
    #: pause before the first retry, doubled for each further one (default 0.05 s)
    retry_backoff_s: float = 0.05
    #: TLS: the CA certificate(s) that sign the server's certificate (PEM); default: the system's roots
    tls_ca: Path | None = None
    #: TLS client certificate chain (PEM) for servers that require one; goes with ``tls_key``
    tls_cert: Path | None = None
    #: TLS client private key (PEM); goes with ``tls_cert``
    tls_key: Path | None = None
    #: allow plain gRPC to a server beyond this machine (the tensors cross the network unencrypted)
    insecure: bool = False
    #: the largest message sent or accepted, bytes (default 64 MiB); a larger answer is refused by gRPC
    max_message_bytes: int = 64 * 1024 * 1024
    #: seconds between the health probes that keep PONG's view of the server current (default 2)
    health_interval_s: float = 2.0

    #: the server's host, read from ``url``
    host: str = field(init=False, default="")
    #: the server's port, read from ``url``
    port: int = field(init=False, default=0)
    #: whether ``url`` asks for TLS (``grpcs://``)
    tls: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if not isinstance(self.url, str):
            raise TypeError(f"RemoteConfig.url must be a str, got {self.url!r}")
        for name in ("timeout_s", "retry_backoff_s", "health_interval_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"RemoteConfig.{name} must be a number, got {value!r}")
        for name in ("retries", "max_message_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"RemoteConfig.{name} must be an int, got {value!r}")
        if not isinstance(self.insecure, bool):
            raise TypeError(f"RemoteConfig.insecure must be a bool, got {self.insecure!r}")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        scheme, host, port, model, version = self._parse_url(self.url)
        for name, from_url in (("model", model), ("version", version)):
            given = getattr(self, name)
            if given is not None and not isinstance(given, str):
                raise TypeError(f"RemoteConfig.{name} must be a str, got {given!r}")
            if given is not None and from_url is not None and given != from_url:
                raise ConfigError(f"the remote {name} is {from_url!r} in the URL but {given!r} was also given")
            value = given if given is not None else from_url
            if value is not None and not _NAME.fullmatch(value):
                raise ConfigError(f"remote {name} {value!r}: use 1-128 letters, digits, '_', '.' or '-'")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "tls", scheme == "grpcs")
        if not self.timeout_s > 0 or not self.health_interval_s > 0 or self.retry_backoff_s < 0:
            raise ConfigError("remote timeout and health interval must be > 0, and the retry backoff >= 0")
        if not 0 <= self.retries <= 10:
            raise ConfigError(f"remote retries must be 0-10, got {self.retries}")
        if not 1024 <= self.max_message_bytes <= 2**31 - 1:
            raise ConfigError(f"remote max_message_bytes must be 1 KiB - 2 GiB, got {self.max_message_bytes}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("a TLS client certificate and its key go together (--remote-cert and --remote-key)")
        if not self.tls and any(p is not None for p in (self.tls_ca, self.tls_cert, self.tls_key)):
            raise ConfigError(f"TLS files were given but {self.url} is plain gRPC; use grpcs://{self.address}")
        if not self.tls and not self.insecure and not _is_loopback(host):
            raise ConfigError(
                f"refusing to send images to {self.address} unencrypted: use grpcs:// (TLS), or allow plain "
                "gRPC with --remote-insecure if the network is otherwise protected"
            )

    @staticmethod
    def _parse_url(url: str) -> tuple[str, str, int, str | None, str | None]:
        if len(url) > _MAX_URL:
            raise ConfigError(f"the remote URL is longer than {_MAX_URL} characters")
        example = "grpc://HOST:PORT[/MODEL[/VERSION]], e.g. grpc://127.0.0.1:8001/my-model"
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in REMOTE_SCHEMES:
            raise ConfigError(f"remote URL {url!r}: the scheme must be grpc:// or grpcs:// ({example})")
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:  # a port that is not a number, or out of range
            raise ConfigError(f"remote URL {url!r}: {exc} ({example})") from None
        if not host or port is None or port == 0:
            raise ConfigError(f"remote URL {url!r} needs a host and a port ({example})")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigError(f"remote URL {url!r}: no user, query or fragment is understood ({example})")
        path = [p for p in parts.path.split("/") if p]
        if len(path) > 2:
            raise ConfigError(f"remote URL {url!r}: the path is MODEL or MODEL/VERSION ({example})")
        model = path[0] if path else None
        version = path[1] if len(path) > 1 else None
        return parts.scheme, host, port, model, version

    @property
    def address(self) -> str:
        """``HOST:PORT`` as gRPC takes it (IPv6 hosts in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def target(self, model: str | None = None) -> str:
        """``grpc[s]://HOST:PORT/MODEL[/VERSION]``: how messages and PONG name where a model runs."""
        name = self.model or model or "?"
        scheme = "grpcs" if self.tls else "grpc"
        return f"{scheme}://{self.address}/{name}" + (f"/{self.version}" if self.version else "")


@dataclass(frozen=True)
class EngineConfig:
    """Every setting that decides how a model runs. Frozen; compare and copy with ``dataclasses.replace``.

    Out-of-range values a user can set (a thread count of 0, an unknown backend) raise
    :class:`~scanedge.errors.ConfigError`; values of the wrong Python type raise ``TypeError``.
    """

    #: ``auto`` (default), ``ort``, ``tensorrt`` or ``remote``; see :data:`Backend`
    backend: Backend = "auto"
    #: ONNX Runtime intra-op threads; ``None`` (default) lets ONNX Runtime use one per physical core;
    #: ``"auto"`` measures 1, 2, ... threads at start-up and takes the fewest that are not clearly slower
    #: (:mod:`scanedge.engines.thread_probe`; the choice is in the engine's ``describe()`` and in PONG)
    threads: Threads = None
    #: ONNX Runtime pool threads busy-wait between (and shortly after) runs instead of sleeping. Default
    #: True (ONNX Runtime's own default): it helps a process that does nothing but inference. In the
    #: streaming runtime, whose I/O and worker threads need the same cores, it hurts: measured on two
    #: cores with the demo model at 10 slices/s, server-side inference took 7.6-11.2 ms (p50) with spinning
    #: and 5.3-7.5 ms without, and flat-out p99 dropped by a third; so the server turns it off.
    spinning: bool = True
    #: ONNX Runtime execution providers in priority order (default CPU only). The first one must start:
    #: ONNX Runtime's silent fallback to the next is refused (see :mod:`scanedge.engines.ort_session`)
    providers: tuple[Provider, ...] = field(default=("CPUExecutionProvider",), hash=False)
    #: ONNX Runtime graph optimization level at session creation (default ``all``)
    optimization: OptimizationLevel = "all"
    #: inferences on zeros when the engine is activated, so the first slice does not pay for lazy set-up
    warmup_runs: int = 2
    #: extra ONNX Runtime session config entries (``SessionOptions.add_session_config_entry``), applied
    #: after scanedge's own, so they can override them; default none
    session_config: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    #: CUDA device index a TensorRT plan runs on (default 0)
    device: int = 0
    #: TensorRT: capture each input shape's enqueue into a CUDA graph and replay it (default True);
    #: removes the per-layer launch overhead that dominates small models
    cuda_graphs: bool = True
    #: the serving engine the ``remote`` backend sends tensors to (required for it; ignored by the others)
    remote: RemoteConfig | None = None

    def __post_init__(self) -> None:
        for name in ("spinning", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"EngineConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("threads", "warmup_runs", "device"):
            value = getattr(self, name)
            if name == "threads" and value in (None, "auto"):
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"EngineConfig.{name} must be an int{' or auto' * (name == 'threads')}, got {value!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if self.remote is not None and not isinstance(self.remote, RemoteConfig):
            raise TypeError(f"EngineConfig.remote must be RemoteConfig, got {type(self.remote).__name__}")
        if self.backend == "remote" and self.remote is None:
            raise ConfigError("the remote backend needs the server's address: --remote grpc://HOST:PORT[/MODEL]")
        if isinstance(self.threads, int) and self.threads < 1:
            raise ConfigError(f"threads must be at least 1 (or unset for ONNX Runtime's default), got {self.threads}")
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ConfigError(
                f"unknown ONNX Runtime optimization level {self.optimization!r}; use one of "
                f"{', '.join(OPTIMIZATION_LEVELS)}"
            )
        if self.warmup_runs < 0:
            raise ConfigError(f"warmup_runs must be 0 or more, got {self.warmup_runs}")
        if self.device < 0:
            raise ConfigError(f"the CUDA device index must be 0 or more, got {self.device}")
        if isinstance(self.providers, str) or not isinstance(self.providers, Iterable):
            raise TypeError(f"EngineConfig.providers must be a tuple of providers, got {self.providers!r}")
        providers = tuple(_frozen_provider(p) for p in self.providers)
        if not providers:
            raise ConfigError("at least one ONNX Runtime execution provider is needed, e.g. CPUExecutionProvider")
        object.__setattr__(self, "providers", providers)
        if not isinstance(self.session_config, Mapping):
            raise TypeError(f"EngineConfig.session_config must be a mapping, got {type(self.session_config).__name__}")
        for key, value in self.session_config.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"session config entries are str -> str, got {key!r}: {value!r}")
        object.__setattr__(self, "session_config", MappingProxyType(dict(self.session_config)))

    @property
    def provider_names(self) -> tuple[str, ...]:
        """The execution providers' names, in priority order."""
        return tuple(p if isinstance(p, str) else p[0] for p in self.providers)


#: earlier names of configuration classes (every frozen configuration is now called ...Config)
__getattr__ = forward_names(
    __name__,
    {
        "EngineOptions": ("scanedge.engines.options", "EngineConfig"),
        "RemoteOptions": ("scanedge.engines.options", "RemoteConfig"),
    },
)

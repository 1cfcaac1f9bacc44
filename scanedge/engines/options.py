"""How to run a model: one frozen object for every backend, handed intact from the caller to the engine.

The command line, the pipeline, the server and the bench all build one :class:`EngineOptions` and pass
it down unchanged, so a setting cannot get lost or renamed on the way; only the engine reads it.
Settings a backend does not use (ONNX Runtime's threads for a TensorRT plan, the CUDA device for ONNX
Runtime) are ignored by that backend, never rejected, so one object works for ``backend="auto"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from scanedge.errors import ConfigError

__all__ = [
    "BACKENDS",
    "OPTIMIZATION_LEVELS",
    "Backend",
    "EngineOptions",
    "OptimizationLevel",
    "Provider",
    "Threads",
    "parse_threads",
]

#: which inference backend runs the model: ``ort`` (ONNX Runtime, an ``.onnx`` file), ``tensorrt`` (a
#: TensorRT plan), or ``auto`` (a plan built from the same graph for this GPU when there is one, else ORT)
Backend = Literal["auto", "ort", "tensorrt"]
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


@dataclass(frozen=True)
class EngineOptions:
    """Every setting that decides how a model runs. Frozen; compare and copy with ``dataclasses.replace``.

    Out-of-range values a user can set (a thread count of 0, an unknown backend) raise
    :class:`~scanedge.errors.ConfigError`; values of the wrong Python type raise ``TypeError``.
    """

    #: ``auto`` (default), ``ort`` or ``tensorrt``; see :data:`Backend`
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

    def __post_init__(self) -> None:
        for name in ("spinning", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"EngineOptions.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("threads", "warmup_runs", "device"):
            value = getattr(self, name)
            if name == "threads" and value in (None, "auto"):
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"EngineOptions.{name} must be an int{' or auto' * (name == 'threads')}, got {value!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
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
            raise TypeError(f"EngineOptions.providers must be a tuple of providers, got {self.providers!r}")
        providers = tuple(_frozen_provider(p) for p in self.providers)
        if not providers:
            raise ConfigError("at least one ONNX Runtime execution provider is needed, e.g. CPUExecutionProvider")
        object.__setattr__(self, "providers", providers)
        if not isinstance(self.session_config, Mapping):
            raise TypeError(f"EngineOptions.session_config must be a mapping, got {type(self.session_config).__name__}")
        for key, value in self.session_config.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"session config entries are str -> str, got {key!r}: {value!r}")
        object.__setattr__(self, "session_config", MappingProxyType(dict(self.session_config)))

    @property
    def provider_names(self) -> tuple[str, ...]:
        """The execution providers' names, in priority order."""
        return tuple(p if isinstance(p, str) else p[0] for p in self.providers)

"""The one place that creates ONNX Runtime sessions, in the manner of Polygraphy's session loaders.

An :class:`OrtSessionLoader` is a small callable that turns a model (path or bytes) and
:class:`~scanedge.engines.options.EngineConfig` into an ``onnxruntime.InferenceSession``. The engine,
the bench's baseline session and the converter's offline optimizer all use it, so they all get the
same session settings, the same error mapping and the same two guarantees:

* **No silent provider fallback.** ONNX Runtime quietly drops to the CPU when a requested provider
  cannot start (missing CUDA libraries, for instance); a console that believes it runs on its GPU while
  it runs on two CPU cores misses its latency budget without anyone knowing. So the first requested
  provider must be the first active one, or loading fails with :class:`ProviderUnavailableError`.
* **No telemetry.** Since 1.29 the official Linux wheels of ONNX Runtime carry Microsoft's 1DS
  telemetry: on ``import onnxruntime`` they write a device id and an event store under
  ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/Microsoft/DeveloperTools/.onnxruntime`` and a session file
  ``$TMPDIR/.ses``, and a few seconds later start resolving ``mobile.events.data.microsoft.com`` to
  upload, retrying for as long as the process lives. A console service must never phone home. The only
  complete opt-out is the environment variable ``ORT_DISABLE_TELEMETRY=1`` *before* ONNX Runtime is
  first imported (``disable_telemetry_events()`` afterwards only drops some events; the uploader keeps
  running). This module sets it when it is imported, which ``import scanedge`` does before any scanedge
  code imports ONNX Runtime, and calls ``disable_telemetry_events()`` too for a runtime that was
  imported earlier by the embedding application (which is then warned about once).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from scanedge.engines.options import EngineConfig
from scanedge.engines.thread_probe import ThreadChoice, choose
from scanedge.errors import EngineError, ModelFileError, ProviderUnavailableError

__all__ = ["TELEMETRY_ENV", "OrtSessionLoader", "import_onnxruntime"]

log = logging.getLogger("scanedge.engines")

#: ONNX Runtime's telemetry opt-out, read once when the runtime initialises (at import)
TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def _opt_out_before_import() -> bool:
    """Set the opt-out; True when it is in time (ONNX Runtime not imported yet, or imported with it set)."""
    in_time = "onnxruntime" not in sys.modules or os.environ.get(TELEMETRY_ENV) == "1"
    os.environ[TELEMETRY_ENV] = "1"
    return in_time


_TELEMETRY_OFF_IN_TIME = _opt_out_before_import()
_onnxruntime: Any = None


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module with its telemetry off. Import ONNX Runtime through this, not directly."""
    global _onnxruntime
    if _onnxruntime is None:
        _opt_out_before_import()
        import onnxruntime

        onnxruntime.disable_telemetry_events()
        if not _TELEMETRY_OFF_IN_TIME:
            log.warning(
                "onnxruntime was imported before scanedge and without %s=1, so its telemetry uploader runs in "
                "this process; set %s=1 in the environment (or import scanedge first) to stop it",
                TELEMETRY_ENV,
                TELEMETRY_ENV,
            )
        _onnxruntime = onnxruntime
    return _onnxruntime


def _ort_errors(*names: str) -> tuple[type[BaseException], ...]:
    """ONNX Runtime's exception classes by name (they live in its private pybind module)."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state
    except ImportError:  # pragma: no cover - layout of very old or future wheels
        return ()
    return tuple(cls for cls in (getattr(state, n, None) for n in names) if isinstance(cls, type))


class OrtSessionLoader:
    """A callable that creates an ``onnxruntime.InferenceSession`` for one model with one set of options.

    ``model`` is a path or the serialized model bytes. ``optimized_model_path`` makes ONNX Runtime write
    the graph it optimized at ``options.optimization`` to that file (the converter's offline optimizer).
    Every call creates a new session. Errors: :class:`ModelFileError` when the model is missing,
    unreadable or not ONNX (e.g. truncated); :class:`ProviderUnavailableError` when the first requested
    execution provider does not start; :class:`EngineError` when ONNX Runtime refuses a readable model.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        options: EngineConfig | None = None,
        *,
        optimized_model_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(model, (str, os.PathLike, bytes)):
            raise TypeError(f"model must be a path or bytes, got {type(model).__name__}")
        if options is not None and not isinstance(options, EngineConfig):
            raise TypeError(f"options must be EngineConfig, got {type(options).__name__}")
        self.model: str | bytes = model if isinstance(model, bytes) else os.fspath(model)
        self.options = options if options is not None else EngineConfig()
        self.optimized_model_path = os.fspath(optimized_model_path) if optimized_model_path is not None else None
        self.thread_choice: ThreadChoice | None = None  # what threads="auto" chose, once a session was made

    @property
    def name(self) -> str:
        """How messages name the model: its path, or ``<bytes>``."""
        return "<bytes>" if isinstance(self.model, bytes) else str(self.model)

    def __repr__(self) -> str:
        return f"OrtSessionLoader({self.name!r}, {self.options!r})"

    def session_options(self, threads: int | None = None) -> Any:
        """The ``onnxruntime.SessionOptions`` these options stand for (with ``threads`` intra-op threads
        instead of the options' count, when given: how ``"auto"`` is resolved)."""
        ort = import_onnxruntime()
        opts = self.options
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[opts.optimization]
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        if threads is not None:
            so.intra_op_num_threads = threads
        elif isinstance(opts.threads, int):
            so.intra_op_num_threads = opts.threads
        if self.optimized_model_path is not None:
            so.optimized_model_filepath = self.optimized_model_path
        so.log_severity_level = 3
        if not opts.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        for key, value in opts.session_config.items():
            so.add_session_config_entry(key, value)
        return so

    def __call__(self) -> Any:
        """A new session; raises the errors listed in the class docstring. With ``threads="auto"`` the thread
        count is measured the first time for this model and these settings (``thread_choice`` says what)."""
        if self.options.threads != "auto":
            return self._session()
        choice, session = choose(self._probe_key(), self._session)
        self.thread_choice = choice
        return session

    def _probe_key(self) -> Any:
        """What a thread choice depends on: the model (its file's identity, or its bytes) and the other settings."""
        if isinstance(self.model, bytes):
            model: Any = hashlib.sha256(self.model).hexdigest()
        else:
            try:
                st = os.stat(self.model)
                model = (os.path.realpath(self.model), st.st_size, st.st_mtime_ns)
            except OSError:
                model = self.model  # the session's own loading reports the problem
        return model, repr(replace(self.options, threads=None, warmup_runs=0))

    def _session(self, threads: int | None = None) -> Any:
        ort = import_onnxruntime()
        requested = list(self.options.provider_names)
        available = ort.get_available_providers()
        missing = [p for p in requested if p not in available]
        if missing:
            raise ProviderUnavailableError(
                f"execution provider(s) {missing} are not in this onnxruntime build "
                f"(available: {available}); install the matching package (e.g. onnxruntime-gpu for CUDA) "
                "or choose another provider"
            )
        self._check_readable()
        providers = [p if isinstance(p, str) else (p[0], dict(p[1])) for p in self.options.providers]
        try:
            session = ort.InferenceSession(self.model, sess_options=self.session_options(threads), providers=providers)
        except _ort_errors("InvalidProtobuf", "NoSuchFile", "NoModel") as exc:
            raise ModelFileError(
                f"{self._short_name()} is not a readable ONNX model (not ONNX, or truncated): "
                f"ONNX Runtime says {_first_line(exc)}"
            ) from exc
        except Exception as exc:
            raise EngineError(f"ONNX Runtime could not load {self._short_name()}: {_first_line(exc)}") from exc
        active = session.get_providers()
        if active[:1] != requested[:1]:
            raise ProviderUnavailableError(
                f"requested {requested[0]} but ONNX Runtime started {active[0]} (it falls back silently "
                "when a provider's libraries fail to load); fix the provider's installation or request "
                f"{active[0]} explicitly"
            )
        return session

    def _short_name(self) -> str:
        return "the model bytes" if isinstance(self.model, bytes) else Path(self.model).name

    def _check_readable(self) -> None:
        """Missing, unreadable and empty files fail here with a plain reason, not ONNX Runtime's wording."""
        if isinstance(self.model, bytes):
            if not self.model:
                raise ModelFileError("the model bytes are empty; an ONNX model was expected")
            return
        try:
            size = os.stat(self.model).st_size
        except OSError as exc:
            raise ModelFileError(f"cannot read the model {self.model}: {exc.strerror or type(exc).__name__}") from exc
        if Path(self.model).is_dir():
            raise ModelFileError(f"{self.model} is a folder; an ONNX model file was expected")
        if size == 0:
            raise ModelFileError(f"{self._short_name()} is empty; an ONNX model was expected")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

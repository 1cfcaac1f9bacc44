"""Remote backend: the model runs on a serving engine (NVIDIA Triton, KServe, Seldon MLServer) that speaks the
Open Inference Protocol (KServe V2) over gRPC, while everything else stays next to the scanner.

Only the model's input tensor crosses the network, as raw bytes (``raw_input_contents``, never JSON
lists), and the outputs come back the same way. At activation the server's model metadata (input and
output names, datatypes, shapes) becomes the engine's tensor specs, so the pipeline checks them against
the manifest exactly as it checks a local ONNX graph; a model that is missing, of another version or not
ready is refused before the runtime starts listening.

gRPC failures are mapped here, at the boundary, into the :class:`~scanedge.errors.RemoteEngineError`
family: UNAVAILABLE (after ``retries`` attempts with a doubling backoff) and DEADLINE_EXCEEDED become
``REMOTE_UNAVAILABLE`` naming the address; NOT_FOUND and a model that is not ready ``REMOTE_MODEL_UNAVAILABLE``;
a refused request (INVALID_ARGUMENT and the like) ``REMOTE_REJECTED``; anything else ``REMOTE_FAILED``. The
server's own words are quoted (first line, bounded): they name tensors and shapes, never pixel values.

:meth:`RemoteEngine.health` follows the server: every call updates it, and a daemon thread probes the
model's readiness every ``health_interval_s`` so that it stays current while no slice flows (PONG reads
it). gRPC's reconnect backoff, which by default grows to two minutes, is capped at one second, so the
engine recovers within about a second of the server's return.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from scanedge.engines.base import Engine, EngineHealth, HealthStatus, TensorSpec
from scanedge.engines.options import RemoteConfig
from scanedge.errors import (
    ConfigError,
    RemoteEngineError,
    RemoteModelError,
    RemoteRejectedError,
    RemoteUnavailableError,
)
from scanedge.safe_text import printable

__all__ = ["RemoteEngine", "import_tritonclient"]

log = logging.getLogger("scanedge.engines")
T = TypeVar("T")

#: Open Inference Protocol datatypes scanedge can feed or read, as numpy dtypes
DATATYPES: dict[str, np.dtype] = {
    "FP32": np.dtype(np.float32),
    "FP16": np.dtype(np.float16),
    "FP64": np.dtype(np.float64),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "UINT16": np.dtype(np.uint16),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
}
_DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}

_REJECTED = {
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "OUT_OF_RANGE",
    "RESOURCE_EXHAUSTED",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "UNIMPLEMENTED",
}
_MAX_QUOTE = 240  # characters of a server's message quoted in ours


def import_tritonclient() -> tuple[Any, Any]:
    """``(tritonclient.grpc, InferenceServerException)``; ConfigError naming the extra when it is missing."""
    try:
        import tritonclient.grpc as grpcclient  # type: ignore[import-untyped]
        from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]
    except (ImportError, RuntimeError) as exc:  # tritonclient without gRPC raises RuntimeError at import
        raise ConfigError(
            "the remote backend needs tritonclient with gRPC support: pip install 'scanedge[remote]' "
            f"(or 'tritonclient[grpc]'); import failed with {type(exc).__name__}"
        ) from exc
    return grpcclient, InferenceServerException


def _quote(text: object) -> str:
    """The first line of what the server said, as plain text (no escape sequences, no control characters)."""
    lines = str(text or "").strip().splitlines()
    return printable(lines[0] if lines else "", _MAX_QUOTE).strip()


def _status_name(exc: Any) -> str:
    """``UNAVAILABLE`` from tritonclient's ``StatusCode.UNAVAILABLE`` (empty for client-side errors)."""
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    return str(status or "").rsplit(".", 1)[-1]


def _read_pem(path: Any, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(1024 * 1024 + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} {path}: {exc.strerror or type(exc).__name__}") from exc
    if not data or len(data) > 1024 * 1024:
        raise ConfigError(f"the TLS {what} {path} is empty or larger than 1 MiB; a PEM file was expected")
    return data


class RemoteEngine(Engine):
    """A model served by an Open Inference Protocol server, behind the same contract as a local engine.

    ``model`` is the name to ask the server for when ``options`` names none (the pipeline passes the
    manifest's name, which is the name ``scanedge export-triton`` gives the repository entry).
    """

    backend = "remote"

    def __init__(
        self,
        options: RemoteConfig,
        *,
        model: str | None = None,
        warmup_runs: int = 2,
        warmup_shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> None:
        if not isinstance(options, RemoteConfig):
            raise TypeError(f"options must be RemoteConfig, got {type(options).__name__}")
        name = options.model or model
        if not name:
            raise ConfigError(f"which model should {options.url} run? Give it in the URL: grpc://HOST:PORT/MODEL")
        self.remote = options
        self.model = name
        self.version = options.version or ""
        self.target = options.target(name)
        super().__init__(self.target, warmup_runs=warmup_runs, warmup_shapes=warmup_shapes)
        self._client: Any = None
        self._grpc: Any = None
        self._server_error: type[BaseException] = Exception
        self._requested: list[Any] = []
        self._server: dict[str, str] = {}
        self._health = EngineHealth("inactive", target=self.target)
        self._stop_probe = threading.Event()
        self._probe: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------

    def _activate_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        grpcclient, self._server_error = import_tritonclient()
        self._grpc = grpcclient
        self._client = self._connect(grpcclient)
        try:
            metadata = self._call(
                "reading the model's metadata", self._client.get_model_metadata, self.model, self.version
            )
            if not self._call(
                "asking whether the model is ready", self._client.is_model_ready, self.model, self.version
            ):
                raise RemoteModelError(f"{self.target}: the server has the model but it is not ready (still loading?)")
            inputs = tuple(self._spec(t, "input") for t in metadata.inputs)
            outputs = tuple(self._spec(t, "output") for t in metadata.outputs)
            if not inputs or not outputs:
                raise RemoteModelError(
                    f"{self.target}: the server's metadata lists no {'inputs' if not inputs else 'outputs'}; "
                    "scanedge checks the served model's tensors against its manifest and needs them declared"
                )
            self._server = self._server_metadata()
        except BaseException:
            self._close_client()
            raise
        self._requested = [grpcclient.InferRequestedOutput(o.name) for o in outputs]
        self._set_health("ok")
        self._stop_probe = threading.Event()
        self._probe = threading.Thread(
            target=self._probe_loop, args=(self._stop_probe,), name=f"scanedge-remote-health-{self.model}", daemon=True
        )
        self._probe.start()
        return inputs, outputs

    def _deactivate_impl(self) -> None:
        self._stop_probe.set()
        self._close_client()  # cancels a probe waiting on the server, so the join below is prompt
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.join(self.remote.timeout_s + 1.0)
        self._health = EngineHealth("inactive", target=self.target)

    def _connect(self, grpcclient: Any) -> Any:
        opts = self.remote
        channel_args = [
            ("grpc.max_send_message_length", opts.max_message_bytes),
            ("grpc.max_receive_message_length", opts.max_message_bytes),
            # reconnect promptly after a server restart (gRPC's default backoff grows to 120 s)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        creds = None
        if opts.tls:
            import grpc  # type: ignore[import-untyped]

            creds = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(opts.tls_ca, "CA certificate") if opts.tls_ca else None,
                private_key=_read_pem(opts.tls_key, "client key") if opts.tls_key else None,
                certificate_chain=_read_pem(opts.tls_cert, "client certificate") if opts.tls_cert else None,
            )
        return grpcclient.InferenceServerClient(opts.address, creds=creds, channel_args=channel_args)

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing a channel must not hide why we are closing it
                log.debug("closing the gRPC channel to %s failed: %s", self.remote.address, type(exc).__name__)

    def _spec(self, tensor: Any, kind: str) -> TensorSpec:
        dtype = DATATYPES.get(tensor.datatype)
        if dtype is None:
            raise RemoteModelError(
                f"{self.target}: {kind} {tensor.name!r} has datatype {tensor.datatype}, which scanedge does not "
                f"feed or read (it handles {', '.join(DATATYPES)})"
            )
        shape = tuple(int(d) if int(d) >= 0 else None for d in tensor.shape)
        return TensorSpec(tensor.name, dtype, shape)

    def _server_metadata(self) -> dict[str, str]:
        try:
            meta = self._client.get_server_metadata(client_timeout=self.remote.timeout_s)
        except self._server_error:
            return {}
        return {"name": _quote(meta.name), "version": _quote(meta.version)}

    # --- inference ------------------------------------------------------------------------------------------

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        grpcclient = self._grpc
        inputs = []
        for name, arr in feeds.items():
            tensor = grpcclient.InferInput(name, list(arr.shape), _DATATYPE_OF[arr.dtype])
            tensor.set_data_from_numpy(arr)  # raw_input_contents: the bytes, not a JSON list
            inputs.append(tensor)
        response = self._call(
            "running the model",
            self._client.infer,
            self.model,
            inputs,
            model_version=self.version,
            outputs=self._requested,
        )
        results = {}
        for spec in self._outputs:
            arr = response.as_numpy(spec.name)
            if arr is None:
                raise RemoteEngineError(f"{self.target}: the server answered without output {spec.name!r}")
            if arr.dtype != spec.dtype or not spec.matches(arr.shape):
                raise RemoteEngineError(
                    f"{self.target}: output {spec.name!r} came back as {arr.dtype} {list(arr.shape)}, but the "
                    f"server's metadata declares {spec.dtype} {list(spec.shape)}"
                )
            results[spec.name] = arr
        return results

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs, client_timeout=...)``, retried while the server is UNAVAILABLE; errors mapped."""
        opts = self.remote
        attempt = 0
        while True:
            try:
                result = fn(*args, **kwargs, client_timeout=opts.timeout_s)
            except self._server_error as exc:
                status = _status_name(exc)
                if status == "UNAVAILABLE" and attempt < opts.retries:
                    time.sleep(opts.retry_backoff_s * 2**attempt)
                    attempt += 1
                    continue
                error = self._map(exc, status, what, attempt + 1)
                if isinstance(error, (RemoteUnavailableError, RemoteModelError)):
                    self._set_health("unavailable", error.code, error.message)
                raise error from exc
            if what == "running the model":
                self._set_health("ok")
            return result

    def _map(self, exc: Any, status: str, what: str, attempts: int) -> RemoteEngineError:
        said = _quote(exc.message() if callable(getattr(exc, "message", None)) else exc)
        where = f"{self.target} ({what})"
        if status == "UNAVAILABLE":
            tries = f" after {attempts} attempts" if attempts > 1 else ""
            return RemoteUnavailableError(f"cannot reach the serving engine at {where}{tries}: {said}")
        if status == "DEADLINE_EXCEEDED":
            return RemoteUnavailableError(
                f"the serving engine at {where} did not answer within {self.remote.timeout_s:g} s"
            )
        if status == "NOT_FOUND":
            version = f" version {self.version}" if self.version else ""
            return RemoteModelError(f"the serving engine does not have model {self.model!r}{version}: {where}: {said}")
        if status in _REJECTED:
            return RemoteRejectedError(f"the serving engine refused the request: {where}: {status}: {said}")
        return RemoteEngineError(f"the serving engine failed: {where}: {status or 'client error'}: {said}")

    # --- health -----------------------------------------------------------------------------------------------

    def health(self) -> EngineHealth:
        return self._health

    def _set_health(self, status: HealthStatus, code: str | None = None, message: str = "") -> None:
        old = self._health
        since = old.since if old.status == status and old.since is not None else time.time()
        if status != old.status and status != "inactive":
            level = logging.INFO if status == "ok" else logging.WARNING
            log.log(level, "remote engine %s is %s%s", self.target, status, f": {message}" if message else "")
        self._health = EngineHealth(status, code, message, since, self.target)

    def _probe_loop(self, stop: threading.Event) -> None:
        """Ask the server whether the model is ready every ``health_interval_s``, with the call timeout: a
        server busy computing (MLServer without parallel workers answers nothing meanwhile) is not down."""
        while not stop.wait(self.remote.health_interval_s):
            client = self._client
            if client is None:
                return
            try:
                ready = client.is_model_ready(self.model, self.version, client_timeout=self.remote.timeout_s)
            except self._server_error as exc:
                if stop.is_set():  # cancelled by deactivate()
                    return
                error = self._map(exc, _status_name(exc), "health probe", 1)
                self._set_health("unavailable", error.code, error.message)
                continue
            except Exception as exc:  # a channel closed under it, or a client bug: never end the probe otherwise
                if stop.is_set():
                    return
                log.debug("remote health probe of %s failed: %s", self.target, type(exc).__name__)
                continue
            if stop.is_set():
                return
            if ready:
                self._set_health("ok")
            else:
                self._set_health(
                    "unavailable", RemoteModelError.code, f"{self.target}: the server reports the model not ready"
                )

    def describe(self) -> dict[str, Any]:
        """The base description plus where the model runs, the transport and the server's name and version."""
        info = super().describe()
        try:
            from importlib.metadata import version

            client_version = version("tritonclient")
        except Exception:
            client_version = None
        info.update(
            target=self.target,
            transport="grpc+tls" if self.remote.tls else "grpc",
            server=self._server or None,
            tritonclient=client_version,
            timeout_s=self.remote.timeout_s,
            retries=self.remote.retries,
        )
        return info

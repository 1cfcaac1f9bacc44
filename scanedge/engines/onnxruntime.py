"""ONNX Runtime backend: CPU by default, any execution provider on request, never a silent fallback.

ONNX Runtime quietly drops to the CPU when a requested provider cannot start (missing CUDA libraries,
for instance); a console that believes it runs on its GPU while it runs on two CPU cores misses its
latency budget without anyone knowing. So the first requested provider must be the first active one,
or activation fails with :class:`ProviderUnavailableError`.

Outputs are bound once per input shape through IOBinding into preallocated numpy arrays, so repeated
same-shape calls allocate nothing; the arrays returned by ``infer`` are those buffers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanedge.engines.base import Engine, TensorSpec
from scanedge.errors import EngineError, ProviderUnavailableError

__all__ = ["OnnxRuntimeEngine", "OrtOptions"]

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(uint16)": np.uint16,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}
_LEVELS = ("disable", "basic", "extended", "all")

Provider = str | tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class OrtOptions:
    """Session settings. ``threads=None`` lets ONNX Runtime use one thread per physical core.

    ``spinning``: ONNX Runtime's pool threads busy-wait between (and shortly after) runs instead of
    sleeping. It helps a process that does nothing but inference; in the streaming runtime, whose I/O
    and worker threads need the same cores, it hurts: measured on two cores with the demo model at 10
    slices/s, server-side inference took 7.6-11.2 ms (p50) with spinning and 5.3-7.5 ms without, and
    flat-out p99 dropped by a third. The runtime turns it off; in-process use keeps ONNX Runtime's default.
    """

    providers: tuple[Provider, ...] = ("CPUExecutionProvider",)
    threads: int | None = None
    spinning: bool = True
    optimization: str = "all"
    optimized_model_path: str | None = None  # write the optimised graph here (used by converters)
    extra: dict[str, str] = field(default_factory=dict)  # session config entries

    def __post_init__(self) -> None:
        if not self.providers:
            raise ValueError("OrtOptions.providers must name at least one execution provider")
        if self.optimization not in _LEVELS:
            raise ValueError(f"OrtOptions.optimization must be one of {_LEVELS}, got {self.optimization!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError("OrtOptions.threads must be >= 1")


class OnnxRuntimeEngine(Engine):
    kind = "ort"

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        options: OrtOptions | None = None,
        *,
        warmup_runs: int = 2,
        warmup_shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> None:
        name = "<bytes>" if isinstance(model, bytes) else os.fspath(model)
        super().__init__(name, warmup_runs=warmup_runs, warmup_shapes=warmup_shapes)
        self._model = model if isinstance(model, bytes) else os.fspath(model)
        self.options = options or OrtOptions()
        self._session: Any = None
        self._binding: Any = None
        self._bound: dict[tuple, tuple[dict[str, np.ndarray], dict[str, Any]]] = {}
        self._bound_key: tuple | None = None
        self._outputs_by_name: tuple[str, ...] = ()

    @property
    def providers(self) -> list[str]:
        """Execution providers actually active, in priority order."""
        self._require_active()
        return list(self._session.get_providers())

    @property
    def session(self) -> Any:
        """The underlying ``onnxruntime.InferenceSession`` (for tools that need it, e.g. baselines)."""
        self._require_active()
        return self._session

    def _activate_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        import onnxruntime as ort

        requested = [p if isinstance(p, str) else p[0] for p in self.options.providers]
        available = ort.get_available_providers()
        missing = [p for p in requested if p not in available]
        if missing:
            raise ProviderUnavailableError(
                f"execution provider(s) {missing} are not in this onnxruntime build "
                f"(available: {available}); install the matching package (e.g. onnxruntime-gpu for CUDA) "
                "or choose another provider"
            )
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.options.optimization]
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        if self.options.threads is not None:
            so.intra_op_num_threads = self.options.threads
        if self.options.optimized_model_path:
            so.optimized_model_filepath = self.options.optimized_model_path
        so.log_severity_level = 3
        if not self.options.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        for key, value in self.options.extra.items():
            so.add_session_config_entry(key, value)
        try:
            session = ort.InferenceSession(self._model, sess_options=so, providers=list(self.options.providers))
        except Exception as exc:
            raise EngineError(f"ONNX Runtime could not load {self.name}: {exc}") from exc
        active = session.get_providers()
        if active[:1] != requested[:1]:
            raise ProviderUnavailableError(
                f"requested {requested[0]} but ONNX Runtime started {active[0]} (it falls back silently "
                "when a provider's libraries fail to load); fix the provider's installation or request "
                f"{active[0]} explicitly"
            )
        self._session = session
        self._binding = session.io_binding()
        self._bound.clear()
        self._bound_key = None
        inputs = tuple(_spec(i) for i in session.get_inputs())
        outputs = tuple(_spec(o) for o in session.get_outputs())
        self._outputs_by_name = tuple(o.name for o in outputs)
        return inputs, outputs

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = tuple((name, arr.shape) for name, arr in feeds.items())
        entry = self._bound.get(key)
        if entry is None:
            return self._first_run(key, feeds)
        outputs, values = entry
        binding = self._binding
        if key != self._bound_key:
            binding.clear_binding_outputs()
            for name, value in values.items():
                binding.bind_ortvalue_output(name, value)
            self._bound_key = key
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, arr if arr.flags.c_contiguous else np.ascontiguousarray(arr))
        self._session.run_with_iobinding(binding)
        return outputs

    def _first_run(self, key: tuple, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Learn this input shape's output shapes and allocate the buffers later calls are bound to."""
        import onnxruntime as ort

        results = dict(zip(self._outputs_by_name, self._session.run(None, dict(feeds))))
        if len(self._bound) >= 16:  # a handful of shapes in practice; bound the cache anyway
            self._bound.clear()
            self._bound_key = None
        outputs = {name: np.empty(r.shape, r.dtype) for name, r in results.items()}
        values = {name: ort.OrtValue.ortvalue_from_numpy(arr) for name, arr in outputs.items()}
        self._bound[key] = (outputs, values)
        return results

    def _deactivate_impl(self) -> None:
        self._session = None
        self._binding = None
        self._bound.clear()

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        info = super().describe()
        info.update(
            onnxruntime=ort.__version__,
            providers=self.providers
            if self.is_active
            else [p if isinstance(p, str) else p[0] for p in self.options.providers],
            threads=self.options.threads,
            spinning=self.options.spinning,
            optimization=self.options.optimization,
        )
        return info


def _spec(node: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(node.type)
    if dtype is None:
        raise EngineError(f"tensor {node.name!r} has type {node.type}, which scanedge does not handle")
    shape: Sequence[Any] = node.shape or ()
    return TensorSpec(node.name, np.dtype(dtype), tuple(d if isinstance(d, int) else (d or None) for d in shape))

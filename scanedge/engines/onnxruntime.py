"""ONNX Runtime backend: CPU by default, any execution provider on request, never a silent fallback.

The session itself comes from an :class:`~scanedge.engines.ort_session.OrtSessionLoader` (the one place
sessions are made: settings, telemetry off, provider check, error mapping); this engine adds the
contract and the buffers. Outputs are bound once per input shape through IOBinding into preallocated
numpy arrays, so repeated same-shape calls allocate nothing; the arrays returned by ``infer`` are those
buffers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scanedge.engines.base import Engine, TensorSpec
from scanedge.engines.options import EngineConfig
from scanedge.engines.ort_session import OrtSessionLoader, import_onnxruntime
from scanedge.errors import EngineError

__all__ = ["OnnxRuntimeEngine"]

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


class OnnxRuntimeEngine(Engine):
    """An ONNX model on ONNX Runtime.

    Give it a loader (``OnnxRuntimeEngine(OrtSessionLoader(path, options))``), or, for short, the model
    and the options (``OnnxRuntimeEngine(path, options)``), which builds that loader. The options are the
    loader's: ``engine.options is engine.loader.options``.
    """

    backend = "ort"

    def __init__(
        self,
        model: OrtSessionLoader | str | os.PathLike[str] | bytes,
        options: EngineConfig | None = None,
        *,
        warmup_shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> None:
        if isinstance(model, OrtSessionLoader):
            if options is not None:
                raise TypeError("pass the options to the OrtSessionLoader, not to the engine as well")
            loader = model
        else:
            loader = OrtSessionLoader(model, options)
        super().__init__(loader.name, warmup_runs=loader.options.warmup_runs, warmup_shapes=warmup_shapes)
        self.loader = loader
        self.options = loader.options
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
        session = self.loader()
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
        ort = import_onnxruntime()
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
        """The base description plus ONNX Runtime's version, the active providers and the session settings."""
        ort = import_onnxruntime()
        info = super().describe()
        info.update(
            onnxruntime=ort.__version__,
            providers=self.providers if self.is_active else list(self.options.provider_names),
            threads=self.threads,
            spinning=self.options.spinning,
            optimization=self.options.optimization,
        )
        if self.loader.thread_choice is not None:
            info["threads_auto"] = self.loader.thread_choice.to_dict()
        return info

    @property
    def threads(self) -> int | None:
        """The intra-op threads the session runs with: the options' count, what ``"auto"`` chose (once
        active), or None for ONNX Runtime's default."""
        if self.loader.thread_choice is not None:
            return self.loader.thread_choice.threads
        return self.options.threads if isinstance(self.options.threads, int) else None


def _spec(node: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(node.type)
    if dtype is None:
        raise EngineError(f"tensor {node.name!r} has type {node.type}, which scanedge does not handle")
    shape: Sequence[Any] = node.shape or ()
    return TensorSpec(node.name, np.dtype(dtype), tuple(d if isinstance(d, int) else (d or None) for d in shape))

"""The Engine contract every inference backend implements, in the style of Polygraphy's runners.

Public ``activate()`` / ``infer()`` / ``deactivate()`` live here and do the checking; a backend only
overrides the ``_*_impl`` hooks. Feeds are checked in one place (names, dtypes, ranks, fixed dims), so a
wrong tensor fails the same way on every backend, with an :class:`EngineInputError` instead of a
backend-specific crash. Engines reuse their output buffers: arrays returned by :meth:`Engine.infer` are
valid until the next call. An engine instance is not thread-safe; use one per thread.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from scanedge.errors import EngineError, EngineInputError, EngineStateError, ScanedgeError

__all__ = ["Engine", "EngineHealth", "HealthStatus", "TensorSpec"]

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor as the engine declares it; a ``str``/``None`` dimension is dynamic.

    Attributes:
        name: the tensor's name in the model graph.
        dtype: its element type.
        shape: its dims: a fixed size (int >= 0), or a symbolic name, None or a negative int for a dynamic one.
    """

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def is_dynamic(self) -> bool:
        """Whether any dimension is dynamic."""
        return any(not isinstance(d, int) or d < 0 for d in self.shape)

    def matches(self, shape: tuple[int, ...]) -> bool:
        """Whether a concrete ``shape`` fits: same rank, and equal to every fixed dimension."""
        if len(shape) != len(self.shape):
            return False
        return all(not isinstance(d, int) or d < 0 or d == s for d, s in zip(self.shape, shape))


#: ``ok``: it can run the model now; ``unavailable``: it cannot (a remote server down, its model not ready);
#: ``inactive``: not activated, or deactivated
HealthStatus = Literal["ok", "unavailable", "inactive"]


@dataclass(frozen=True)
class EngineHealth:
    """Whether an engine can run its model now, as the runtime reports it in PONG.

    A local engine is ``ok`` while active; a remote one follows its server (every call, and a periodic
    probe while idle). ``code`` and ``message`` say why it is not ok; ``since`` (Unix epoch seconds) is
    when the status last changed; ``target`` is where the model runs when that is elsewhere.
    """

    status: HealthStatus  # "ok", "unavailable" or "inactive"
    code: str | None = None
    message: str = ""
    since: float | None = None
    target: str = ""


class Engine(abc.ABC):
    """Base class of inference backends. Use as a context manager or call activate()/deactivate()."""

    #: the backend's name, as ``EngineConfig.backend`` and the command line spell it ("ort", "tensorrt")
    backend: ClassVar[str] = ""

    def __init__(
        self, name: str, *, warmup_runs: int = 2, warmup_shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> None:
        self.name = name
        self.is_active = False
        self.warmup_runs = warmup_runs
        self.warmup_shapes = dict(warmup_shapes or {})
        self._inputs: tuple[TensorSpec, ...] = ()
        self._outputs: tuple[TensorSpec, ...] = ()

    # --- lifecycle -----------------------------------------------------------------------------------

    def activate(self) -> Engine:
        """Load the model, declare its tensors and warm it up. Calling it on an active engine is a no-op."""
        if self.is_active:
            return self
        try:
            self._inputs, self._outputs = self._activate_impl()
        except ScanedgeError:
            raise
        except Exception as exc:
            raise EngineError(f"{self.backend} engine {self.name!r} failed to load: {exc}") from exc
        self.is_active = True
        try:
            self.warmup(self.warmup_runs)
        except BaseException:
            self.deactivate()
            raise
        return self

    def deactivate(self) -> None:
        """Release the model and its buffers. Calling it on an inactive engine is a no-op."""
        if self.is_active:
            self.is_active = False
            self._deactivate_impl()

    def __enter__(self) -> Engine:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def __repr__(self) -> str:
        state = "active" if self.is_active else "inactive"
        return f"<{type(self).__name__} {self.name!r} {state}>"

    # --- tensors --------------------------------------------------------------------------------------

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        """The model's inputs, in graph order; EngineStateError on an inactive engine."""
        self._require_active()
        return self._inputs

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        """The model's outputs, in graph order; EngineStateError on an inactive engine."""
        self._require_active()
        return self._outputs

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. Returned arrays belong to the engine and are overwritten by the next call."""
        self._require_active()
        self._check_feeds(feeds)
        try:
            return self._infer_impl(feeds)
        except ScanedgeError:
            raise
        except Exception as exc:
            raise EngineError(f"{self.backend} inference failed: {exc}") from exc

    def warmup(self, runs: int = 2) -> None:
        """Run ``runs`` inferences on zeros so the first real slice does not pay for lazy initialisation.

        Dynamic inputs need a shape from ``warmup_shapes``; without one the warm-up is skipped.
        """
        if runs <= 0:
            return
        feeds = {}
        for spec in self._inputs:
            shape = self.warmup_shapes.get(spec.name)
            if shape is None:
                if spec.is_dynamic():
                    return
                shape = tuple(int(d) for d in spec.shape)  # type: ignore[arg-type]
            feeds[spec.name] = np.zeros(shape, spec.dtype)
        for _ in range(runs):
            self.infer(feeds)

    def describe(self) -> dict[str, Any]:
        """What a report should say about this engine (backend, device, versions)."""
        return {"backend": self.backend, "name": self.name}

    def health(self) -> EngineHealth:
        """Whether the engine can run its model now. Safe to call from any thread, and never blocks.

        Local engines are ``ok`` while active; a backend that depends on something outside the process
        (a remote server) overrides this."""
        return EngineHealth("ok" if self.is_active else "inactive")

    def _require_active(self) -> None:
        if not self.is_active:
            raise EngineStateError(f"engine {self.name!r} is not active; call activate() or use it in a with block")

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        expected = {s.name for s in self._inputs}
        if set(feeds) != expected:
            raise EngineInputError(f"expected inputs {sorted(expected)}, got {sorted(feeds)}")
        for spec in self._inputs:
            arr = feeds[spec.name]
            if not isinstance(arr, np.ndarray):
                raise EngineInputError(f"input {spec.name!r} must be a numpy array, got {type(arr).__name__}")
            if arr.dtype != spec.dtype:
                raise EngineInputError(f"input {spec.name!r} must be {spec.dtype}, got {arr.dtype}")
            if not spec.matches(arr.shape):
                raise EngineInputError(f"input {spec.name!r} has shape {arr.shape}; the engine declares {spec.shape}")

    # --- backend hooks -------------------------------------------------------------------------------

    @abc.abstractmethod
    def _activate_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Load the model; return (input specs, output specs)."""

    @abc.abstractmethod
    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run inference on checked feeds."""

    @abc.abstractmethod
    def _deactivate_impl(self) -> None:
        """Release everything _activate_impl acquired."""

"""TensorRT backend (TensorRT >= 10 named-tensor API, CUDA through cuda-python), behind the same Engine contract.

A plan file only runs on the GPU model, compute capability and TensorRT version it was built for, so
every plan has a key file beside it (``X.engine.key.json``: GPU name, compute capability, SM count,
TensorRT version, precision, ONNX graph sha256) and is refused, with a rebuild command, when the key does
not match this machine. Activation order matters: TensorRT is imported, then the GPU is confirmed with
cuda-python, then the key is checked, and only then is the plan deserialized (which would segfault
without a GPU).

Buffers: pinned host and device memory are allocated once per input shape; inputs are copied into the
pinned buffers, moved with ``cudaMemcpyAsync`` on one stream, run with ``execute_async_v3``, and the
outputs come back into pinned arrays that ``infer`` returns (valid until the next call). With
``cuda_graphs`` the enqueue of each shape is captured once into a CUDA graph and replayed, which removes
the per-layer launch overhead that dominates small models.
"""

from __future__ import annotations

import ctypes
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanedge.engines.base import Engine, TensorSpec
from scanedge.engines.cuda import GpuInfo, check, cudart, gpu_info, tensorrt_module
from scanedge.engines.options import EngineConfig
from scanedge.errors import DeviceUnavailableError, EngineError, EngineInputError, ModelFileError

__all__ = ["EngineKey", "TensorRTEngine", "check_engine_key", "key_path", "read_engine_key"]


@dataclass(frozen=True)
class EngineKey:
    """What a TensorRT plan is only valid for (Holoscan names its cache files after the same facts).

    Attributes:
        gpu: the GPU's name as CUDA reports it.
        compute_capability: the GPU's (major, minor) compute capability.
        sm_count: the GPU's streaming multiprocessors.
        tensorrt: the TensorRT version that built the plan.
        precision: ``fp32``, ``fp16`` or ``int8``.
        onnx_sha256: sha256 of the ONNX graph the plan was built from.
    """

    gpu: str
    compute_capability: tuple[int, int]
    sm_count: int
    tensorrt: str
    precision: str
    onnx_sha256: str

    @classmethod
    def for_device(cls, gpu: GpuInfo, tensorrt_version: str, precision: str, onnx_sha256: str) -> EngineKey:
        """The key of a plan built on ``gpu`` with TensorRT ``tensorrt_version``."""
        return cls(gpu.name, gpu.compute_capability, gpu.sm_count, tensorrt_version, precision, onnx_sha256)

    def filename(self, stem: str) -> str:
        """``<stem>.<gpu>.sm<cc>.<sms>.trt<version>.<precision>.engine``"""
        gpu = "".join(c if c.isalnum() else "-" for c in self.gpu.lower()).strip("-")
        cc = f"{self.compute_capability[0]}{self.compute_capability[1]}"
        return f"{stem}.{gpu}.sm{cc}.{self.sm_count}.trt{self.tensorrt}.{self.precision}.engine"

    def mismatches(self, gpu: GpuInfo, tensorrt_version: str) -> list[str]:
        """How this machine differs from the one the plan was built on (empty: it may run here)."""
        out = []
        if self.gpu != gpu.name:
            out.append(f"GPU {self.gpu!r} (this machine: {gpu.name!r})")
        if tuple(self.compute_capability) != gpu.compute_capability:
            cc = ".".join(map(str, gpu.compute_capability))
            out.append(f"compute capability {'.'.join(map(str, self.compute_capability))} (here {cc})")
        if self.sm_count != gpu.sm_count:
            out.append(f"{self.sm_count} SMs (here {gpu.sm_count})")
        if self.tensorrt != tensorrt_version:
            out.append(f"TensorRT {self.tensorrt} (here {tensorrt_version})")
        return out

    def to_json(self) -> str:
        """The key file's text."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> EngineKey:
        """The key in a key file's text; ValueError, KeyError or TypeError when it is not one."""
        data = json.loads(text)
        data["compute_capability"] = tuple(data["compute_capability"])
        return cls(**data)


def key_path(plan: str | os.PathLike[str]) -> Path:
    """Where the key file of ``plan`` lives: beside it, named ``<plan>.key.json``."""
    p = Path(plan)
    return p.with_name(p.name + ".key.json")


def read_engine_key(plan: str | os.PathLike[str]) -> EngineKey:
    """The key of ``plan``; DeviceUnavailableError when it is missing or unreadable (the plan cannot be trusted)."""
    path = key_path(plan)
    if not path.is_file():
        raise DeviceUnavailableError(
            f"{Path(plan).name} has no key file ({path.name}), so nobody can tell which GPU and TensorRT it "
            "was built for; rebuild it with `scanedge convert MODEL.onnx --target tensorrt`"
        )
    try:
        return EngineKey.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise DeviceUnavailableError(f"{path.name} is not a valid engine key file: {exc}") from exc


def check_engine_key(plan: str | os.PathLike[str], gpu: GpuInfo, tensorrt_version: str) -> EngineKey:
    """Refuse a plan built for another GPU or TensorRT, saying how to rebuild it."""
    key = read_engine_key(plan)
    problems = key.mismatches(gpu, tensorrt_version)
    if problems:
        raise DeviceUnavailableError(
            f"{Path(plan).name} was built for {'; '.join(problems)}. TensorRT plans only run where they were "
            "built: rebuild it on this machine with `scanedge convert MODEL.onnx --target tensorrt "
            f"--precision {key.precision}`"
        )
    return key


def _ptr(obj: Any) -> int:
    """The integer address/handle behind a cuda-python object."""
    try:
        return int(obj)
    except TypeError:
        return int(obj.getPtr())


@dataclass
class _Buffers:
    host: dict[str, np.ndarray]
    device: dict[str, Any]
    host_ptrs: list[Any]
    graph_exec: Any = None
    runs: int = 0


class TensorRTEngine(Engine):
    """A TensorRT plan on the GPU ``options.device``, with ``options.cuda_graphs`` and ``options.warmup_runs``."""

    backend = "tensorrt"

    def __init__(
        self,
        plan: str | os.PathLike[str],
        options: EngineConfig | None = None,
        *,
        warmup_shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> None:
        self.options = options if options is not None else EngineConfig()
        super().__init__(os.fspath(plan), warmup_runs=self.options.warmup_runs, warmup_shapes=warmup_shapes)
        self.plan = Path(plan)
        self.device = self.options.device
        self.cuda_graphs = self.options.cuda_graphs
        self.key: EngineKey | None = None
        self.gpu: GpuInfo | None = None
        self._trt: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[tuple, _Buffers] = {}
        self._current: tuple | None = None

    def _activate_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        trt = tensorrt_module()  # 1. TensorRT present
        self.gpu = gpu_info(self.device)  # 2. a real GPU, before anything can segfault
        self.key = check_engine_key(self.plan, self.gpu, trt.__version__)  # 3. built for this GPU
        rt = cudart()
        check(rt.cudaSetDevice(self.device), "cudaSetDevice")
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        try:
            serialized = self.plan.read_bytes()
        except OSError as exc:
            raise ModelFileError(f"cannot read the TensorRT plan {self.plan}: {exc.strerror or exc}") from exc
        self._engine = self._runtime.deserialize_cuda_engine(serialized)  # 4. now safe
        if self._engine is None:  # its key matched this machine, so the file itself is damaged
            raise ModelFileError(
                f"TensorRT could not deserialize {self.plan.name} although its key matches this machine: the "
                "file is damaged or truncated (see the TensorRT log above); rebuild it with `scanedge convert`"
            )
        self._context = self._engine.create_execution_context()
        self._stream = check(rt.cudaStreamCreate(), "cudaStreamCreate")
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            shape = tuple(int(d) if d >= 0 else None for d in self._engine.get_tensor_shape(name))
            spec = TensorSpec(name, dtype, shape)
            (inputs if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        return tuple(inputs), tuple(outputs)

    def _allocate(self, key: tuple, feeds: Mapping[str, np.ndarray]) -> _Buffers:
        rt = cudart()
        for name, arr in feeds.items():
            if not self._context.set_input_shape(name, arr.shape):
                raise EngineInputError(f"input {name!r} shape {arr.shape} is outside the engine's optimization profile")
        host, device, ptrs = {}, {}, []
        for spec in (*self._inputs, *self._outputs):
            shape = tuple(self._context.get_tensor_shape(spec.name))
            nbytes = max(1, int(np.prod(shape)) * spec.dtype.itemsize)
            hptr = check(rt.cudaMallocHost(nbytes), "cudaMallocHost")
            ptrs.append(hptr)
            raw = (ctypes.c_uint8 * nbytes).from_address(_ptr(hptr))
            # numpy's stubs leave out ctypes arrays, which export the buffer protocol frombuffer reads
            host[spec.name] = np.frombuffer(raw, dtype=spec.dtype, count=int(np.prod(shape))).reshape(shape)  # type: ignore[call-overload]
            device[spec.name] = check(rt.cudaMalloc(nbytes), "cudaMalloc")
        return _Buffers(host, device, ptrs)

    def _bind(self, buffers: _Buffers, feeds: Mapping[str, np.ndarray]) -> None:
        for name, arr in feeds.items():
            self._context.set_input_shape(name, arr.shape)
        for name, dptr in buffers.device.items():
            self._context.set_tensor_address(name, _ptr(dptr))

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt = cudart()
        key = tuple((name, arr.shape) for name, arr in feeds.items())
        buffers = self._buffers.get(key)
        if buffers is None:
            buffers = self._buffers[key] = self._allocate(key, feeds)
            self._current = None
        if self._current != key:
            self._bind(buffers, feeds)
            self._current = key
        stream = self._stream
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, arr in feeds.items():
            np.copyto(buffers.host[name], arr)
            host = buffers.host[name]
            check(rt.cudaMemcpyAsync(buffers.device[name], host.ctypes.data, host.nbytes, h2d, stream), "H2D copy")
        if buffers.graph_exec is not None:
            check(rt.cudaGraphLaunch(buffers.graph_exec, stream), "cudaGraphLaunch")
        elif not self._context.execute_async_v3(_ptr(stream)):
            raise EngineError("TensorRT execute_async_v3 failed")
        for spec in self._outputs:
            host = buffers.host[spec.name]
            check(rt.cudaMemcpyAsync(host.ctypes.data, buffers.device[spec.name], host.nbytes, d2h, stream), "D2H copy")
        check(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        buffers.runs += 1
        if self.cuda_graphs and buffers.graph_exec is None and buffers.runs == 2:
            buffers.graph_exec = self._capture(stream)  # after a plain run, so TensorRT's lazy setup is done
        return {spec.name: buffers.host[spec.name] for spec in self._outputs}

    def _capture(self, stream: Any) -> Any:
        rt = cudart()
        check(rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal), "capture")
        ok = self._context.execute_async_v3(_ptr(stream))
        graph = check(rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        if not ok:
            return None  # some engines cannot be captured; plain enqueue still works
        return check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def _deactivate_impl(self) -> None:
        rt = cudart()
        for buffers in self._buffers.values():
            if buffers.graph_exec is not None:
                rt.cudaGraphExecDestroy(buffers.graph_exec)
            for dptr in buffers.device.values():
                rt.cudaFree(dptr)
            for hptr in buffers.host_ptrs:
                rt.cudaFreeHost(hptr)
        self._buffers.clear()
        if self._stream is not None:
            rt.cudaStreamDestroy(self._stream)
        self._context = self._engine = self._stream = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.gpu is not None:
            info.update(gpu=self.gpu.name, compute_capability=".".join(map(str, self.gpu.compute_capability)))
        if self.key is not None:
            info.update(tensorrt=self.key.tensorrt, precision=self.key.precision)
        info["cuda_graphs"] = self.cuda_graphs
        return info

"""Real runtimes on 127.0.0.1 for the streaming tests, and the faults they inject.

Engines here are the real ONNX Runtime engine (keep-warm passes off unless a test turns them on); the
only thing a test adds is a fault: inference held at
a gate until the test opens it (so "the worker is busy" is a fact, not a hope about timing), a fixed
delay, or a stage that fails in a chosen way.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import zmq

from scanedge.engines import EngineConfig, OnnxRuntimeEngine
from scanedge.manifest import Manifest
from scanedge.runtime.console.client import Client
from scanedge.runtime.core.model_spec import ModelSpec
from scanedge.runtime.core.pipeline import Pipeline, PipelineConfig
from scanedge.runtime.serving.keep_warm import KeepWarmConfig
from scanedge.runtime.serving.server import Server, ServerConfig


class SlowEngine(OnnxRuntimeEngine):
    """The real ONNX Runtime engine, made slower by ``delay_s`` per inference (fault injection)."""

    delay_s = 0.3

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.delay_s)
        return super()._infer_impl(feeds)


class Gate:
    """Holds every inference until :meth:`open` (or ``timeout_s``, so a failing test cannot hang)."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        self._open = threading.Event()
        self._cond = threading.Condition()
        self.entered_count = 0
        self.timeout_s = timeout_s

    def enter(self) -> None:
        with self._cond:
            self.entered_count += 1
            self._cond.notify_all()
        self._open.wait(self.timeout_s)

    def wait_entered(self, count: int = 1, timeout: float = 10.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.entered_count >= count, timeout), "no inference started"

    def open(self) -> None:
        self._open.set()


class GatedEngine(OnnxRuntimeEngine):
    gate: Gate | None = None

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.gate is not None and self.is_active:
            self.gate.enter()
        return super()._infer_impl(feeds)


def _factory(engine_class: type[OnnxRuntimeEngine], **attributes: Any):
    def make(spec: ModelSpec, manifest: Manifest, config: PipelineConfig) -> Pipeline:
        engine = engine_class(spec.path, EngineConfig(threads=1, warmup_runs=0))
        pipe = Pipeline(engine, manifest, config, owns_engine=True)
        for name, value in attributes.items():
            setattr(engine, name, value)  # armed only after activation: warm-up is not held up
        return pipe

    return make


def slow_factory(delay_s: float):
    return _factory(SlowEngine, delay_s=delay_s)


def gated_factory(gate: Gate):
    return _factory(GatedEngine, gate=gate)


def local_config(**changes: Any) -> ServerConfig:
    base = {
        "bind": "tcp://127.0.0.1:*",
        "engine": EngineConfig(threads=1, spinning=False),
        "sweep_interval_s": 0.02,
        "linger_ms": 200,
        # keep-warm passes are inferences too: off, so a gate counts only the slices a test sends
        # (tests/runtime/test_keep_warm.py turns them on)
        "keep_warm": KeepWarmConfig(enabled=False),
    }
    return ServerConfig(**{**base, **changes})


@contextlib.contextmanager
def running_server(
    models: Sequence[Any] = (), *, pipeline_factory: Any = None, **config_changes: Any
) -> Iterator[Server]:
    srv = Server(models, config=local_config(**config_changes), pipeline_factory=pipeline_factory).start()
    try:
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def subscriber(server: Server, topic: bytes) -> Iterator[zmq.Socket]:
    """A SUB on the server's PUB whose subscription is known to be live (no slow-joiner guessing): a probe
    series is published until it arrives, then unsubscribed."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.setsockopt(zmq.SUBSCRIBE, b"__probe__")
    sub.connect(server.publish_endpoint)
    try:
        with Client(server.endpoint) as probe:
            deadline = time.monotonic() + 10
            while not sub.poll(50):
                probe.segment(np.zeros((8, 8), np.uint8), series="__probe__", outputs=("mask",))
                assert time.monotonic() < deadline, "the subscription never became live"
        while sub.poll(100):
            sub.recv_multipart()  # probes still in flight
        sub.setsockopt(zmq.UNSUBSCRIBE, b"__probe__")
        yield sub
    finally:
        sub.close(0)


@pytest.fixture
def server() -> Iterator[Server]:
    """The demo model behind a real ROUTER/PUB on loopback."""
    with running_server(publish="tcp://127.0.0.1:*") as srv:
        yield srv

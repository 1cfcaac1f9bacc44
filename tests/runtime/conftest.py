"""Real runtimes on 127.0.0.1 for the streaming tests; a slow engine (a real ORT engine plus a sleep)
injects the only fault these tests need: inference that takes long enough to queue behind."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

import numpy as np
import pytest

from scanedge.engines import EngineOptions, OnnxRuntimeEngine
from scanedge.manifest import Manifest
from scanedge.runtime.pipeline import Pipeline, PipelineConfig
from scanedge.runtime.server import ModelSpec, Server, ServerConfig


class SlowEngine(OnnxRuntimeEngine):
    """The real ONNX Runtime engine, made slower by ``delay_s`` per inference (fault injection)."""

    delay_s = 0.3

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.delay_s)
        return super()._infer_impl(feeds)


def slow_factory(delay_s: float):
    def make(spec: ModelSpec, manifest: Manifest, config: PipelineConfig) -> Pipeline:
        engine = SlowEngine(spec.path, EngineOptions(threads=1, warmup_runs=0))
        engine.delay_s = delay_s
        return Pipeline(engine, manifest, config, owns_engine=True)

    return make


def local_config(**changes) -> ServerConfig:
    base = {
        "bind": "tcp://127.0.0.1:*",
        "engine": EngineOptions(threads=1, spinning=False),
        "sweep_interval_s": 0.02,
        "linger_ms": 200,
    }
    return ServerConfig(**{**base, **changes})


@pytest.fixture
def server() -> Iterator[Server]:
    """The demo model behind a real ROUTER/PUB on loopback."""
    srv = Server(config=local_config(publish="tcp://127.0.0.1:*")).start()
    yield srv
    srv.stop()


@pytest.fixture
def slow_server(request) -> Iterator[Server]:
    """The demo model with 0.3 s per inference; parametrize indirectly with a dict of ServerConfig changes."""
    changes = getattr(request, "param", {}) or {}
    srv = Server(config=local_config(**changes), pipeline_factory=slow_factory(0.3)).start()
    yield srv
    srv.stop()

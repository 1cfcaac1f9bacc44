"""The slice pipeline and everything that serves it over ZeroMQ (see docs/protocol.md), by role:

``core/``     the in-process pipeline (one slice, a batch) and :class:`ModelSpec`; no sockets
``wire/``     the protocol's messages, payload encoding, endpoints, CurveZMQ keys; shared by both sides
``serving/``  the runtime process: server, I/O loop, workers, scheduler, per-series state, shared memory
``console/``  what a scanner console links: the client and its I/O thread, its shared memory, replay

Roles import downward only (core < wire < serving, console), and serving and console never import each
other (``tests/test_layers.py``). The modules' earlier paths (``scanedge.runtime.pipeline``, ...) still
import, with a DeprecationWarning (``scanedge/_moved.py``).
"""

from scanedge.runtime.console.client import AsyncClient, Client, ClientConfig, RemoteResult
from scanedge.runtime.core.model_spec import ModelSpec
from scanedge.runtime.core.pipeline import Pipeline, PipelineConfig, SliceResult, StageTimings
from scanedge.runtime.serving.server import Server, ServerConfig
from scanedge.runtime.wire.security import CurveClientKeys, CurveServerKeys

__all__ = [
    "AsyncClient",
    "Client",
    "ClientConfig",
    "CurveClientKeys",
    "CurveServerKeys",
    "ModelSpec",
    "Pipeline",
    "PipelineConfig",
    "RemoteResult",
    "Server",
    "ServerConfig",
    "SliceResult",
    "StageTimings",
]

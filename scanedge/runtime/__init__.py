"""The slice pipeline and everything that serves it over ZeroMQ (see docs/protocol.md)."""

from scanedge.runtime.client import AsyncClient, Client, ClientConfig, RemoteResult
from scanedge.runtime.pipeline import Pipeline, PipelineConfig, SliceResult, StageTimings
from scanedge.runtime.security import CurveClientKeys, CurveServerKeys
from scanedge.runtime.server import ModelSpec, Server, ServerConfig

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

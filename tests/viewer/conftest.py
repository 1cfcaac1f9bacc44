"""A real runtime publishing on loopback, and the viewer following it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("starlette", reason="the live viewer needs the 'viewer' extra")

from scanedge.runtime.server import Server
from scanedge.viewer import Viewer, ViewerConfig
from tests.runtime.conftest import running_server


@pytest.fixture
def runtime() -> Iterator[Server]:
    with running_server(publish="tcp://127.0.0.1:*") as srv:
        yield srv


@pytest.fixture
def viewer(runtime: Server) -> Iterator[Viewer]:
    with Viewer(ViewerConfig(subscribe=runtime.publish_endpoint, port=0)) as v:
        yield v


@pytest.fixture(scope="session")
def demo_dir():
    from scanedge.demo.series import demo_series_dir

    return demo_series_dir()

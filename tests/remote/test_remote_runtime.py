"""The streaming runtime on the remote engine: consoles get typed errors while the server is gone, PONG says
so, and the runtime carries on by itself once the server is back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scanedge.engines import EngineConfig, RemoteConfig
from scanedge.errors import RemoteModelError, RemoteUnavailableError
from scanedge.runtime.console.client import Client, ClientConfig
from scanedge.runtime.core.pipeline import Pipeline
from tests.remote.conftest import DEMO_NAME
from tests.remote.mlserver import MLServer
from tests.runtime.conftest import running_server
from tests.waiting import wait_until


def remote_engine(url: str) -> EngineConfig:
    remote = RemoteConfig(url, retries=1, retry_backoff_s=0.01, timeout_s=10.0, health_interval_s=0.1)
    return EngineConfig(backend="remote", remote=remote, spinning=False, warmup_runs=1)


def health(client: Client):
    return client.ping(timeout=5.0).engine_health[DEMO_NAME]


@pytest.fixture
def slice_bytes(demo_series: Path) -> bytes:
    return sorted(demo_series.glob("*.dcm"))[14].read_bytes()


@pytest.fixture
def local_mask(slice_bytes: bytes) -> np.ndarray:
    with Pipeline.open(options=EngineConfig(backend="ort", threads=1)) as pipe:
        return pipe.run(slice_bytes).mask


def test_server_killed_mid_run_typed_errors_unhealthy_pong_then_recovery(
    own_mlserver: MLServer, slice_bytes: bytes, local_mask: np.ndarray
):
    with (
        running_server(engine=remote_engine(own_mlserver.url)) as srv,
        Client(srv.endpoint, ClientConfig(timeout_s=30.0)) as client,
    ):
        pong = client.ping()
        assert pong.engine == "remote" and health(client).status == "ok"
        assert health(client).target == f"{own_mlserver.url}/{DEMO_NAME}"
        assert np.array_equal(client.segment(slice_bytes).mask, local_mask)

        own_mlserver.kill()
        with pytest.raises(RemoteUnavailableError, match=own_mlserver.address) as info:
            client.segment(slice_bytes)
        assert info.value.code == "REMOTE_UNAVAILABLE"
        down = health(client)
        assert (down.status, down.code) == (
            "unavailable",
            "REMOTE_UNAVAILABLE",
        ) and own_mlserver.address in down.message
        assert client.ping().workers.alive == 1  # the runtime itself is fine and still answers

        own_mlserver.start()  # same port: the server comes back
        wait_until(lambda: health(client).status == "ok", timeout=30, what="PONG to report the server back")
        assert np.array_equal(client.segment(slice_bytes).mask, local_mask)
        stats = client.stats()
        assert stats.counters.get("error.REMOTE_UNAVAILABLE") == 1 and stats.counters["ok"] >= 2


def test_model_unloaded_on_the_server_then_loaded_again(mlserver: MLServer, slice_bytes: bytes, local_mask: np.ndarray):
    import tritonclient.grpc as grpcclient

    admin = grpcclient.InferenceServerClient(mlserver.address)
    with (
        running_server(engine=remote_engine(mlserver.url)) as srv,
        Client(srv.endpoint, ClientConfig(timeout_s=30.0)) as client,
    ):
        assert np.array_equal(client.segment(slice_bytes).mask, local_mask)
        admin.unload_model(DEMO_NAME)
        try:
            with pytest.raises(RemoteModelError) as info:
                client.segment(slice_bytes)
            assert info.value.code == "REMOTE_MODEL_UNAVAILABLE" and DEMO_NAME in info.value.message
            assert health(client).status == "unavailable"
        finally:
            admin.load_model(DEMO_NAME)
        wait_until(lambda: health(client).status == "ok", timeout=30, what="PONG to report the model back")
        assert np.array_equal(client.segment(slice_bytes).mask, local_mask)
    admin.close()


def test_a_local_runtime_reports_its_engine_ok():
    with running_server() as srv, Client(srv.endpoint) as client:
        status = client.ping().engine_health
        assert list(status) == [DEMO_NAME] and status[DEMO_NAME].status == "ok" and status[DEMO_NAME].target == ""

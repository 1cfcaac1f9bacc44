"""A minimal ONNX Runtime runtime for Seldon MLServer, kept with the tests (MLServer has none of its own).

MLServer loads it by its import path from ``model-settings.json`` (``"implementation":
"scanedge_onnx_runtime.OnnxRuntimeModel"``) and points ``parameters.uri`` at the ``1/model.onnx`` that
``scanedge export-triton`` wrote. It runs in MLServer's own virtualenv, so it imports neither scanedge nor
anything the project installs: only mlserver, numpy and onnxruntime.

The model metadata the server reports (``ModelMetadata``: input/output names, datatypes, shapes) is read
from the ONNX session, so a client checking it sees what the server really runs. Feeds that do not fit
the session (name, datatype, shape) are refused with MLServer's ``InferenceError`` (gRPC
``INVALID_ARGUMENT``), as Triton refuses them.
"""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported: no uploads from tests

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import get_model_uri

_DATATYPES = {"tensor(float)": ("FP32", np.float32), "tensor(float16)": ("FP16", np.float16)}


def _metadata(node) -> MetadataTensor:
    if node.type not in _DATATYPES:
        raise ValueError(f"tensor {node.name!r} has type {node.type}, which this runtime does not serve")
    shape = [d if isinstance(d, int) else -1 for d in node.shape]
    return MetadataTensor(name=node.name, datatype=_DATATYPES[node.type][0], shape=shape)


class OnnxRuntimeModel(MLModel):
    """One ONNX model on ONNX Runtime's CPU provider."""

    async def load(self) -> bool:
        path = await get_model_uri(self._settings, wellknown_filenames=["model.onnx"])
        options = ort.SessionOptions()
        threads = int(os.environ.get("SCANEDGE_TEST_ORT_THREADS", "0"))
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as scanedge's runtime does
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name: i for i in self._session.get_inputs()}
        self.inputs = [_metadata(i) for i in self._session.get_inputs()]
        self.outputs = [_metadata(o) for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {}
        for request_input in payload.inputs:
            node = self._inputs.get(request_input.name)
            if node is None:
                raise InferenceError(f"unknown input {request_input.name!r}; inputs: {sorted(self._inputs)}")
            datatype, dtype = _DATATYPES[node.type]
            if request_input.datatype != datatype:
                raise InferenceError(f"input {node.name!r} must be {datatype}, got {request_input.datatype}")
            shape = list(request_input.shape)
            if len(shape) != len(node.shape) or any(isinstance(d, int) and d != s for d, s in zip(node.shape, shape)):
                raise InferenceError(f"input {node.name!r} has shape {shape}; the model takes {node.shape}")
            feeds[node.name] = np.asarray(NumpyCodec.decode_input(request_input), dtype=dtype)
        if set(feeds) != set(self._inputs):
            raise InferenceError(f"expected inputs {sorted(self._inputs)}, got {sorted(feeds)}")
        results = self._session.run(None, feeds)
        outputs = [NumpyCodec.encode_output(o.name, r) for o, r in zip(self._session.get_outputs(), results)]
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)

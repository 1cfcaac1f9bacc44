"""The DICOM node serves one-input models; a model that takes several series of one study is refused at start."""

from __future__ import annotations

import pytest

from scanedge.errors import ConfigError
from scanedge.manifest import embed_manifest
from tests.conftest import conv_model, simple_manifest
from tests.runtime.core.test_multi_input import WEIGHTS, two_role_inputs


def test_a_multi_input_model_is_refused_at_start_with_where_to_serve_it(tmp_path, listener):
    path = tmp_path / "flair_t1.onnx"
    embed_manifest(conv_model(2, WEIGHTS), simple_manifest(inputs=two_role_inputs()), path)
    with pytest.raises(ConfigError, match=r"several series of one study \(flair, t1\).*scanedge serve"):
        listener([path])

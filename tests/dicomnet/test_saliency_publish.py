"""The DICOM node publishes a model's own saliency map live, and the viewer's feed puts it on the right slice.

A real node serving the shipped demo model and the shipped demo classifier (whose manifest declares a saliency
head) gets the demo series by real C-STOREs (dcmtk's storescu); every published RESULT is read off a real SUB
socket. The classifier's RESULTs carry a ``saliency`` frame naming the head it explains, equal to the
pipeline's own normalised map; fed to the viewer's feed, each joins the segmentation's slice of its instance.
"""

from __future__ import annotations

import threading

import numpy as np
import pydicom
import pytest

from scanedge.models import DEMO_CLASSIFIER_PATH, DEMO_MODEL_PATH
from scanedge.runtime.core.pipeline import Pipeline
from scanedge.runtime.wire.payloads import arrays_from_frames
from scanedge.runtime.wire.protocol import Result, decode_reply
from tests.dicomnet.conftest import listener, needs_dcmtk, storescu  # noqa: F401 - the node fixture
from tests.dicomnet.test_listener import demo_files, live_subscription

pytest.importorskip("pynetdicom", reason="the DICOM node needs the 'dicomnet' extra")


@needs_dcmtk
def test_the_node_publishes_the_classifiers_saliency_map_and_the_viewer_joins_it_to_the_slice(
    listener,  # noqa: F811
    tmp_path,
):
    pytest.importorskip("starlette", reason="the live viewer needs the 'viewer' extra")
    from scanedge.viewer import LiveFeed

    node = listener([DEMO_MODEL_PATH, DEMO_CLASSIFIER_PATH], publish="tcp://127.0.0.1:*", series_timeout_s=60)
    files = demo_files()[:4]
    series = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    sub = live_subscription(node, tmp_path, series.encode())
    try:
        received = []
        sender = threading.Thread(target=storescu, args=(node.port, *files))
        sender.start()
        while len(received) < 2 * len(files):  # one RESULT per slice and model
            assert sub.poll(60_000), f"only {len(received)} RESULTs arrived"
            received.append(sub.recv_multipart())
        sender.join()
    finally:
        sub.close()
    by_instance = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    feed = LiveFeed("tcp://127.0.0.1:1")
    maps = 0
    with Pipeline.open(DEMO_CLASSIFIER_PATH) as pipe:
        for message in received:
            header = decode_reply(message[1])
            assert isinstance(header, Result)
            names = [f.name for f in header.frames]
            if header.model.startswith("ms-lesion-demo@"):
                assert "saliency" not in names  # no saliency head: no frame, never one made up
            else:
                (info,) = [f for f in header.frames if f.name == "saliency"]
                assert info.of == "lesion_present" and info.dtype == "float32"
                arrays = arrays_from_frames(header.frames, message[2:])
                expected = pipe.run(by_instance[header.instance].read_bytes(), overlay=False).saliency[0]
                assert arrays["saliency"].shape == arrays["image"].shape == expected.values.shape
                assert np.allclose(arrays["saliency"], expected.normalized(), atol=1e-6)
                maps += 1
            feed.handle(message)
    assert maps == len(files)
    s = feed.series[series]
    assert len(s.slices) == len(files)  # the classifier's RESULTs (an empty mask) never take a slice's place
    for key, meta in s.slices.items():
        assert meta["model"].startswith("ms-lesion-demo@")
        kept = feed.retained(series, key)
        assert kept is not None and kept.saliency is not None, key
        assert kept.meta["saliency"]["of"] == "lesion_present" and kept.meta["saliency"]["top"] == "lesion"
    assert feed.saliency_refused == 0

"""Several sequences as input: the manifest's ``inputs``, pairing slices of two series, the two-channel pipeline."""

from __future__ import annotations

import random
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from scanedge.errors import ManifestInvalidError, ManifestMismatchError, MissingInputError
from scanedge.imaging.slices import Slice, SliceAcquisition, SliceGeometry, SliceIdentity
from scanedge.manifest import IntensityPolicy, Manifest, check_model_io, embed_manifest, load_manifest
from scanedge.models import DEMO_MODEL_PATH
from scanedge.runtime.core.pairing import PairingBuffer, resample_onto
from scanedge.runtime.core.pipeline import Pipeline
from tests.conftest import conv_model, simple_manifest

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
STUDY, FRAME = "1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.9"

#: lesion-like where FLAIR (z-scored) is above T1 (windowed to [0, 1] around its own centre): both count
WEIGHTS = np.array([[-1.0, 1.0], [1.0, -1.0]], np.float32)
T1_WINDOW = IntensityPolicy(mode="window", window_center=500.0, window_width=1000.0)


def two_role_inputs(**changes):
    inputs = {
        "roles": [
            {"role": "flair", "series_description": "flair", "scanning_sequence": ["IR"]},
            {"role": "t1", "series_description": "t1", "contrast": "without", "intensity": T1_WINDOW},
        ],
        "pairing": {"tolerance_mm": 1.0, "wait_s": 5.0},
    }
    inputs.update(changes)
    return inputs


def two_channel_manifest(**inputs_changes) -> Manifest:
    return simple_manifest(inputs=two_role_inputs(**inputs_changes))


def named_inputs_model() -> onnx.ModelProto:
    """Two graph inputs (flair, t1), concatenated, then the 1x1 convolution of :data:`WEIGHTS`."""
    w = numpy_helper.from_array(WEIGHTS.reshape(2, 2, 1, 1), "w")
    nodes = [
        helper.make_node("Concat", ["flair", "t1"], ["both"], axis=1),
        helper.make_node("Conv", ["both", "w"], ["logits"], kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 256, 256]) for n in ("flair", "t1")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 256, 256])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def expected_mask(flair: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """What the model must answer, computed directly: z(FLAIR) - window(T1) >= 0."""
    f = flair.astype(np.float64)
    z = (f - f.mean()) / f.std()
    w = np.clip((t1.astype(np.float64) - 0.0) / 1000.0, 0.0, 1.0)
    return (z - w >= 0).astype(np.uint8)


def axial(pixels, z, series, *, spacing=(1.0, 1.0), origin=(0.0, 0.0), frame=FRAME, study=STUDY, number=None):
    return Slice.from_array(
        np.ascontiguousarray(pixels),
        geometry=SliceGeometry(
            pixel_spacing=spacing, image_position=(origin[0], origin[1], float(z)), image_orientation=AXIAL
        ),
        identity=SliceIdentity(
            series_uid=series,
            sop_instance_uid=f"{series}.{number if number is not None else int(z * 10)}",
            instance_number=number,
            modality="MR",
            study_uid=study,
            frame_of_reference_uid=frame,
        ),
    )


# --- the manifest ---------------------------------------------------------------------------------------


def test_todays_manifests_load_unchanged_and_mean_one_input():
    manifest, _ = load_manifest(DEMO_MODEL_PATH)
    assert manifest.inputs is None and manifest.roles == () and "inputs" not in manifest.to_dict()
    assert manifest.image_channels == manifest.input.channels and manifest.graph_inputs() == (manifest.input.name,)
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_an_inputs_section_round_trips_and_names_its_roles():
    m = two_channel_manifest()
    assert m.roles == ("flair", "t1") and m.image_channels == 2
    assert m.intensity_for("t1") == T1_WINDOW and m.intensity_for("flair") == m.intensity
    assert Manifest.from_json(m.to_json()) == m


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"roles": [{"role": "flair"}]}, "needs 2 to 8 roles"),
        ({"roles": [{"role": "flair"}, {"role": "flair"}]}, "unique"),
        ({"roles": [{"role": "FLAIR"}, {"role": "t1"}]}, "a-z"),
        ({"roles": [{"role": "flair", "series_description": "("}, {"role": "t1"}]}, "not a regular expression"),
        ({"roles": [{"role": "flair"}, {"role": "t1"}], "assembly": "named"}, "distinct graph input"),
        ({"roles": [{"role": "flair"}, {"role": "t1", "colour": 1}]}, "unknown key"),
        ({"roles": [{"role": "flair"}, {"role": "t1"}], "pairing": {"wait_s": -1}}, "wait_s"),
        ({"roles": [{"role": "flair"}, {"role": "t1", "contrast": "maybe"}]}, "contrast"),
    ],
)
def test_invalid_inputs_sections_are_refused(inputs, message):
    with pytest.raises(ManifestInvalidError, match=message):
        Manifest.from_dict({**simple_manifest().to_dict(), "inputs": inputs})


def test_the_inputs_are_validated_against_the_graph():
    m = two_channel_manifest()
    check_model_io(m, [("image", [1, 2, 256, 256])], [("logits", [1, 2, 256, 256])])
    with pytest.raises(ManifestMismatchError, match="1 for each of 2 roles"):
        check_model_io(m, [("image", [1, 1, 256, 256])], [("logits", [1, 2, 256, 256])])
    named = simple_manifest(
        inputs={"roles": [{"role": "flair", "input": "flair"}, {"role": "t1", "input": "t2"}], "assembly": "named"}
    )
    with pytest.raises(ManifestMismatchError, match="'t2'"):
        check_model_io(named, [("flair", [1, 1, 256, 256]), ("t1", [1, 1, 256, 256])], [("logits", [1, 2, 256, 256])])


def test_roles_are_recognised_from_sequence_attributes():
    inputs = two_channel_manifest().inputs
    assert inputs is not None

    def kind(description, sequences=(), contrast=""):
        acq = SliceAcquisition(series_description=description, scanning_sequence=sequences, contrast_agent=contrast)
        return inputs.recognise(Slice.from_array(np.zeros((4, 4), np.int16), acquisition=acq))

    assert kind("AX FLAIR", ("SE", "IR")) == "flair"
    assert kind("AX FLAIR", ("SE",)) is None  # no inversion recovery: not the FLAIR the model knows
    assert kind("T1 MPRAGE") == "t1"
    assert kind("T1 MPRAGE", contrast="GADOLINIUM") is None  # post-contrast T1 is another input
    assert kind("DWI") is None


# --- pairing --------------------------------------------------------------------------------------------


def test_shuffled_arrival_pairs_every_slice_with_its_partner_at_its_position():
    buffer = PairingBuffer(two_channel_manifest().inputs)
    rng = np.random.default_rng(1)
    zs = [2.5 * k for k in range(12)]
    flair = [axial(rng.integers(0, 900, (32, 32), dtype=np.int16), z, "1.2.3.1") for z in zs]
    t1 = [axial(rng.integers(0, 900, (32, 32), dtype=np.int16), z + 0.4, "1.2.3.2") for z in zs]
    arrivals = [("t1", s) for s in t1]
    random.Random(7).shuffle(arrivals)
    feeder = threading.Thread(target=lambda: [buffer.add(role, s) for role, s in arrivals])
    feeder.start()
    order = list(range(len(zs)))
    random.Random(3).shuffle(order)
    for k in order:
        partners = buffer.wait(flair[k], timeout=30.0)
        assert partners["t1"] is t1[k]  # same grid: the partner itself, nearest along the normal
    feeder.join()
    assert buffer.held(STUDY) == (12, 12 * 32 * 32 * 2)


def test_a_partner_arriving_during_the_wait_ends_it():
    buffer = PairingBuffer(two_channel_manifest().inputs)
    reference = axial(np.ones((8, 8), np.int16), 10.0, "1.2.3.1")
    partner = axial(np.ones((8, 8), np.int16), 10.5, "1.2.3.2")
    waiting = threading.Event()
    got: dict[str, object] = {}

    def wait() -> None:
        waiting.set()
        got.update(buffer.wait(reference, timeout=60.0))

    t = threading.Thread(target=wait)
    t.start()
    assert waiting.wait(10)
    buffer.add("t1", partner)
    t.join(30)
    assert not t.is_alive() and got["t1"] is partner


def test_a_missing_partner_is_missing_input_after_the_bounded_wait_naming_role_series_and_position():
    buffer = PairingBuffer(two_channel_manifest().inputs)
    buffer.add("t1", axial(np.ones((8, 8), np.int16), 0.0, "1.2.3.2"))
    buffer.add("t1", axial(np.ones((8, 8), np.int16), 5.0, "1.2.3.2"))
    reference = axial(np.ones((8, 8), np.int16), 2.5, "1.2.3.1")  # 2.5 mm from both: beyond the 1 mm tolerance
    assert buffer.partners(reference) is None
    with pytest.raises(MissingInputError) as caught:
        buffer.wait(reference, timeout=0.2)
    text = str(caught.value)
    assert "'t1'" in text and "1.2.3.2" in text and "2.50 mm" in text and caught.value.code == "MISSING_INPUT"
    other_study = axial(np.ones((8, 8), np.int16), 0.0, "1.2.3.1", study="1.2.9")
    with pytest.raises(MissingInputError, match="no series of it arrived"):
        buffer.wait(other_study, timeout=0.0)


def test_a_partner_in_another_frame_of_reference_is_refused_at_once():
    buffer = PairingBuffer(two_channel_manifest().inputs)
    buffer.add("t1", axial(np.ones((8, 8), np.int16), 0.0, "1.2.3.2", frame="1.2.3.999"))
    with pytest.raises(MissingInputError, match="another frame of reference"):
        buffer.wait(axial(np.ones((8, 8), np.int16), 0.0, "1.2.3.1"), timeout=60.0)


def test_a_partner_on_another_grid_is_resampled_onto_the_reference_grid():
    """A linear ramp in patient millimetres: bilinear resampling reproduces it exactly, so every reference
    pixel inside the partner's field of view must hold the ramp's value at that pixel's position."""

    def ramp(xmm, ymm):
        return 3.0 * xmm - 2.0 * ymm + 400.0

    # partner: 64x48 pixels of 2 x 2.5 mm (row, col spacing), first pixel at (-10, 5) mm
    rows, cols = np.mgrid[0:64, 0:48]
    partner_px = ramp(-10.0 + cols * 2.5, 5.0 + rows * 2.0).astype(np.float32)
    partner = axial(partner_px, 20.3, "1.2.3.2", spacing=(2.0, 2.5), origin=(-10.0, 5.0))
    # reference: 100x90 pixels of 1 x 1 mm, first pixel at (0, 10) mm
    reference = axial(np.zeros((100, 90), np.int16), 20.0, "1.2.3.1", origin=(0.0, 10.0))
    buffer = PairingBuffer(two_channel_manifest().inputs)
    buffer.add("t1", partner)
    got = buffer.wait(reference, timeout=5.0)["t1"]
    assert got.shape == (100, 90) and got.geometry.pixel_spacing == reference.geometry.pixel_spacing
    assert got.geometry.image_position == (0.0, 10.0, 20.3)  # the reference grid, at the partner's own place
    r, c = np.mgrid[0:100, 0:90]
    x, y = 0.0 + c * 1.0, 10.0 + r * 1.0
    inside = (x <= -10.0 + 47 * 2.5) & (y <= 5.0 + 63 * 2.0)  # within the partner's last pixel centres
    np.testing.assert_allclose(got.pixels[inside], ramp(x, y)[inside], rtol=0, atol=1e-2)
    assert np.all(got.pixels[~inside & (x > -10.0 + 48 * 2.5)] == 0)  # beyond its field of view: zero
    same = axial(np.zeros((100, 90), np.int16), 20.0, "1.2.3.2", origin=(0.0, 10.0))
    assert resample_onto(same, reference) is same  # already on the grid: no copy


def test_held_slices_are_bounded_per_study_and_in_studies():
    inputs = two_channel_manifest(pairing={"max_slices": 4, "max_bytes": 10_000, "max_studies": 2}).inputs
    buffer = PairingBuffer(inputs)
    for k in range(10):
        buffer.add("t1", axial(np.zeros((16, 16), np.int16), float(k), "1.2.3.2"))
        assert buffer.held(STUDY)[0] <= 4
    for k in range(5):
        buffer.add("t1", axial(np.zeros((60, 60), np.int16), 0.0, "1.2.3.2", study=f"1.2.{k}"))
        assert buffer.held()[1] <= 2 * 10_000
    assert buffer.held(STUDY) == (0, 0) and buffer.dropped > 0


# --- the pipeline ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("assembly", ["channels", "named"])
def test_two_sequences_feed_one_model_each_with_its_own_normalisation(tmp_path, assembly):
    if assembly == "channels":
        model = conv_model(2, WEIGHTS)
        manifest = two_channel_manifest()
    else:
        model = named_inputs_model()
        roles = two_role_inputs()["roles"]
        roles = [{**roles[0], "input": "flair"}, {**roles[1], "input": "t1"}]
        manifest = simple_manifest(inputs=two_role_inputs(roles=roles, assembly="named"))
    path = tmp_path / "two.onnx"
    embed_manifest(model, manifest, path)
    rng = np.random.default_rng(5)
    flair = rng.normal(300, 80, (256, 256)).astype(np.int16)
    t1 = rng.integers(0, 1200, (256, 256)).astype(np.int16)
    with Pipeline.open(path) as pipe:
        result = pipe.run_inputs({"flair": axial(flair, 0.0, "1.2.3.1"), "t1": axial(t1, 0.0, "1.2.3.2")})
        np.testing.assert_array_equal(result.mask, expected_mask(flair, t1))
        assert result.identity.series_uid == "1.2.3.1"  # the result is the reference slice's
        # both channels count: another T1 gives another mask
        other = pipe.run_inputs({"flair": flair, "t1": np.full((256, 256), 1000, np.int16)}, overlay=False)
        assert not np.array_equal(other.mask, result.mask)
        with pytest.raises(MissingInputError, match="t1"):
            pipe.run_inputs({"flair": flair})
        with pytest.raises(MissingInputError, match="flair, t1"):
            pipe.run(flair)


def test_a_two_channel_network_exported_from_torch_gets_both_sequences_normalised_each_its_own_way(tmp_path):
    torch = pytest.importorskip("torch")  # the train extra (pip install torch==2.13.0); CI's test extra has none
    import warnings

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)).eval()
    path = tmp_path / "torch_two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its successor
        torch.onnx.export(
            net,
            (torch.zeros(1, 2, 256, 256),),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamo=False,
            opset_version=17,
        )
    embed_manifest(onnx.load(str(path)), two_channel_manifest(), path)
    rng = np.random.default_rng(8)
    flair = rng.normal(300, 80, (256, 256)).astype(np.int16)
    t1 = rng.integers(0, 1200, (256, 256)).astype(np.int16)
    # the input computed directly: FLAIR z-scored, T1 windowed to [0, 1] (centre 500, width 1000)
    f = flair.astype(np.float64)
    stacked = np.stack([(f - f.mean()) / f.std(), np.clip(t1 / 1000.0, 0, 1)])[None].astype(np.float32)
    with torch.no_grad():
        reference = torch.softmax(net(torch.from_numpy(stacked)), dim=1)[0].numpy()
    with Pipeline.open(path) as pipe:
        result = pipe.run_inputs({"flair": flair, "t1": t1}, overlay=False)
        np.testing.assert_allclose(result.probabilities, reference, atol=1e-4)
        other = pipe.run_inputs({"flair": flair, "t1": np.zeros_like(t1)}, overlay=False)
        assert np.abs(other.probabilities - result.probabilities).max() > 1e-3  # the T1 channel counts


def test_one_series_calibration_of_a_multi_input_model_is_refused_and_fp16_converts(tmp_path):
    from scanedge.converters.calibration import CalibrationSlices
    from scanedge.converters.convert import ConvertConfig, convert
    from scanedge.errors import ConversionError

    manifest = two_channel_manifest()
    with pytest.raises(ConversionError, match=r"several series at once \(flair, t1\).*paired"):
        CalibrationSlices(manifest, [Slice.from_array(np.zeros((8, 8), np.int16))] * 30)
    path = tmp_path / "two.onnx"
    embed_manifest(conv_model(2, WEIGHTS), manifest, path)
    made = convert(path, ConvertConfig(precision="fp16", out_dir=tmp_path / "out"))
    flair = np.random.default_rng(2).normal(300, 80, (256, 256)).astype(np.int16)
    t1 = np.full((256, 256), 400, np.int16)
    with Pipeline.open(made.output) as pipe:
        assert pipe.manifest.inputs == manifest.inputs and pipe.manifest.precision == "fp16"
        assert pipe.run_inputs({"flair": flair, "t1": t1}, overlay=False).mask.shape == (256, 256)


def test_manifest_init_describes_a_multi_input_model_from_its_graph(tmp_path, capsys):
    from scanedge.cli import main as scanedge_main
    from scanedge.errors import ConfigError
    from scanedge.manifest_init import ManifestInitConfig, draft_manifest

    channels = conv_model(2, WEIGHTS)
    drafted = draft_manifest(
        channels, ManifestInitConfig(name="ms", classes=("bg", "lesion"), roles=(("flair", ""), ("t1", "")))
    )
    assert drafted.roles == ("flair", "t1") and drafted.inputs.assembly == "channels" and drafted.image_channels == 2
    with pytest.raises(ManifestMismatchError, match=r"declares 3 \(1 for each of 3 roles\)"):  # the graph has 2
        draft_manifest(
            channels, ManifestInitConfig(name="ms", classes=("bg", "l"), roles=(("a", ""), ("b", ""), ("c", "")))
        )
    named = draft_manifest(
        named_inputs_model(),
        ManifestInitConfig(name="ms", classes=("bg", "l"), roles=(("flair", "flair"), ("t1", "t1"))),
    )
    assert named.inputs.assembly == "named" and named.graph_inputs() == ("flair", "t1")
    with pytest.raises(ConfigError, match="for every role"):
        draft_manifest(
            named_inputs_model(),
            ManifestInitConfig(name="m", classes=("b", "l"), roles=(("flair", "flair"), ("t1", ""))),
        )
    path = tmp_path / "bare.onnx"
    onnx.save(channels, str(path))
    assert (
        scanedge_main(["manifest", "init", str(path), "--name", "ms", "--classes", "bg,lesion", "--roles", "flair,t1"])
        == 0
    )
    with Pipeline.open(path) as pipe:
        assert pipe.manifest.roles == ("flair", "t1")
        flair = np.random.default_rng(1).normal(300, 80, (256, 256)).astype(np.int16)
        assert pipe.run_inputs({"flair": flair, "t1": flair}, overlay=False).mask.shape == (256, 256)

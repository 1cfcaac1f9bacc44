"""Old import paths of moved modules and names keep working for a release, and say where things live now."""

import importlib
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from scanedge._moved import MOVED_MODULES, forward_names


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_an_old_module_path_serves_the_module_at_its_new_home_with_a_warning(old, monkeypatch):
    new = MOVED_MODULES[old]
    moved = importlib.import_module(new)
    monkeypatch.delitem(sys.modules, old, raising=False)  # imported by an earlier test: import it afresh
    with pytest.warns(DeprecationWarning, match=rf"^{old} moved to {new};"):
        served = importlib.import_module(old)
    assert served is moved  # one module: isinstance and monkeypatching see one thing
    for name in moved.__all__:
        assert getattr(served, name) is getattr(moved, name)
    # the module keeps its own spec, so importlib.reload (not called here: it would re-create every class
    # other tests hold) finds it at its new home
    assert (moved.__name__, moved.__spec__.name) == (new, new)


def test_the_dicom_readers_old_paths_give_the_same_objects_on_a_first_import():
    """In a fresh interpreter, where the old path is the first to load the module, and ``from ... import``."""
    script = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("error", DeprecationWarning)
        try:
            from scanedge.imaging.dicom_dataset import read_dataset
        except DeprecationWarning as exc:
            print("warned:", exc)
        warnings.simplefilter("ignore", DeprecationWarning)
        from scanedge.imaging.dicom_dataset import DicomSource, read_dataset
        from scanedge.imaging.dicom_fast import FastDataset, fast_dataset
        import scanedge.imaging.dicom.dataset as dataset, scanedge.imaging.dicom.fast as fast
        print(read_dataset is dataset.read_dataset, DicomSource is dataset.DicomSource)
        print(fast_dataset is fast.fast_dataset, FastDataset is fast.FastDataset)
        """
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "warned: scanedge.imaging.dicom_dataset moved to scanedge.imaging.dicom.dataset; the old path will be "
        "removed in a later release",
        "True True",
        "True True",
    ]


def test_a_path_that_did_not_move_is_left_to_the_other_finders():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("scanedge.imaging.never_was_here")


def test_a_moved_name_is_served_from_its_new_module_with_a_warning():
    old = types.ModuleType("scanedge.example_old")
    old.__getattr__ = forward_names(old.__name__, {"decode": ("scanedge.imaging.dicom", "slices_from_dicom")})
    from scanedge.imaging.dicom import slices_from_dicom

    with pytest.warns(DeprecationWarning, match=r"^scanedge\.example_old\.decode moved to scanedge\.imaging\.dicom"):
        assert old.decode is slices_from_dicom
    with pytest.raises(AttributeError, match=r"'scanedge\.example_old' has no attribute 'encode'"):
        old.encode  # noqa: B018


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("scanedge", "EngineOptions", "EngineConfig"),
        ("scanedge", "OverlayOptions", "OverlayConfig"),
        ("scanedge.engines", "RemoteOptions", "RemoteConfig"),
        ("scanedge.converters.convert", "ConvertOptions", "ConvertConfig"),
        ("scanedge.manifest_init", "ManifestInitOptions", "ManifestInitConfig"),
        ("scanedge.runtime.console.replay", "ReplaySettings", "ReplayConfig"),
        ("scanedge.bench.stream", "StreamSettings", "StreamConfig"),
        ("scanedge.bench.soak", "SoakSettings", "SoakConfig"),
        ("scanedge.dicomnet.outputs.seg", "SegmentationSettings", "SegmentationConfig"),
    ],
)
def test_every_configuration_is_called_config_and_its_earlier_name_still_works(module, old, new):
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{old} moved to .*\.{new}"):
        assert getattr(mod, old) is getattr(mod, new)

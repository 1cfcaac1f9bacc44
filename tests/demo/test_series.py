import numpy as np
import pydicom

from scanedge.demo.series import demo_series_dir, load_demo_patient, write_demo_series
from scanedge.imaging.files import load_slices


def test_demo_series_is_valid_dicom_with_consistent_geometry(demo_series):
    files = sorted(demo_series.glob("*.dcm"))
    patient = load_demo_patient()
    assert len(files) == len(patient.pixels) >= 24
    datasets = [pydicom.dcmread(f) for f in files]
    assert len({d.SOPInstanceUID for d in datasets}) == len(files)
    assert len({d.SeriesInstanceUID for d in datasets}) == 1 and len({d.StudyInstanceUID for d in datasets}) == 1
    for d in datasets:
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
        assert pydicom.uid.UID(d.SOPInstanceUID).is_valid
        assert d.Modality == "MR" and d.PhotometricInterpretation == "MONOCHROME2"
        assert list(d.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]
    z = [float(d.ImagePositionPatient[2]) for d in datasets]
    assert np.allclose(np.diff(z), float(datasets[0].SpacingBetweenSlices))
    for d, px in zip(datasets, patient.pixels):
        np.testing.assert_array_equal(d.pixel_array, px)


def test_demo_series_reads_back_in_spatial_order(demo_series):
    loaded = load_slices([demo_series])
    positions = [item.slice.geometry.position_along_normal for item in loaded]
    assert positions == sorted(positions)
    assert loaded[0].slice.window_center is not None


def test_demo_series_is_written_once_and_reproducibly(demo_series, tmp_path):
    assert demo_series_dir() == demo_series
    again = write_demo_series(tmp_path)
    a = pydicom.dcmread(again[0])
    b = pydicom.dcmread(sorted(demo_series.glob("*.dcm"))[0])
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID

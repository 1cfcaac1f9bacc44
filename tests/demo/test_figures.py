import cv2

from scanedge.demo.figures import write_figures


def test_the_readme_pictures_are_made_from_the_shipped_model(tmp_path):
    overlay, sheet = (cv2.imread(str(p)) for p in write_figures(tmp_path))
    assert overlay.shape == (256, 4 * 256 + 3 * 6, 3)  # three slices and a heat map, full resolution
    assert sheet.shape[1] == 8 * 256 and sheet.shape[0] > 2 * 256  # two rows of eight, banner and legend

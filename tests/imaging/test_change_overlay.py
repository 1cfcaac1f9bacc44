"""Change pictures: each class drawn in its CHANGE_COLOURS colour, untracked findings in grey, nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from scanedge.imaging.change_overlay import UNCLASSIFIED_COLOUR, change_legend, render_change
from scanedge.imaging.followup import CHANGE_CODES, CHANGE_COLOURS
from scanedge.imaging.slices import Slice


def _slice() -> Slice:
    return Slice.from_array(np.full((64, 64), 100, np.uint16), window_center=128, window_width=256)


def test_each_class_is_tinted_and_outlined_in_its_colour():
    codes = np.zeros((64, 64), np.uint8)
    codes[10:20, 10:20] = CHANGE_CODES["new"]
    codes[30:40, 30:40] = CHANGE_CODES["shrinking"]
    mask = (codes > 0).astype(np.uint8)
    mask[50:56, 50:56] = 1  # found, but without a class
    picture = render_change(_slice(), codes, mask)
    grey = picture[2, 2].astype(int)
    assert (picture[2, 2] == picture[2, 2][0]).all()  # outside every lesion: the grey slice untouched
    for name, (y, x) in (("new", (10, 15)), ("shrinking", (30, 35))):
        assert tuple(picture[y, x]) == CHANGE_COLOURS[name]  # the outline
        inner = picture[y + 4, x].astype(int)  # the tint: towards the class colour
        assert np.argmax(inner - grey) == int(np.argmax(CHANGE_COLOURS[name]))
    assert tuple(picture[50, 53]) == UNCLASSIFIED_COLOUR
    assert (picture[53, 53] == grey).all()  # untracked findings are outlined, not filled


def test_wrong_sized_codes_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        render_change(_slice(), np.zeros((32, 32), np.uint8))


def test_the_legend_lists_the_classes_present_with_their_counts():
    assert change_legend({"new": 2, "stable": 0}) == [
        ("new 2", CHANGE_COLOURS["new"]),
        ("no class", UNCLASSIFIED_COLOUR),
    ]
    names = [name for name, _ in change_legend(unclassified=False)]
    assert "disappeared" not in names and names[0] == "new"  # disappeared lesions have no current pixels

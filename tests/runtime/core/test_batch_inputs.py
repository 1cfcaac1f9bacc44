"""Which series fills which role when a study is segmented from files (scanedge.runtime.core.batch_inputs)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from scanedge.errors import ConfigError
from scanedge.imaging.files import LoadedSlice
from scanedge.runtime.core.batch_inputs import assign_roles
from tests.conftest import simple_manifest
from tests.dicomnet.test_multi_input_node import Study
from tests.runtime.core.test_multi_input import two_role_inputs


def loaded(slices, folder: str, description: str | None = None, series: str | None = None) -> list[LoadedSlice]:
    out = []
    for k, s in enumerate(slices):
        if description is not None:
            s = replace(s, acquisition=replace(s.acquisition, series_description=description))
        if series is not None:
            s = replace(s, identity=replace(s.identity, series_uid=series, sop_instance_uid=f"{series}.{k}"))
        out.append(LoadedSlice(f"{folder}-{k}.dcm", Path("/data") / folder / f"{k}.dcm", s))
    return out


def test_a_series_no_rule_matches_is_left_out_and_listed_when_the_reference_has_rules():
    study = Study()
    dwi = loaded(study.flair, "dwi", "DWI b1000", "1.2.3.99")
    found = assign_roles(
        simple_manifest(inputs=two_role_inputs()), [*loaded(study.flair, "f"), *loaded(study.t1, "t"), *dwi]
    )
    assert [(s.role, s.series_uid, s.how) for s in found.series] == [
        ("flair", study.flair_uid, "recognised"),
        ("t1", study.t1_uid, "recognised"),
    ]
    assert [(s.series_uid, s.description, s.slices) for s in found.unused] == [("1.2.3.99", "DWI b1000", 6)]
    assert [i.name for i in found.references] == [f"f-{k}.dcm" for k in range(6)]
    assert found.to_dict()["unused_series"][0]["description"] == "DWI b1000"


def test_a_series_no_rule_matches_is_the_reference_when_the_reference_has_no_rules():
    inputs = two_role_inputs()
    inputs["roles"][0] = {"role": "flair"}  # only ever named, or everything the t1 rules do not take
    study = Study()
    found = assign_roles(simple_manifest(inputs=inputs), [*loaded(study.flair, "f", "sag 1"), *loaded(study.t1, "t")])
    assert [(s.role, s.how) for s in found.series] == [("flair", "reference"), ("t1", "recognised")]
    assert len(found.references) == len(study.flair) and not found.unused


def test_named_folders_win_over_recognition_and_unknown_roles_are_refused():
    study = Study()
    items = [*loaded(study.flair, "a", "T1 SE"), *loaded(study.t1, "b", "AX FLAIR")]  # descriptions swapped
    manifest = simple_manifest(inputs=two_role_inputs())
    found = assign_roles(manifest, items, {"flair": [Path("/data/a")], "t1": [Path("/data/b")]})
    assert [(s.role, s.series_uid, s.how) for s in found.series] == [
        ("flair", study.flair_uid, "named"),
        ("t1", study.t1_uid, "named"),
    ]
    with pytest.raises(ConfigError, match=r"no role\(s\) t2; its roles are flair, t1"):
        assign_roles(manifest, items, {"t2": [Path("/data/b")]})

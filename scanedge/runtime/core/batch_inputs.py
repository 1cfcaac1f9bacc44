"""Segmenting a study from files with a model that takes several series at once (manifest ``inputs``).

``scanedge segment`` (and ``scanedge verify``) on a multi-input model read every slice under the paths
given, then:

- *assign roles*: each series becomes a role the way the DICOM node and the runtime decide it
  (:meth:`~scanedge.manifest_inputs.InputsSpec.recognise`: the manifest's rules on Series Description,
  Scanning Sequence, ...), or because the user named its folder for the role (``--roles t1=DIR``). A
  series no rule matches is the reference when the reference role has no rules (as the node treats it),
  otherwise it is not used and listed. A role that no series fills is a
  :class:`~scanedge.errors.MissingInputError` naming the role and the series descriptions that were seen.
- *pair*: every partner slice is held in a :class:`~scanedge.runtime.core.pairing.PairingBuffer` (bounds
  raised to hold the whole batch, which the slice limits of the reading already bound); each reference
  slice gets the nearest partner along its normal within the manifest's tolerance, from the same study and
  frame of reference, resampled onto its grid, as it would live.
- *segment*: each reference slice with :meth:`~scanedge.runtime.core.pipeline.Pipeline.run_inputs`, through
  :func:`~scanedge.runtime.core.batch.segment_to_folder`, so overlays, masks, montage and results.json are
  those of a one-input model, on the reference series' grid. A reference slice without a partner is listed
  as skipped with code ``MISSING_INPUT`` (role, series UID and position; no patient attribute) and the batch
  goes on. results.json gets an ``inputs`` section: which series filled each role, how many reference
  slices were paired and how many lacked a partner.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from scanedge.errors import MissingInputError
from scanedge.imaging.files import LoadedSlice, SkippedFile
from scanedge.imaging.slices import Slice
from scanedge.manifest import Manifest
from scanedge.manifest_inputs import InputsSpec
from scanedge.runtime.core.batch import BatchOutput, BatchReport, segment_to_folder
from scanedge.runtime.core.pairing import PairingBuffer, slices_by_role
from scanedge.runtime.core.pipeline import Pipeline, SliceResult
from scanedge.safe_text import printable

__all__ = [
    "RoleSeries",
    "StudyInputs",
    "assign_roles",
    "check_role_names",
    "paired_slices",
    "pairing_buffer",
    "segment_study_to_folder",
]

How = Literal["named", "recognised", "reference"]
#: series descriptions quoted in an error, at most (a folder may hold a whole study)
_QUOTED_SERIES = 12


@dataclass(frozen=True)
class RoleSeries:
    """One series and the role it fills (or none).

    Attributes:
        role: the role; empty for a series that fills none.
        series_uid: its Series Instance UID.
        description: its Series Description (one printable line, at most 64 characters).
        slices: its slices read.
        how: ``named`` (its folder was named for the role), ``recognised`` (the manifest's rules), or
            ``reference`` (no rule matched and the reference role has none); empty for an unused series.
    """

    role: str
    series_uid: str
    description: str
    slices: int
    how: How | Literal[""] = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out: dict[str, Any] = {"series_uid": self.series_uid, "description": self.description, "slices": self.slices}
        if self.how:
            out["how"] = self.how
        return out

    def label(self) -> str:
        """``series 1.2.3 "AX FLAIR" (24 slices)``."""
        return f'series {self.series_uid or "(unnamed)"} "{self.description}" ({self.slices} slice(s))'


@dataclass(eq=False)
class StudyInputs:
    """Which series fill each role, the slices per role, and (after segmenting) how many reference slices
    were paired.

    Attributes:
        inputs: the model's ``inputs`` section.
        series: the series that fill a role, in role order.
        unused: series no role takes.
        slices: per role, its slices in series order.
        paired: reference slices segmented with every partner.
        missing: reference slices without a partner (each listed as a skipped ``MISSING_INPUT``).
        missing_names: their file names (``name#frame`` for a frame), in the order met.
    """

    inputs: InputsSpec
    series: tuple[RoleSeries, ...]
    unused: tuple[RoleSeries, ...]
    slices: dict[str, list[LoadedSlice]]
    paired: int = 0
    missing: int = 0
    missing_names: list[str] = field(default_factory=list)

    @property
    def references(self) -> list[LoadedSlice]:
        """The reference role's slices, in series order (what is segmented)."""
        return self.slices[self.inputs.reference.role]

    def lines(self) -> list[str]:
        """One line per role saying which series fill it, one for unused series, one for the pairing."""
        out = []
        for role in self.inputs.names:
            filled = [s for s in self.series if s.role == role]
            what = "; ".join(f"{s.label()}, {s.how}" for s in filled)
            out.append(f"role {role}{' (reference)' if role == self.inputs.reference.role else ''}: {what}")
        if self.unused:
            out.append("not used (no role matches): " + "; ".join(s.label() for s in self.unused))
        total = len(self.references)
        out.append(
            f"paired {self.paired} of {total} reference slice(s)"
            + (f"; {self.missing} without a partner (MISSING_INPUT, listed above)" if self.missing else "")
        )
        return out

    def to_dict(self) -> dict[str, Any]:
        """results.json's ``inputs`` section."""
        return {
            "assembly": self.inputs.assembly,
            "roles": [
                {
                    "role": role,
                    "reference": role == self.inputs.reference.role,
                    "series": [s.to_dict() for s in self.series if s.role == role],
                }
                for role in self.inputs.names
            ],
            "unused_series": [s.to_dict() for s in self.unused],
            "reference_slices": len(self.references),
            "paired": self.paired,
            "missing": self.missing,
            "tolerance_mm": self.inputs.pairing.tolerance_mm,
        }


def _describe(items: Sequence[LoadedSlice], role: str = "", how: How | Literal[""] = "") -> RoleSeries:
    acq, ident = items[0].slice.acquisition, items[0].slice.identity
    return RoleSeries(role, ident.series_uid, printable(acq.series_description, 64), len(items), how)


def _under(path: Path, folders: Sequence[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == f or f in resolved.parents for f in folders)


def assign_roles(
    manifest: Manifest, loaded: Sequence[LoadedSlice], named: Mapping[str, Sequence[Path]] | None = None
) -> StudyInputs:
    """The role of every series among ``loaded`` (module docstring); ``named`` maps a role to the files or
    folders whose slices fill it whatever their attributes (``--roles t1=DIR``).

    MissingInputError when a role is filled by no series (naming the role and the descriptions seen);
    ConfigError for a named role the model does not take (:func:`check_role_names`).
    """
    inputs = manifest.inputs
    check_role_names(manifest, list(named or {}))
    if inputs is None:
        raise ValueError(f"model {manifest.name} has one input; its slices need no roles")
    folders = {role: [Path(p).resolve() for p in paths] for role, paths in (named or {}).items()}
    by_series: dict[str, list[LoadedSlice]] = {}
    for item in loaded:
        by_series.setdefault(item.slice.identity.series_uid, []).append(item)
    slices: dict[str, list[LoadedSlice]] = {role: [] for role in inputs.names}
    series: list[RoleSeries] = []
    unused: list[RoleSeries] = []
    for items in by_series.values():
        role, how = _role_of(inputs, items, folders)
        if role is None:
            unused.append(_describe(items))
            continue
        slices[role].extend(items)
        series.append(_describe(items, role, how))
    empty = [role for role in inputs.names if not slices[role]]
    if empty:
        seen = [f'"{s.description}"' for s in (*series, *unused)]
        more = len(seen) - _QUOTED_SERIES
        listed = ", ".join(seen[:_QUOTED_SERIES]) + (f" and {more} more" if more > 0 else "")
        raise MissingInputError(
            f"model {manifest.name} takes the roles {', '.join(inputs.names)}; no series fills "
            f"{' or '.join(repr(r) for r in empty)} (series descriptions seen: {listed or 'none'}); "
            f"name the folder of each with --roles {empty[0]}=DIR"
        )
    order = {role: k for k, role in enumerate(inputs.names)}
    series.sort(key=lambda s: order[s.role])
    return StudyInputs(inputs, tuple(series), tuple(unused), slices)


def _role_of(
    inputs: InputsSpec, items: Sequence[LoadedSlice], folders: Mapping[str, Sequence[Path]]
) -> tuple[str | None, How | Literal[""]]:
    for role, paths in folders.items():
        if all(_under(i.path, paths) for i in items):
            return role, "named"
    recognised = inputs.recognise(items[0].slice)
    if recognised is not None:
        return recognised, "recognised"
    if not inputs.reference.has_rules:
        return inputs.reference.role, "reference"
    return None, ""


def check_role_names(manifest: Manifest, names: Sequence[str]) -> None:
    """ConfigError naming a role the model does not take (``--roles`` typos are caught before any work)."""
    from scanedge.errors import ConfigError

    roles = manifest.roles
    if not roles:
        raise ConfigError(f"--roles names input roles; model {manifest.name} takes one input and has none")
    unknown = [n for n in names if n not in roles]
    if unknown:
        raise ConfigError(
            f"model {manifest.name} has no role(s) {', '.join(unknown)}; its roles are {', '.join(roles)}"
        )


def pairing_buffer(study: StudyInputs) -> PairingBuffer:
    """Every partner slice of ``study`` held for pairing, the buffer's bounds raised to the whole batch (the
    slices are already in memory, read within the slice limits)."""
    partners = [item for role in study.inputs.names[1:] for item in study.slices[role]]
    policy = study.inputs.pairing
    policy = replace(
        policy,
        max_slices=min(1 << 20, max(policy.max_slices, len(partners))),
        max_bytes=min(1 << 40, max(policy.max_bytes, sum(i.slice.pixels.nbytes for i in partners))),
        max_studies=min(4096, max(policy.max_studies, len({i.slice.identity.study_uid for i in partners}))),
    )
    buffer = PairingBuffer(study.inputs, policy)
    for role in study.inputs.names[1:]:
        for item in study.slices[role]:
            buffer.add(role, item.slice)
    return buffer


def paired_slices(study: StudyInputs, buffer: PairingBuffer, reference: Slice) -> dict[str, Slice]:
    """``reference`` and its partners by role (on its grid); MissingInputError naming what is missing."""
    found = buffer.partners(reference)  # raises when a role can never be paired (frame of reference, planes)
    if found is None:
        raise buffer.missing(reference, None)
    return slices_by_role(reference, found, study.inputs)


def segment_study_to_folder(
    pipe: Pipeline,
    study: StudyInputs,
    output: BatchOutput,
    progress: Callable[[int, int], None] | None = None,
    skipped: Sequence[SkippedFile] = (),
) -> BatchReport:
    """Segment every reference slice of ``study`` with its partners into ``output`` (module docstring);
    ``study.paired`` / ``missing`` are counted, and results.json gets the ``inputs`` section."""
    buffer = pairing_buffer(study)

    def run(_: int, item: LoadedSlice) -> SliceResult:
        try:
            sources = paired_slices(study, buffer, item.slice)
        except MissingInputError:
            study.missing += 1
            study.missing_names.append(item.name)
            raise
        study.paired += 1
        return pipe.run_inputs(sources)

    report = segment_to_folder(pipe, study.references, output, progress, skipped, run=run)
    data = json.loads(report.results_path.read_text())
    data["inputs"] = study.to_dict()
    tmp = report.results_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(report.results_path)
    return report

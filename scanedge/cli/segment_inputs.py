"""``scanedge segment`` (and ``verify``) for a model that takes several series of one study (manifest ``inputs``).

Kept apart from :mod:`scanedge.cli.segment`, which calls in here once it knows the model has roles: the
roles are assigned, paired and segmented by :mod:`scanedge.runtime.core.batch_inputs`; this module adds the
``--roles`` option and prints which series filled each role.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanedge.cli.arguments import literal, parse_roles
from scanedge.errors import ConfigError

if TYPE_CHECKING:
    from scanedge.imaging.files import LoadedSlice, SliceScan
    from scanedge.imaging.slices import Slice
    from scanedge.manifest import Manifest
    from scanedge.runtime.core.batch import BatchOutput, BatchReport
    from scanedge.runtime.core.batch_inputs import StudyInputs
    from scanedge.runtime.core.pipeline import Pipeline

__all__ = ["add_roles_arg", "input_paths", "named_roles", "paired_study", "segment_study", "study_inputs"]


def add_roles_arg(p: argparse.ArgumentParser) -> None:
    """``--roles``: which paths fill which input role of a multi-input model."""
    p.add_argument(
        "--roles",
        nargs="+",
        default=None,
        metavar="ROLE=PATH",
        help="for a model that takes several series of one study (manifest inputs): the files or folders of "
        "each role, e.g. --roles flair=study/3 t1=study/5, or one list ROLE,ROLE giving the role of each path in "
        "order as `scanedge replay --roles` (default: each series is recognised by the manifest's rules)",
    )


def named_roles(args: argparse.Namespace) -> dict[str, list[Path]]:
    """``--roles`` parsed: role -> paths ({} without it)."""
    return parse_roles(getattr(args, "roles", None), list(getattr(args, "paths", None) or ()))


def input_paths(args: argparse.Namespace) -> list[Path]:
    """The paths to read: the positional ones, then the ``ROLE=PATH`` ones not among them; ConfigError when
    there is none."""
    paths = list(args.paths or ())
    for extra in named_roles(args).values():
        paths += [p for p in extra if p not in paths]
    if not paths:
        raise ConfigError("name the files or folders of slices (or --roles ROLE=PATH for each input role)")
    return paths


def study_inputs(manifest: Manifest, loaded: tuple[LoadedSlice, ...], args: argparse.Namespace) -> StudyInputs:
    """The series of ``loaded`` assigned to ``manifest``'s roles (``--roles`` first, then recognition)."""
    from scanedge.runtime.core.batch_inputs import assign_roles

    return assign_roles(manifest, loaded, named_roles(args))


def paired_study(
    manifest: Manifest, args: argparse.Namespace, limit: int
) -> tuple[StudyInputs, list[dict[str, Slice]]]:
    """The study under ``args.paths`` (and ``--roles``) read, its series assigned to ``manifest``'s roles and its
    reference slices paired as ``scanedge segment`` pairs them: at most ``limit`` sets, one slice per role on the
    reference grid (``verify`` compares on them, ``convert`` calibrates on them). A reference slice without a
    partner is left out and counted in ``missing``; a role no series fills is a MissingInputError naming it."""
    from scanedge.cli.arguments import read_slices
    from scanedge.errors import MissingInputError
    from scanedge.runtime.core.batch_inputs import paired_slices, pairing_buffer

    study = study_inputs(manifest, tuple(read_slices(input_paths(args))), args)
    buffer = pairing_buffer(study)
    sets: list[dict[str, Slice]] = []
    for item in study.references:
        if len(sets) >= limit:
            break
        try:
            sets.append(paired_slices(study, buffer, item.slice))
            study.paired += 1
        except MissingInputError:
            study.missing += 1
    return study, sets


def segment_study(
    args: argparse.Namespace,
    pipe: Pipeline,
    scan: SliceScan,
    output: BatchOutput,
    progress: Callable[[int, int], None] | None,
    console: Any,
) -> tuple[BatchReport, StudyInputs]:
    """Segment the study in ``scan`` with a multi-input model: roles printed, then each reference slice with
    its partners (unpaired ones listed as skipped ``MISSING_INPUT``)."""
    from scanedge.runtime.core.batch_inputs import check_role_names, segment_study_to_folder

    check_role_names(pipe.manifest, list(named_roles(args)))  # --roles for a one-input model is refused
    if getattr(args, "prior", None) is not None:
        raise ConfigError(
            f"--prior compares one series with its prior; model {pipe.model_label} takes several series at once "
            f"({', '.join(pipe.manifest.roles)}), which the follow-up does not support"
        )
    from scanedge.console import make_console

    study = study_inputs(pipe.manifest, scan.loaded, args)
    report = segment_study_to_folder(pipe, study, output, progress, scan.skipped)
    out = console if getattr(args, "json", False) else make_console(stderr=False)  # --json: stdout is the JSON
    for line in study.lines():
        out.print(literal(line))
    return report, study

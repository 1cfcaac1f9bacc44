"""The manifest's optional ``inputs`` section: models that take several sequences of one study at once.

A lesion model trained on FLAIR and T1 together needs, for every FLAIR slice, the T1 slice at the same
place in the patient, each normalised the way it was in training. The section names each input *role*
(``flair``, ``t1``), says how a series is recognised as that role (series description, Scanning Sequence,
Sequence Name, contrast agent, modality), how the roles become the model's input (channels of the one
image tensor in role order, or one named graph input per role), and how slices are paired (tolerance
along the slice normal, how long to wait for a partner, how much may be held).

Without the section a manifest means what it always meant: one input, one series. The first role is the
*reference*: results are made on its slices and its grid; every other role is resampled onto it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from scanedge.errors import ManifestInvalidError

if TYPE_CHECKING:
    from scanedge.imaging.slices import Slice
    from scanedge.manifest import IntensityPolicy

__all__ = ["ROLE_PATTERN", "Assembly", "ContrastRule", "InputRole", "InputsSpec", "PairingPolicy"]

#: a role's name: lower-case, short, safe in a wire header, a log line and a file name
ROLE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_ROLES = 8

Assembly = Literal["channels", "named"]
ContrastRule = Literal["any", "with", "without"]


def _fail(what: str, problem: str) -> ManifestInvalidError:
    return ManifestInvalidError(f"manifest field {what}: {problem}")


def _regex(what: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > 256:
        raise _fail(what, "must be a regular expression of at most 256 characters")
    try:
        re.compile(value)
    except re.error as exc:
        raise _fail(what, f"is not a regular expression: {exc}") from None
    return value


def _codes(what: str, values: Any) -> tuple[str, ...]:
    from scanedge.manifest import CODE_STRING

    if isinstance(values, str) or not isinstance(values, (tuple, list)) or len(values) > 16:
        raise _fail(what, f"{values!r} must be a list of at most 16 DICOM code strings")
    out = []
    for v in values:
        text = v.strip().upper() if isinstance(v, str) else v
        if not isinstance(text, str) or not CODE_STRING.fullmatch(text):
            raise _fail(what, f"{v!r} is not a DICOM code string (1-16 of A-Z, 0-9, space, underscore)")
        out.append(text)
    return tuple(out)


@dataclass(frozen=True)
class InputRole:
    """One input of a multi-input model and how its series is recognised.

    Recognition rules are all optional; a rule is tested only against what the slice carries (a raw
    frame sent with an explicit ``role`` needs none of them). A series is a role when every rule given holds.

    Attributes:
        role: the role's name (``flair``, ``t1``): lower-case letters, digits, underscores, at most 32.
        series_description: a regular expression Series Description must match (searched, ignoring case).
        scanning_sequence: Scanning Sequence values that must all be present (``IR``, ``SE``, ``GR``, ...).
        sequence_name: a regular expression Sequence Name must match (searched, ignoring case).
        contrast: ``with`` (a Contrast/Bolus Agent is named), ``without`` (none), or ``any``.
        modalities: DICOM Modality values accepted; empty: any.
        input: for ``assembly: named``, the graph input this role feeds; unused for ``channels``.
        intensity: this role's normalisation (an ``intensity`` object); None: the manifest's ``intensity``.
    """

    role: str
    series_description: str = ""
    scanning_sequence: tuple[str, ...] = ()
    sequence_name: str = ""
    contrast: ContrastRule = "any"
    modalities: tuple[str, ...] = ()
    input: str = ""
    intensity: IntensityPolicy | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or not ROLE_PATTERN.fullmatch(self.role):
            raise _fail("inputs.roles[].role", f"{self.role!r} must be 1-32 of a-z, 0-9, _ starting with a letter")
        where = f"inputs.roles[{self.role}]"
        _regex(f"{where}.series_description", self.series_description)
        _regex(f"{where}.sequence_name", self.sequence_name)
        object.__setattr__(self, "scanning_sequence", _codes(f"{where}.scanning_sequence", self.scanning_sequence))
        object.__setattr__(self, "modalities", _codes(f"{where}.modalities", self.modalities))
        if self.contrast not in ("any", "with", "without"):
            raise _fail(f"{where}.contrast", f"{self.contrast!r} is not one of 'any', 'with', 'without'")
        if not isinstance(self.input, str) or len(self.input) > 128:
            raise _fail(f"{where}.input", "must be a graph input's name (at most 128 characters)")
        if isinstance(self.intensity, Mapping):
            from scanedge.manifest import IntensityPolicy, _build

            object.__setattr__(self, "intensity", _build(IntensityPolicy, self.intensity, f"{where}.intensity"))

    @property
    def has_rules(self) -> bool:
        """Whether any recognition rule is set (a role without rules is only ever named explicitly)."""
        return bool(
            self.series_description
            or self.scanning_sequence
            or self.sequence_name
            or self.contrast != "any"
            or self.modalities
        )

    def recognises(self, slice_: Slice) -> bool:
        """Whether ``slice_``'s series is this role by the rules (False for a role without rules)."""
        if not self.has_rules:
            return False
        acq, modality = slice_.acquisition, slice_.identity.modality.strip().upper()
        if self.modalities and modality and modality not in self.modalities:
            return False
        if self.series_description and not re.search(self.series_description, acq.series_description, re.IGNORECASE):
            return False
        if self.sequence_name and not re.search(self.sequence_name, acq.sequence_name, re.IGNORECASE):
            return False
        if self.scanning_sequence and not set(self.scanning_sequence) <= set(acq.scanning_sequence):
            return False
        if self.contrast == "with" and not acq.contrast_agent:
            return False
        return not (self.contrast == "without" and acq.contrast_agent)


def _number(what: str, value: Any, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _fail(what, f"{value!r} must be a finite number")
    if not low <= value <= high:
        raise _fail(what, f"{value!r} must be within [{low:g}, {high:g}]")
    return float(value)


@dataclass(frozen=True)
class PairingPolicy:
    """How slices of the roles are paired and how much the runtime holds while pairing.

    Attributes:
        tolerance_mm: the partner is the slice nearest along the reference slice's normal, if within this.
        wait_s: how long a reference slice waits for its partners before ``MISSING_INPUT``.
        max_slices: slices held per study (all roles together); the oldest are dropped beyond it.
        max_bytes: pixel bytes held per study, likewise.
        max_studies: studies held at once; the least recently used study is dropped beyond it.
    """

    tolerance_mm: float = 1.0
    wait_s: float = 10.0
    max_slices: int = 2048
    max_bytes: int = 512 * 1024 * 1024
    max_studies: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "tolerance_mm", _number("inputs.pairing.tolerance_mm", self.tolerance_mm, 0, 1e3))
        object.__setattr__(self, "wait_s", _number("inputs.pairing.wait_s", self.wait_s, 0, 3600))
        for name, high in (("max_slices", 1 << 20), ("max_bytes", 1 << 40), ("max_studies", 4096)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                raise _fail(f"inputs.pairing.{name}", f"{value!r} must be an integer 1..{high}")


@dataclass(frozen=True)
class InputsSpec:
    """The roles of a multi-input model, how they are assembled, and how they are paired.

    ``channels``: one image tensor (the manifest's ``input``), each role contributing ``input.channels``
    channels, in role order. ``named``: one graph input per role (``roles[].input``), each shaped like the
    manifest's ``input``.

    Attributes:
        roles: two to eight roles; the first is the reference (results are on its slices and grid).
        assembly: ``channels`` or ``named``, as above.
        pairing: tolerance, wait and bounds.
    """

    roles: tuple[InputRole, ...]
    assembly: Assembly = "channels"
    pairing: PairingPolicy = field(default_factory=PairingPolicy)

    def __post_init__(self) -> None:
        from scanedge.manifest import _build

        if isinstance(self.roles, str) or not isinstance(self.roles, (tuple, list)):
            raise _fail("inputs.roles", "must be a list of {role, ...} objects")
        roles = tuple(_build(InputRole, r, f"inputs.roles[{i}]") for i, r in enumerate(self.roles))
        if not 2 <= len(roles) <= MAX_ROLES:
            raise _fail("inputs.roles", f"needs 2 to {MAX_ROLES} roles (one input needs no inputs section)")
        names = [r.role for r in roles]
        if len(set(names)) != len(names):
            raise _fail("inputs.roles", f"role names must be unique, got {names}")
        object.__setattr__(self, "roles", roles)
        if self.assembly not in ("channels", "named"):
            raise _fail("inputs.assembly", f"{self.assembly!r} is not one of 'channels', 'named'")
        if self.assembly == "named":
            graph = [r.input for r in roles]
            if not all(graph) or len(set(graph)) != len(graph):
                raise _fail("inputs.roles[].input", "assembly 'named' needs a distinct graph input for every role")
        if isinstance(self.pairing, Mapping):
            object.__setattr__(self, "pairing", _build(PairingPolicy, self.pairing, "inputs.pairing"))

    @property
    def reference(self) -> InputRole:
        """The role results are made on."""
        return self.roles[0]

    @property
    def names(self) -> tuple[str, ...]:
        """The roles' names, reference first."""
        return tuple(r.role for r in self.roles)

    def role(self, name: str) -> InputRole:
        """The role called ``name``; KeyError when there is none."""
        for r in self.roles:
            if r.role == name:
                return r
        raise KeyError(name)

    def recognise(self, slice_: Slice) -> str | None:
        """The one role whose rules ``slice_`` meets; None when none or several do (ambiguous)."""
        hits = [r.role for r in self.roles if r.recognises(slice_)]
        return hits[0] if len(hits) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as :meth:`scanedge.manifest.Manifest.from_dict` reads them (defaults left out)."""
        import dataclasses

        roles = []
        for r in self.roles:
            entry: dict[str, Any] = {"role": r.role}
            for f in dataclasses.fields(r)[1:]:
                value = getattr(r, f.name)
                if value != f.default:
                    entry[f.name] = dataclasses.asdict(value) if f.name == "intensity" else value
            roles.append(entry)
        return {"roles": roles, "assembly": self.assembly, "pairing": dataclasses.asdict(self.pairing)}

"""A slice: one 2-D image plus the geometry and identity needed to segment and report on it.

Pixels are kept as the modality stored them (e.g. int16 MR values), with the DICOM rescale kept beside
them rather than applied, so that nothing is converted until the preprocessor knows the model's size and
can convert only what it needs. Decoders normalise what would otherwise leak into every later stage:
MONOCHROME1 is inverted to MONOCHROME2, YBR and palette colour become RGB.

A slice carries no patient identifiers (names, IDs, birth dates): only series/instance UIDs and
positions, so it can be logged and published safely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scanedge.errors import ImageTooLargeError, InvalidSliceError

__all__ = [
    "DEFAULT_LIMITS",
    "SUPPORTED_DTYPES",
    "Slice",
    "SliceAcquisition",
    "SliceGeometry",
    "SliceIdentity",
    "SliceLimits",
    "all_finite",
    "check_pixels",
]

#: Pixel dtypes a slice may hold. Anything else (bool, complex, float16, object, 64-bit ints) is refused
#: up front instead of failing deep inside OpenCV.
SUPPORTED_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
)


#: Geometry bounds (mm): no scanner has pixels below a micrometre or above ten metres, or positions
#: more than ten kilometres from the origin; values outside are refused rather than propagated.
MIN_SPACING_MM = 1e-6
MAX_SPACING_MM = 1e4
MAX_POSITION_MM = 1e7


@dataclass(frozen=True)
class SliceLimits:
    """Guards against images that would exhaust memory or stall the pipeline.

    ``max_pixels`` and ``max_side`` bound one slice. ``max_decoded_bytes`` bounds what one DICOM object
    may expand to, checked before anything is inflated or decoded: the pixel array of all its frames
    (rows x columns x frames x samples x bytes per sample) and the inflated dataset of a Deflated transfer
    syntax. The default, 512 MiB, holds a 1000-slice 512x512 CT volume in one enhanced object; a DICOM
    file larger than this (plus room for its header) is refused before it is parsed.

    Attributes:
        max_pixels: the most pixels (rows x cols) a slice may have; larger ones are ImageTooLargeError.
        max_side: the longest row or column allowed, in pixels.
        max_decoded_bytes: the most bytes one DICOM object may decode or inflate to.
    """

    max_pixels: int = 4096 * 4096
    max_side: int = 16384
    max_decoded_bytes: int = 512 * 1024 * 1024


DEFAULT_LIMITS = SliceLimits()


@dataclass(frozen=True)
class SliceGeometry:
    """Where the slice sits in the patient (DICOM LPS, millimetres). Every field is optional.

    Values outside physical bounds (spacing 1 µm to 10 m, positions within 10 km) are InvalidSliceError.

    Attributes:
        slice_thickness: nominal slice thickness (DICOM Slice Thickness).
        image_position: (x, y, z) of the first pixel's centre (DICOM Image Position (Patient)).
        image_orientation: direction cosines of the first row then the first column (DICOM Image
            Orientation (Patient)).
        slice_location: DICOM Slice Location, used for ordering when position or orientation is missing.
    """

    pixel_spacing: tuple[float, float] | None = None  # (row spacing, column spacing)
    slice_thickness: float | None = None
    image_position: tuple[float, float, float] | None = None
    image_orientation: tuple[float, float, float, float, float, float] | None = None
    slice_location: float | None = None

    def __post_init__(self) -> None:
        # Every number here ends up in a result (areas, volumes, positions): bounded, so that none of
        # them can ever be infinite or NaN, whatever a file or a peer claims.
        for name, values, low, high in (
            ("pixel_spacing", self.pixel_spacing, MIN_SPACING_MM, MAX_SPACING_MM),
            ("slice_thickness", None if self.slice_thickness is None else (self.slice_thickness,), 0.0, MAX_SPACING_MM),
            ("image_position", self.image_position, -MAX_POSITION_MM, MAX_POSITION_MM),
            ("image_orientation", self.image_orientation, -1.5, 1.5),
            (
                "slice_location",
                None if self.slice_location is None else (self.slice_location,),
                -MAX_POSITION_MM,
                MAX_POSITION_MM,
            ),
        ):
            if values is not None and not all(low <= v <= high for v in values):
                raise InvalidSliceError(f"geometry {name} {values} is outside [{low:g}, {high:g}]")

    @property
    def pixel_area_mm2(self) -> float | None:
        """Area of one pixel in mm²; None without a pixel spacing."""
        if self.pixel_spacing is None:
            return None
        return float(self.pixel_spacing[0] * self.pixel_spacing[1])

    @property
    def position_along_normal(self) -> float | None:
        """Distance along the slice normal: the key that orders a series spatially."""
        if self.image_position is None or self.image_orientation is None:
            return self.slice_location
        row, col = np.asarray(self.image_orientation[:3]), np.asarray(self.image_orientation[3:])
        return float(np.dot(np.cross(row, col), np.asarray(self.image_position)))


@dataclass(frozen=True)
class SliceIdentity:
    """Which slice this is, without saying whose.

    Attributes:
        series_uid: Series Instance UID, or any id that groups raw slices into a series ("" when unknown).
        sop_instance_uid: SOP Instance UID of the DICOM object the slice came from.
        instance_number: DICOM Instance Number; orders slices when no geometry is known.
        frame_index: the frame's index (0-based) within a multi-frame object; 0 otherwise.
        modality: DICOM Modality (``MR``, ``CT``, ...).
        study_uid: Study Instance UID ("" when unknown); slices of several series are paired only within one.
        frame_of_reference_uid: Frame of Reference UID ("" when unknown); positions of two series compare only
            within one frame of reference.
    """

    series_uid: str = ""
    sop_instance_uid: str = ""
    instance_number: int | None = None
    frame_index: int = 0
    modality: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""


#: Longest text kept from a DICOM Long String (LO, e.g. Series Description): the VR's own maximum.
MAX_DESCRIPTION = 64
MAX_IMAGE_TYPE_VALUES = 16


@dataclass(frozen=True)
class SliceAcquisition:
    """What kind of image this is: the attributes a model's scope (manifest ``applies_to``) is checked
    against, and what names the series for people. Never whose image it is.

    Text is bounded on construction (code strings to 16 characters, at most 16 Image Type values, the
    description to 64 characters without control characters), whatever a file or a peer sends.

    Attributes:
        body_part: DICOM Body Part Examined (``BRAIN``, ``CHEST``, ...); "" when unknown.
        image_type: DICOM Image Type values (``ORIGINAL``, ``PRIMARY``, ``AXIAL``, ...).
        photometric: the photometric interpretation as stored, before decoding made it grey or RGB
            (``MONOCHROME1``, ``YBR_FULL_422``, ...); "" when unknown.
        series_number: DICOM Series Number; None when unknown.
        series_description: DICOM Series Description, for reports (free text: never put into logs or
            error messages).
        scanning_sequence: DICOM Scanning Sequence values (``SE``, ``IR``, ``GR``, ...): recognises a model
            input's role (manifest ``inputs``).
        sequence_name: DICOM Sequence Name (the vendor's name of the pulse sequence), bounded like the description.
        contrast_agent: DICOM Contrast/Bolus Agent ("" when none was given), bounded like the description.
    """

    body_part: str = ""
    image_type: tuple[str, ...] = ()
    photometric: str = ""
    series_number: int | None = None
    series_description: str = ""
    scanning_sequence: tuple[str, ...] = ()
    sequence_name: str = ""
    contrast_agent: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "body_part", _code(self.body_part))
        object.__setattr__(self, "photometric", _code(self.photometric))
        values = tuple(_code(v) for v in tuple(self.image_type)[:MAX_IMAGE_TYPE_VALUES])
        object.__setattr__(self, "image_type", values)
        text = "".join(c for c in str(self.series_description)[: MAX_DESCRIPTION * 2] if c.isprintable())
        object.__setattr__(self, "series_description", text.strip()[:MAX_DESCRIPTION])
        if self.scanning_sequence or type(self.scanning_sequence) is not tuple:  # raw frames have none: no work
            sequences = tuple(_code(v) for v in tuple(self.scanning_sequence)[:MAX_IMAGE_TYPE_VALUES])
            object.__setattr__(self, "scanning_sequence", sequences)
        for name in ("sequence_name", "contrast_agent"):
            if getattr(self, name) or not isinstance(getattr(self, name), str):
                raw = "".join(c for c in str(getattr(self, name))[: MAX_DESCRIPTION * 2] if c.isprintable())
                object.__setattr__(self, name, raw.strip()[:MAX_DESCRIPTION])
        if self.series_number is not None and not -(2**31) <= self.series_number < 2**31:
            object.__setattr__(self, "series_number", None)


def _code(value: object) -> str:
    """A code string, upper case and trimmed to DICOM's 16 characters."""
    return str(value).strip().upper()[:16]


@dataclass(frozen=True, eq=False)
class Slice:
    """An image slice: ``pixels`` is (rows, cols) for grey or (rows, cols, 3) RGB.

    Build one with :meth:`from_array`, which validates; the constructor does not.

    Attributes:
        geometry: where the slice sits in the patient.
        identity: which slice it is (UIDs, numbers), never whose.
        rescale_slope: DICOM Rescale Slope: modality value = stored value x slope + intercept.
        rescale_intercept: DICOM Rescale Intercept.
        window_center: the display window's centre, in modality values; None: no window (min-max is shown).
        window_width: the display window's width, > 0; None together with ``window_center``.
        acquisition: what kind of image it is (body part, image type, photometric, series name).
    """

    pixels: np.ndarray
    geometry: SliceGeometry = field(default_factory=SliceGeometry)
    identity: SliceIdentity = field(default_factory=SliceIdentity)
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    window_center: float | None = None
    window_width: float | None = None
    acquisition: SliceAcquisition = field(default_factory=SliceAcquisition)

    @property
    def is_color(self) -> bool:
        """Whether the pixels are RGB (rows, cols, 3)."""
        return self.pixels.ndim == 3

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def has_rescale(self) -> bool:
        """Whether the rescale changes values (slope != 1 or intercept != 0)."""
        return self.rescale_slope != 1.0 or self.rescale_intercept != 0.0

    @classmethod
    def from_array(
        cls,
        pixels: np.ndarray,
        *,
        geometry: SliceGeometry | None = None,
        identity: SliceIdentity | None = None,
        rescale_slope: float = 1.0,
        rescale_intercept: float = 0.0,
        window_center: float | None = None,
        window_width: float | None = None,
        limits: SliceLimits = DEFAULT_LIMITS,
        acquisition: SliceAcquisition | None = None,
    ) -> Slice:
        """Validate an array and wrap it. The array is not copied; do not modify it while in use."""
        check_pixels(pixels, limits)
        if not pixels.dtype.isnative:  # big-endian DICOM or arrays: OpenCV needs native order
            pixels = pixels.astype(pixels.dtype.newbyteorder("="))
        for name, v in (("rescale_slope", rescale_slope), ("rescale_intercept", rescale_intercept)):
            if not np.isfinite(v):
                raise InvalidSliceError(f"{name} must be finite, got {v!r}")
        if rescale_slope == 0:
            raise InvalidSliceError("rescale_slope must not be 0")
        if (window_center is None) != (window_width is None) or (window_width is not None and window_width <= 0):
            window_center = window_width = None  # a half or nonsensical window is ignored, not fatal
        return cls(
            pixels=pixels if pixels.flags.c_contiguous else np.ascontiguousarray(pixels),
            geometry=geometry or SliceGeometry(),
            identity=identity or SliceIdentity(),
            rescale_slope=float(rescale_slope),
            rescale_intercept=float(rescale_intercept),
            window_center=None if window_center is None else float(window_center),
            window_width=None if window_width is None else float(window_width),
            acquisition=acquisition or SliceAcquisition(),
        )


def check_pixels(pixels: object, limits: SliceLimits = DEFAULT_LIMITS) -> None:
    """Refuse pixel arrays the pipeline cannot read, with a message that says what to change."""
    if not isinstance(pixels, np.ndarray):
        raise InvalidSliceError(f"pixels must be a numpy array, got {type(pixels).__name__}")
    if pixels.dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        names = ", ".join(d.name for d in SUPPORTED_DTYPES)
        raise InvalidSliceError(f"pixel dtype {pixels.dtype} is not supported; use one of {names}")
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise InvalidSliceError(f"pixels must be 2-D (rows, cols) or (rows, cols, 3) RGB; got shape {pixels.shape}")
    rows, cols = pixels.shape[:2]
    if rows == 0 or cols == 0:
        raise InvalidSliceError(f"pixels are empty (shape {pixels.shape})")
    if rows * cols > limits.max_pixels or max(rows, cols) > limits.max_side:
        raise ImageTooLargeError(
            f"image of {rows}x{cols} exceeds the limit of {limits.max_pixels} pixels / {limits.max_side} per "
            "side; raise SliceLimits (or --max-pixels) if such images are expected"
        )
    if pixels.dtype.kind == "f" and not all_finite(pixels):
        bad = int(np.count_nonzero(~np.isfinite(pixels)))
        raise InvalidSliceError(f"pixels contain {bad} NaN/Inf value(s); send finite values only")


def all_finite(pixels: np.ndarray) -> bool:
    """True when a float array holds no NaN/Inf (integer arrays always do)."""
    if pixels.dtype.kind != "f":
        return True
    # One float64 reduction is ~5x cheaper than np.isfinite(...).all(); any NaN/Inf poisons the sum.
    # Only finite float64 inputs near the float64 limit can overflow the sum; they take the slow check.
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.add.reduce(pixels, axis=None, dtype=np.float64))
    if np.isfinite(total):
        return True
    return bool(np.isfinite(pixels).all())

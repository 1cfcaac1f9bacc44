"""scanedge: segment medical image slices at the scanner console, live, on CPU or GPU.

import scanedge
with scanedge.Pipeline.open() as pipe:          # the shipped demo model
    result = pipe.run(dicom_bytes_or_numpy_slice)
    result.mask, result.findings, result.overlay
"""

from __future__ import annotations

from scanedge import _moved
from scanedge.engines import EngineConfig
from scanedge.errors import ScanedgeError
from scanedge.imaging.dicom import slices_from_dicom
from scanedge.imaging.overlay import OverlayConfig
from scanedge.imaging.slices import Slice, SliceGeometry, SliceIdentity, SliceLimits
from scanedge.manifest import Manifest, load_manifest
from scanedge.runtime.core.pipeline import Pipeline, PipelineConfig, SliceResult
from scanedge.version import __version__

__all__ = [
    "EngineConfig",
    "Manifest",
    "OverlayConfig",
    "Pipeline",
    "PipelineConfig",
    "ScanedgeError",
    "Slice",
    "SliceGeometry",
    "SliceIdentity",
    "SliceLimits",
    "SliceResult",
    "__version__",
    "load_manifest",
    "slices_from_dicom",
]

_moved.install()  # old import paths of moved modules (see scanedge/_moved.py)


#: earlier names of configuration classes (every frozen configuration is now called ...Config)
__getattr__ = _moved.forward_names(
    __name__,
    {
        "EngineOptions": ("scanedge.engines.options", "EngineConfig"),
        "OverlayOptions": ("scanedge.imaging.overlay", "OverlayConfig"),
    },
)

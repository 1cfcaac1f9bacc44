"""A multi-input model's feeds from one slice per role: each normalised its own way, then stacked or named.

The pipeline, ``scanedge verify`` and ``edge-bench`` must all build exactly the tensors the model was
trained on from a reference slice and its partners (already on the reference grid): one
:class:`RoleAssembler` does it for all of them, so a verification or a benchmark never sees a tensor the
runtime would not send.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from scanedge.imaging.preprocess import PreprocessInfo, Preprocessor
from scanedge.imaging.slices import Slice
from scanedge.manifest import Manifest

__all__ = ["RoleAssembler"]


class RoleAssembler:
    """The graph feeds of a multi-input model (manifest ``inputs``) for one slice per role.

    Each role is preprocessed with its own intensity policy (``manifest.intensity_for(role)``); with
    ``assembly: channels`` the roles become the channels of the one image input, in role order; with
    ``named`` each role feeds its own graph input. Buffers are reused between calls (not thread-safe, as
    the preprocessors are not): copy a result that must outlive the next call.
    """

    def __init__(self, manifest: Manifest) -> None:
        if manifest.inputs is None:
            raise ValueError(f"model {manifest.name} has one input; it has no roles to assemble")
        self.manifest = manifest
        self.roles: dict[str, Preprocessor] = {
            role: Preprocessor(manifest.replace(inputs=None, intensity=manifest.intensity_for(role)))
            for role in manifest.roles
        }
        self._names = manifest.graph_inputs()
        self._stacked: dict[tuple[int, ...], np.ndarray] = {}

    def __call__(
        self, slices: Mapping[str, Slice], contexts: Mapping[str, Sequence[Slice]] | None = None
    ) -> tuple[dict[str, np.ndarray], PreprocessInfo]:
        """``{graph input: tensor}`` and the reference role's preprocessing info (what post-processing
        maps back through). ``slices`` holds every role; ``contexts`` a 2.5D model's neighbours per role."""
        contexts = contexts or {}
        parts = []
        info: PreprocessInfo | None = None
        for role, pre in self.roles.items():
            tensor, role_info = pre(slices[role], contexts.get(role, ()))
            info = info or role_info
            parts.append(tensor)
        assert info is not None  # an inputs section has at least two roles
        if len(self._names) > 1:  # named: one input per role (each preprocessor owns its buffer)
            return dict(zip(self._names, parts)), info
        axis = 1 if self.manifest.input.layout == "NCHW" else 3
        shape = list(parts[0].shape)
        shape[axis] = sum(p.shape[axis] for p in parts)
        stacked = self._stacked.get(tuple(shape))
        if stacked is None:
            stacked = self._stacked[tuple(shape)] = np.empty(shape, np.float32)
        np.concatenate(parts, axis=axis, out=stacked)
        return {self._names[0]: stacked}, info

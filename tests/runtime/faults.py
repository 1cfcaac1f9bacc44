"""Fault injection at every stage of a job, keyed by the request's series.

A request whose series is ``"<stage>:<kind>"`` fails at that stage in that way; every other request runs
the real code untouched. The stage wrappers wrap the real functions (the decode of the pixel frame, the
real ONNX Runtime engine, ...): nothing is faked but the fault.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from scanedge.engines.base import Engine
from scanedge.errors import InvalidSliceError
from scanedge.imaging.overlay import OverlayRenderer
from scanedge.imaging.postprocess import Postprocessor
from scanedge.imaging.preprocess import Preprocessor
from scanedge.runtime.serving import workers
from scanedge.runtime.wire import payloads

STAGES = ("decode", "preprocess", "infer", "postprocess", "overlay", "encode", "reply")
KINDS = ("typed", "bug", "death", "hang")


class WorkerDeath(BaseException):
    """Not an Exception: nothing in the worker may catch it, so the worker thread ends."""


class Faults:
    def __init__(self) -> None:
        self.current = threading.local()
        self.release = threading.Event()  # ends every "hang"

    def fire(self, stage: str) -> None:
        series = getattr(self.current, "series", "")
        wanted, _, kind = series.partition(":")
        if wanted != stage:
            return
        if kind == "typed":
            raise InvalidSliceError(f"injected typed failure at {stage}")
        if kind == "bug":
            raise RuntimeError(f"injected bug at {stage}: secret value DOE^JANE")  # must never be logged
        if kind == "death":
            raise WorkerDeath(stage)
        if kind == "hang":
            self.release.wait(60)


def _wrap(faults: Faults, stage: str, real: Callable[..., Any], first: bool = False) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if first:  # the decode stage sees the request: remember whose job this thread is running
            faults.current.series = args[0].series
        faults.fire(stage)
        return real(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def injected() -> Iterator[Faults]:
    faults = Faults()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(workers, "slice_from_request", _wrap(faults, "decode", workers.slice_from_request, first=True))
        mp.setattr(Preprocessor, "__call__", _wrap(faults, "preprocess", Preprocessor.__call__))
        mp.setattr(Engine, "infer", _wrap(faults, "infer", Engine.infer))
        mp.setattr(Postprocessor, "__call__", _wrap(faults, "postprocess", Postprocessor.__call__))
        mp.setattr(OverlayRenderer, "render", _wrap(faults, "overlay", OverlayRenderer.render))
        mp.setattr(payloads, "encode_image", _wrap(faults, "encode", payloads.encode_image))
        mp.setattr(workers, "pipeline_reply", _wrap(faults, "reply", workers.pipeline_reply))
        try:
            yield faults
        finally:
            faults.release.set()

"""Replaying series at a scanner's pace: a console without the scanner.

A console sends each slice as it is reconstructed, in acquisition order, at the scanner's pace, one
connection per scanner. :class:`Replay` does the same with series read from disk: each series is
ordered as acquired (position along the slice normal, then instance number, whatever the files are
called), streamed at ``rate`` slices per second over the protocol, several series interleaved on their
own connections as several scanners would, optionally again and again (``loop``; a slice sent again
replaces its earlier result in the runtime's series load). Every reply becomes a :class:`SliceEvent`
handed to the caller on the caller's thread; the run ends with one :class:`SeriesReport` per series.

Latency is measured from each slice's *intended* send time, so a stall that delays later sends shows
in their latency instead of vanishing (coordinated omission).
"""

from __future__ import annotations

import heapq
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scanedge._moved import forward_names
from scanedge.errors import ConfigError, ScanedgeError, SupersededError
from scanedge.imaging.files import LoadedSlice
from scanedge.imaging.heads import SeriesScore
from scanedge.imaging.lesion_load import LesionLoad
from scanedge.imaging.series_summary import LatencyPercentiles
from scanedge.imaging.slices import Slice
from scanedge.manifest_inputs import ROLE_PATTERN
from scanedge.runtime.console.client import Client, ClientConfig, RemoteResult

__all__ = [
    "Replay",
    "ReplayConfig",
    "ReplaySeries",
    "RoleSlice",
    "SeriesReport",
    "SliceEvent",
    "group_series",
    "read_series",
    "rename_repeats",
    "submit_set",
    "submit_slice",
]


@dataclass(frozen=True)
class ReplayConfig:
    """How a replay sends.

    Attributes:
        endpoint: the runtime's ROUTER, e.g. ``tcp://127.0.0.1:5555``.
        rate: slices per second per series (a scanner reconstructs about 10).
        loop: start each series again when it ends, until stopped (or ``max_loops``).
        jitter_ms: each send moves by a uniform random amount within +-jitter (seeded by ``seed``).
        outputs: reply frames asked for; ``image`` lets a viewer on the PUB feed draw the overlay itself, and
            ``saliency`` the model's own saliency map (only a model with a saliency head sends one). ``head_masks``
            is added for every model whose PONG entry lists further mask heads (``models[].mask_heads``), so a
            viewer draws them too; a runtime whose PONG lists none (or that predates them) is never asked.
        dicom: send each file's DICOM bytes instead of raw pixels with their geometry.
        deadline_ms: per-slice deadline in the runtime's queue (None: none).
        timeout_s: how long one reply may take before it counts as failed.
        max_loops: with ``loop``, stop after this many passes (None: until stopped).
        roles: the input role of each series, in order (``("flair", "t1")``), for a model that takes several
            series of one study (docs/protocol.md section 3.2); empty: no role is sent (with ``dicom`` the
            runtime recognises roles from each file's sequence attributes).
        also_models: further served models each slice is sent to as well (a classifier beside the
            segmentation model): their RESULTs (scores, and the ``saliency`` frame of a model that has one) are
            published on the runtime's feed for viewers; the replay's events and reports are the default model's.
            A run ends once their answers are in too (each waited for up to ``timeout_s``), so the last slice's
            reach the feed.
    """

    endpoint: str
    rate: float = 10.0
    loop: bool = False
    jitter_ms: float = 0.0
    seed: int = 0
    outputs: tuple[str, ...] = ("mask", "image", "saliency")
    dicom: bool = False
    deadline_ms: float | None = None
    timeout_s: float = 30.0
    max_loops: int | None = None
    roles: tuple[str, ...] = ()
    also_models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 10_000:
            raise ConfigError(f"rate must be within (0, 10000] slices/s, got {self.rate:g}")
        if not 0 <= self.jitter_ms <= 60_000:
            raise ConfigError(f"jitter must be within [0, 60000] ms, got {self.jitter_ms:g}")
        if self.max_loops is not None and self.max_loops < 1:
            raise ConfigError("max_loops must be at least 1")
        for role in self.roles:
            if not ROLE_PATTERN.fullmatch(role):
                raise ConfigError(f"role {role!r} must be 1-32 of a-z, 0-9, _ starting with a letter")


@dataclass(frozen=True, eq=False)
class ReplaySeries:
    """One series to replay (one scanner's connection).

    Attributes:
        uid: the Series Instance UID sent with each slice; a repeat of a series has ``.2``, ``.3``...
            appended (see :func:`rename_repeats`) so the runtime keeps its lesion load apart.
        slices: the slices in acquisition order, each with the file it was read from.
    """

    uid: str
    slices: tuple[LoadedSlice, ...]


def group_series(loaded: Sequence[LoadedSlice]) -> list[ReplaySeries]:
    """Slices (as :func:`~scanedge.imaging.files.load_slices` orders them) grouped into series.

    A series UID met again in a later group (the same folder given twice, say, to play two scanners)
    is sent as ``UID.2``, ``UID.3``... so the runtime keeps them apart.
    """
    groups: dict[str, list[LoadedSlice]] = {}
    for item in loaded:
        groups.setdefault(item.slice.identity.series_uid, []).append(item)
    return [ReplaySeries(uid, tuple(items)) for uid, items in groups.items()]


def rename_repeats(series: Sequence[ReplaySeries]) -> list[ReplaySeries]:
    """Series given more than once get ``.2``, ``.3``... appended to their UID (one scanner each)."""
    seen: dict[str, int] = {}
    out = []
    for s in series:
        seen[s.uid] = seen.get(s.uid, 0) + 1
        out.append(s if seen[s.uid] == 1 else ReplaySeries(f"{s.uid}.{seen[s.uid]}", s.slices))
    return out


@dataclass(frozen=True, eq=False)
class SliceEvent:
    """One reply (or failure) during a replay; exactly one of ``result`` and ``error`` is set."""

    series: int  # index into the replay's series
    uid: str  # the series' UID as sent (see ReplaySeries.uid)
    position: int  # 0-based place of the slice in its series
    count: int  # slices in the series
    loop: int  # 0 for the first pass
    slice: Slice  # the slice that was sent, as read from its file
    latency_ms: float  # from the intended send time to the reply
    result: RemoteResult | None  # the runtime's RESULT; None when the slice failed
    error: ScanedgeError | None  # why the slice failed (the runtime's error reply, a timeout...); None on success

    @property
    def superseded(self) -> bool:
        """True when the runtime skipped this slice because a newer one of its series arrived while it
        waited: the scanner's pace outran the runtime, which is not a failure."""
        return isinstance(self.error, SupersededError)


@dataclass
class SeriesReport:
    """What one series' replay amounted to; ``sent`` is ``ok + superseded + failed`` once the run ends.

    Attributes:
        uid: the series' UID as sent.
        slices: slices in the series (one pass).
        sent: slices sent, over every pass.
        ok: slices answered with a RESULT.
        superseded: slices the runtime skipped for a newer one of the series (see
            :attr:`SliceEvent.superseded`).
        failed: slices answered with any other error, or not answered in time.
        errors: failed slices by error code (e.g. ``TIMEOUT``, ``ENGINE_TIMEOUT``).
        latencies_ms: each RESULT's latency in ms from its intended send time, in arrival order.
        load: the runtime's series lesion load, from the last RESULT holding the most slices; None
            when no RESULT carried one.
        scores: the runtime's series scores from the reply to the series' last slice (which carries a series
            model's answer), else from the latest RESULT; empty when no RESULT carried any.
    """

    uid: str
    slices: int
    sent: int = 0
    ok: int = 0
    superseded: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    load: LesionLoad | None = None
    scores: tuple[SeriesScore, ...] = ()

    def latency(self) -> LatencyPercentiles | None:
        """Percentiles of :attr:`latencies_ms`; None when no slice was answered with a RESULT."""
        return LatencyPercentiles.of(self.latencies_ms) if self.latencies_ms else None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready report, as ``scanedge replay --json`` writes it: the counts, the latency percentiles
        (``latency_ms``) and the series' lesion load (``series_load``) instead of the raw latencies."""
        latency = self.latency()
        return {
            "series_uid": self.uid,
            "slices": self.slices,
            "sent": self.sent,
            "ok": self.ok,
            "superseded": self.superseded,
            "failed": self.failed,
            "errors": dict(self.errors),
            "latency_ms": None if latency is None else latency.to_dict(),
            "series_load": None if self.load is None else self.load.to_dict(),
            **({"series_scores": [s.to_dict() for s in self.scores]} if self.scores else {}),
        }


@dataclass(order=True)
class _Send:
    due: float
    series: int
    n: int  # sends so far in this series (over loops)


def _consume(future: Future[RemoteResult]) -> None:
    """Collect a further model's answer so a failed one is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()


def _models_with_heads(client: Client, timeout_s: float) -> frozenset[str]:
    """The served models whose PONG entry lists further mask heads, by name, and "" when the default model is
    among them; none when the runtime does not answer the PING in time (its slices are then sent as asked)."""
    try:
        pong = client.ping(timeout=timeout_s)
    except ScanedgeError:
        return frozenset()
    names = {m.name for m in pong.models if m.mask_heads}
    default = pong.default_model or (pong.models[0].name if pong.models else "")
    return frozenset(names | ({""} if default in names else set()))


class Replay:
    """Stream series to a runtime at a scanner's pace (see the module's description)."""

    def __init__(self, series: Sequence[ReplaySeries], settings: ReplayConfig) -> None:
        if not series or any(not s.slices for s in series):
            raise ConfigError("nothing to replay: give at least one folder or file with slices")
        if settings.roles and len(settings.roles) != len(series):
            raise ConfigError(
                f"{len(settings.roles)} role(s) given for {len(series)} series; give one role per series, in order"
            )
        self.series = list(series)
        self.settings = settings
        self._rng = random.Random(settings.seed)
        self._further: set[Future[RemoteResult]] = set()  # further models' requests not answered yet
        self._further_lock = threading.Lock()
        self._with_heads: frozenset[str] = frozenset()  # models ("" the default) PONG lists mask heads for

    def run(
        self, on_slice: Callable[[SliceEvent], None] | None = None, stop: threading.Event | None = None
    ) -> list[SeriesReport]:
        """Send every series (until ``stop`` is set, with ``loop``), calling ``on_slice`` on this thread
        for each reply as it arrives; return one :class:`SeriesReport` per series."""
        cfg = self.settings
        stop = stop or threading.Event()
        reports = [SeriesReport(s.uid, len(s.slices)) for s in self.series]
        done: queue.SimpleQueue[tuple[_Send, float, Future[RemoteResult]]] = queue.SimpleQueue()
        clients = [Client(cfg.endpoint, ClientConfig(timeout_s=cfg.timeout_s)) for _ in self.series]
        try:  # asked before the schedule starts, so the first slices' latencies do not include it
            self._with_heads = _models_with_heads(clients[0], min(cfg.timeout_s, 10.0))
        except BaseException:
            for c in clients:
                c.close()
            raise
        period = 1.0 / cfg.rate
        start = time.perf_counter() + 0.05

        def planned(k: int, n: int) -> _Send:
            # scanners start staggered within one period, as independent machines would; jitter moves
            # each send on its own, never the schedule after it
            shift = self._rng.uniform(-cfg.jitter_ms, cfg.jitter_ms) / 1e3 if cfg.jitter_ms else 0.0
            return _Send(start + k * period / len(self.series) + n * period + shift, k, n)

        plan = [planned(k, 0) for k in range(len(self.series))]
        heapq.heapify(plan)
        outstanding = 0
        try:
            while plan or outstanding:
                if stop.is_set():
                    plan.clear()
                wait = max(0.0, plan[0].due - time.perf_counter()) if plan else 0.25
                try:
                    send, intended, future = done.get(timeout=wait)
                except queue.Empty:
                    pass
                else:
                    outstanding -= 1
                    event = self._event(send, intended, future)
                    self._record(reports[send.series], event)
                    if on_slice is not None:
                        on_slice(event)
                    continue
                if not plan or plan[0].due > time.perf_counter():
                    continue
                send = heapq.heappop(plan)
                self._submit(clients[send.series], send, done)
                outstanding += 1
                reports[send.series].sent += 1
                nxt = send.n + 1
                passes, rest = divmod(nxt, len(self.series[send.series].slices))
                if rest or (cfg.loop and (cfg.max_loops is None or passes < cfg.max_loops)):
                    heapq.heappush(plan, planned(send.series, nxt))
        finally:
            with self._further_lock:
                further = list(self._further)
            wait_for_futures(further, timeout=cfg.timeout_s)  # sent and answered (so published) before closing
            for c in clients:
                c.close()
        return reports

    def _submit(self, client: Client, send: _Send, done: queue.SimpleQueue) -> None:
        cfg = self.settings
        series = self.series[send.series]
        item = series.slices[send.n % len(series.slices)]
        sent = RoleSlice(
            cfg.roles[send.series] if cfg.roles else None,
            item.path.read_bytes() if cfg.dicom else item.slice,
            item.slice,
            series.uid,
        )
        last = send.n % len(series.slices) == len(series.slices) - 1  # the series is complete with it
        future = submit_slice(
            client, sent, outputs=self._outputs("", cfg.outputs), deadline_ms=cfg.deadline_ms, last=last
        )
        future.add_done_callback(lambda f: done.put((send, send.due, f)))
        for model in cfg.also_models:  # answered and published by the runtime; waited for only at the end
            further = submit_slice(
                client,
                replace(sent, role=None),
                outputs=self._outputs(model, ("saliency",)),  # no frame from a model without a saliency head
                deadline_ms=cfg.deadline_ms,
                model=model,
                last=last,
            )
            with self._further_lock:
                self._further.add(further)
            further.add_done_callback(self._answered)

    def _outputs(self, model: str, outputs: tuple[str, ...]) -> tuple[str, ...]:
        """``outputs`` with ``head_masks`` added when ``model`` ("" the default) has further mask heads."""
        if model in self._with_heads and "head_masks" not in outputs:
            return (*outputs, "head_masks")
        return outputs

    def _answered(self, future: Future[RemoteResult]) -> None:
        """A further model's request answered (or failed): collected, and no longer waited for."""
        _consume(future)
        with self._further_lock:
            self._further.discard(future)

    def _event(self, send: _Send, intended: float, future: Future[RemoteResult]) -> SliceEvent:
        series = self.series[send.series]
        now = time.perf_counter()
        error = future.exception()
        if error is not None and not isinstance(error, ScanedgeError):
            raise error
        count = len(series.slices)
        return SliceEvent(
            series=send.series,
            uid=series.uid,
            position=send.n % count,
            count=count,
            loop=send.n // count,
            slice=series.slices[send.n % count].slice,
            latency_ms=(now - intended) * 1e3,
            result=None if error is not None else future.result(),
            error=error,
        )

    @staticmethod
    def _record(report: SeriesReport, event: SliceEvent) -> None:
        if event.result is not None:
            report.ok += 1
            report.latencies_ms.append(event.latency_ms)
            load = event.result.series_load
            if load is not None and (report.load is None or load.slices >= report.load.slices):
                report.load = load
            scores = event.result.header.series_scores
            final = any(s.series_model is not None and s.series_model.status != "pending" for s in report.scores)
            if scores and (event.position == event.count - 1 or not final):
                report.scores = scores
        elif event.superseded:
            report.superseded += 1
        else:
            report.failed += 1
            code = getattr(event.error, "code", type(event.error).__name__)
            report.errors[code] = report.errors.get(code, 0) + 1


@dataclass(frozen=True, eq=False)
class RoleSlice:
    """One slice as a console sends it.

    Attributes:
        role: its input role for a multi-input model (docs/protocol.md section 3.2); None: none sent.
        image: what goes on the wire: the slice itself (raw pixels with its geometry, identity, study and frame
            of reference), or its DICOM object's bytes.
        slice: the slice (its SOP Instance UID and Instance Number go with the request).
        series: the series key sent.
    """

    role: str | None
    image: Slice | bytes
    slice: Slice
    series: str


def submit_slice(client: Client, sent: RoleSlice, **options: Any) -> Future[RemoteResult]:
    """Send one slice (its instance UID, instance number and role with it); ``options`` go to
    :meth:`Client.submit` (``outputs``, ``deadline_ms``, ``model``, ...). What :class:`Replay` sends per slice."""
    return client.submit(
        sent.image,
        series=sent.series,
        instance=sent.slice.identity.sop_instance_uid,
        index=sent.slice.identity.instance_number,
        role=sent.role,
        **options,
    )


def submit_set(
    client: Client, roles: Sequence[RoleSlice], **options: Any
) -> tuple[list[Future[RemoteResult]], Future[RemoteResult]]:
    """Send a multi-input model's reference slice with its partners on one connection: every partner role's
    SEGMENT first (the runtime holds it and answers at once, section 3.2), then the reference's (``roles[0]``),
    which the runtime answers once it has paired them. Returns (the partners' futures, the reference's)."""
    if len(roles) < 2 or any(r.role is None for r in roles):
        raise ConfigError("a set is a reference slice and at least one partner, each with its role")
    partners = [submit_slice(client, partner, **options) for partner in roles[1:]]
    return partners, submit_slice(client, roles[0], **options)


def read_series(paths: Sequence[str | Path], *, dicom: bool = False) -> list[ReplaySeries]:
    """The series under ``paths``, each in acquisition order; each argument is read on its own, so a
    folder given twice plays two scanners."""
    from scanedge.imaging.files import load_slices

    series: list[ReplaySeries] = []
    for p in paths:
        loaded = load_slices([p])
        if dicom and any(item.slice.identity.frame_index or item.path.suffix.lower() == ".npy" for item in loaded):
            raise ConfigError(f"{p}: --dicom sends single-frame DICOM files as they are; this holds other slices")
        series.extend(group_series(loaded))
    return rename_repeats(series)


#: earlier names of configuration classes (every frozen configuration is now called ...Config)
__getattr__ = forward_names(
    __name__,
    {
        "ReplaySettings": ("scanedge.runtime.console.replay", "ReplayConfig"),
    },
)

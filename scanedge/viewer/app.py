"""The live viewer's web app: one page, its static files, and a WebSocket that pushes the feed to it.

Starlette serves ``/`` (the page), ``/static/*`` (its script and style, shipped in the package; no
build step), ``/ws`` (the live feed) and ``/api/state`` (what the viewer follows, and the
publish-to-paint latency the pages measured, as JSON).

On ``/ws`` the server sends text messages (JSON: ``hello`` with every series on connecting, then
``slices``: batches of slice descriptions) and binary messages (one slice to paint: a u32 little-endian
JSON length, the JSON description, the image bytes, the mask bytes, and the change codes when the description
says ``change_frame``). The page answers ``painted`` after
each binary message, with the publish-to-paint time it measured; until then the server holds only the
newest slice for it, so a slow page skips slices instead of slowing anything down. The page may send
``select`` (which series to paint; null: the newest of any) and ``pin`` (paint one earlier slice; null:
follow live). Every two seconds, and whenever the runtime connects, goes away or is replaced, the
server sends ``feed`` (the feed's status); a page that hears nothing for longer knows its socket is stale.
Anything else from the page (binary, oversized or unreadable messages) closes its socket cleanly with
1003/1009.

Who may load any of this (Host, Origin, token) is :mod:`scanedge.viewer.guard`'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from scanedge.viewer.feed import LiveFeed, LiveSlice, Watcher, pack_slice

__all__ = ["STATIC_DIR", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_NO_CACHE = {"Cache-Control": "no-store"}
_MAX_PAGE_MESSAGE = 4096  # what a page sends is tiny; anything longer closes its socket
_STATUS_EVERY_S = 2.0  # the feed's status goes to every page at least this often


def create_app(feed: LiveFeed) -> Starlette:
    """The ASGI app for ``feed``; the feed's SUB socket opens and closes with the app's lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await feed.start()
        try:
            yield
        finally:
            await feed.stop()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=_NO_CACHE)

    async def state(request: Request) -> Response:
        return JSONResponse(
            {
                "subscribed_to": feed.endpoint,
                "received": feed.received,
                "malformed": feed.malformed,
                "saliency_refused": feed.saliency_refused,
                "heads_refused": feed.heads_refused,
                "pages": len(feed.watchers),
                "dropped_for_pages": sum(w.dropped for w in feed.watchers),
                "publish_to_paint_ms": feed.latency(),
                "feed": feed.status(),
                "series": [
                    {"uid": s.uid, "slices": len(s.slices), "latest": s.latest, "score_models": sorted(s.scores)}
                    for s in feed.series.values()
                ],
            },
            headers=_NO_CACHE,
        )

    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        watcher = Watcher(feed.limits)
        feed.watchers.add(watcher)
        try:
            await websocket.send_json({**feed.snapshot(), "feed": feed.status()})
            watcher.status_changed = False
            latest = next(reversed(feed.series.values()), None) if feed.series else None
            if latest is not None and latest.latest is not None:
                item = feed.retained(latest.uid, latest.latest["key"])
                if item is not None:
                    watcher.pixels = item
                    watcher.wake.set()
            sender = asyncio.create_task(_send(websocket, watcher, feed))
            receiver = asyncio.create_task(_receive(websocket, watcher, feed))
            done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                    await task
            for task in done:
                with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                    task.result()
            with contextlib.suppress(RuntimeError):  # closes it when the page broke the rules; no-op when gone
                if receiver in done and not receiver.cancelled() and receiver.exception() is None:
                    await websocket.close(*receiver.result())
        finally:
            feed.watchers.discard(watcher)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", state),
            WebSocketRoute("/ws", live),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        lifespan=lifespan,
    )


async def _send(websocket: WebSocket, watcher: Watcher, feed: LiveFeed) -> None:
    while True:
        try:
            await asyncio.wait_for(watcher.wake.wait(), _STATUS_EVERY_S)
        except asyncio.TimeoutError:
            watcher.status_changed = True
        watcher.wake.clear()
        if watcher.status_changed:
            watcher.status_changed = False
            await websocket.send_json(feed.status())
        if watcher.texts:
            batch = list(watcher.texts)
            watcher.texts.clear()
            await websocket.send_json({"type": "slices", "items": batch})
        item = watcher.take_pixels()
        if item is not None:
            await websocket.send_bytes(pack_slice(item))


async def _receive(websocket: WebSocket, watcher: Watcher, feed: LiveFeed) -> tuple[int, str]:
    """Serve the page's messages until it breaks the rules: then the close code and reason to answer."""
    while True:
        received = await websocket.receive()
        if received["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(received.get("code", 1000))
        text = received.get("text")
        if text is None:
            return 1003, "the viewer accepts only JSON text messages"
        if len(text) > _MAX_PAGE_MESSAGE:
            return 1009, "message too long"
        try:
            message: Any = json.loads(text)
        except ValueError:
            return 1003, "not JSON"
        if not isinstance(message, dict):
            return 1003, "not a JSON object"
        kind = message.get("type")
        if kind == "painted":
            ms = message.get("latency_ms")
            if isinstance(ms, (int, float)) and not isinstance(ms, bool) and math.isfinite(ms) and 0 <= ms < 600_000:
                feed.paint_ms.append(float(ms))
            watcher.painted()
        elif kind == "select":
            series = message.get("series")
            watcher.selected = series if isinstance(series, str) else None
            watcher.pinned = None
            _offer_latest(watcher, feed, watcher.selected)
        elif kind == "pin":
            series, key = message.get("series"), message.get("key")
            if isinstance(series, str) and isinstance(key, str):
                item = feed.retained(series, key)
                watcher.pinned = (series, key)
                if item is not None:
                    watcher.pixels = _as_pinned(item)
                    watcher.wake.set()
            else:
                watcher.pinned = None
                _offer_latest(watcher, feed, watcher.selected)


def _offer_latest(watcher: Watcher, feed: LiveFeed, series: str | None) -> None:
    s = feed.series.get(series) if series is not None else next(reversed(feed.series.values()), None)
    if s is not None and s.latest is not None:
        item = feed.retained(s.uid, s.latest["key"])
        if item is not None:
            watcher.pixels = item
            watcher.wake.set()


def _as_pinned(item: LiveSlice) -> LiveSlice:
    """A retained slice sent again on request: marked so the page does not time it as live."""
    return dataclasses.replace(item, meta={**item.meta, "pinned": True})

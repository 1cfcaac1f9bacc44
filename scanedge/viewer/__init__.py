"""The live viewer: a web page that follows the runtime's PUB feed while a scan runs.

``scanedge view --subscribe tcp://127.0.0.1:5556`` serves it on http://127.0.0.1:8080/. It is a SUB
client of the runtime and knows only the wire protocol (:mod:`scanedge.runtime.wire.protocol`); the web
stack (Starlette, uvicorn, websockets) comes with the ``viewer`` extra.
"""

from scanedge.viewer.feed import FeedLimits, LiveFeed, LiveSlice
from scanedge.viewer.server import Viewer, ViewerConfig

__all__ = ["FeedLimits", "LiveFeed", "LiveSlice", "Viewer", "ViewerConfig"]

"""``scanedge view``: the live viewer page, following a runtime's PUB feed."""

from __future__ import annotations

import argparse

from scanedge.cli.arguments import literal
from scanedge.console import make_console
from scanedge.errors import ConfigError

__all__ = ["add_parsers", "cmd_view", "require_viewer_extra"]


def require_viewer_extra() -> None:
    """The web stack is an optional extra: say how to get it instead of an ImportError."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"the live viewer needs the 'viewer' extra ({exc.name} is missing): pip install 'scanedge[viewer]'"
        ) from exc


def cmd_view(args: argparse.Namespace) -> int:
    """Serve the page until Ctrl-C."""
    require_viewer_extra()
    from scanedge.runtime.log_budget import configure_logging
    from scanedge.viewer import Viewer, ViewerConfig

    configure_logging("warning")
    viewer = Viewer(ViewerConfig(subscribe=args.subscribe, host=args.host, port=args.port, insecure=args.insecure))
    make_console().print(
        f"live viewer: [bold]{literal(viewer.url)}[/] (following {literal(args.subscribe)}; Ctrl-C stops)"
    )
    viewer.serve()
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``view``."""
    p = sub.add_parser("view", help="a live web page following a runtime's published results")
    p.add_argument("--subscribe", required=True, metavar="PUB_URL", help="the runtime's --publish endpoint (required)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080; 0: any free one)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1; others need --insecure)"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a --host other machines can reach: the page is plain HTTP without a login and shows the "
        "images (default: off)",
    )
    p.set_defaults(func=cmd_view)

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
    from scanedge.log_budget import configure_logging
    from scanedge.viewer import Viewer, ViewerConfig

    configure_logging("warning")
    extra = {"token": args.token} if args.token else {}
    config = ViewerConfig(
        subscribe=args.subscribe,
        host=args.host,
        port=args.port,
        insecure=args.insecure,
        allow_hosts=tuple(args.allow_host),
        allow_origins=tuple(args.allow_origin),
        **extra,
    )
    viewer = Viewer(config)
    make_console().print(  # the one place the token is shown: the page needs it once
        f"live viewer: open [bold]{literal(viewer.page_url)}[/] (following {literal(args.subscribe)}; Ctrl-C stops)"
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
    p.add_argument(
        "--token",
        default=None,
        help="the session's secret in the page URL (default: a random one, printed at start; at least 16 characters)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="also answer this Host header, as a reverse proxy sends it (repeatable; default: only the viewer's "
        "own addresses)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="URL",
        help="also accept pages from this origin, e.g. https://viewer.example (repeatable; default: only the "
        "viewer's own)",
    )
    p.set_defaults(func=cmd_view)

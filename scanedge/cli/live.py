"""``scanedge demo --live``: the runtime, a replay of the demo series at a scanner's pace, and the viewer.

Three library pieces on loopback, in one process: a :class:`~scanedge.runtime.serving.server.Server` publishing
its results, a :class:`~scanedge.viewer.Viewer` following that feed, and a
:class:`~scanedge.runtime.console.replay.Replay` playing the demo series again and again, as a scanner would,
until Ctrl-C. Ctrl-C (or SIGTERM) stops the replay first (every slice sent is answered), then the viewer,
then the runtime.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from scanedge.cli.arguments import engine_options, literal, pipeline_config
from scanedge.cli.replay import describe_load, install_stop_handler, slice_line, summary_lines
from scanedge.cli.view import require_viewer_extra
from scanedge.console import make_console, user_values

if TYPE_CHECKING:
    from scanedge.runtime.console.replay import SliceEvent

__all__ = ["add_live_args", "cmd_demo_live"]


def cmd_demo_live(args: argparse.Namespace) -> int:
    """Serve, replay and show the demo series until Ctrl-C (or ``--passes``)."""
    from scanedge.demo.series import demo_series_dir
    from scanedge.log_budget import configure_logging
    from scanedge.manifest import load_manifest
    from scanedge.models import DEMO_CLASSIFIER_PATH, DEMO_MODEL_PATH
    from scanedge.runtime.console.replay import Replay, ReplayConfig, read_series
    from scanedge.runtime.core.model_spec import ModelSpec
    from scanedge.runtime.serving.server import Server, ServerConfig
    from scanedge.viewer import Viewer, ViewerConfig

    require_viewer_extra()
    configure_logging("warning")
    err = make_console()
    out = make_console(stderr=False)
    stop = install_stop_handler()
    with err.status("preparing the demo series and starting the runtime ..."):
        series = read_series([demo_series_dir()])
        config = pipeline_config(args)
        models = [ModelSpec(args.model, args.manifest)] if args.model else []
        also: tuple[str, ...] = ()
        if not args.model and args.classifier and DEMO_CLASSIFIER_PATH.is_file():  # the classifier serves beside it
            models = [ModelSpec(DEMO_MODEL_PATH), ModelSpec(DEMO_CLASSIFIER_PATH)]
            also = (load_manifest(DEMO_CLASSIFIER_PATH)[0].name,)
        server = Server(
            models,
            ServerConfig(
                bind="tcp://127.0.0.1:*",
                publish="tcp://127.0.0.1:*",
                engine=engine_options(args, spinning=False),
                limits=config.limits,
                overlay=config.overlay,
            ),
        ).start()
    try:
        viewer = Viewer(ViewerConfig(subscribe=server.publish_endpoint or "", port=args.port)).start()
        try:
            with user_values():
                settings = ReplayConfig(
                    endpoint=server.endpoint, rate=args.rate, loop=True, max_loops=args.passes, also_models=also
                )
            err.print(f"live viewer: open [bold]{literal(viewer.page_url)}[/] in a browser")
            if also:
                err.print(f"each slice also goes to {literal(', '.join(also))}: its scores show in the viewer")
            err.print(
                f"replaying the demo series ({len(series[0].slices)} slices) at {args.rate:g} slices/s, "
                + ("until Ctrl-C" if args.passes is None else f"{args.passes} pass(es)")
            )

            def show(event: SliceEvent) -> None:
                if event.loop == 0:
                    out.print(literal(slice_line(event, "S1")))
                elif event.position == event.count - 1 and event.result is not None:
                    out.print(f"pass {event.loop + 1} done: {literal(describe_load(event.result.series_load))}")

            (report,) = Replay(series, settings).run(show, stop)
            for line in summary_lines(report, "S1"):
                out.print(literal(line))
        finally:
            viewer.stop()
    finally:
        server.stop()
    err.print("stopped: replay, viewer and runtime")
    return 0


def add_live_args(p: argparse.ArgumentParser) -> None:
    """``demo --live`` and its settings."""
    g = p.add_argument_group("live (runtime + replay + viewer on loopback)")
    g.add_argument("--live", action="store_true", help="serve the demo series live: runtime, replay and web viewer")
    g.add_argument("--port", type=int, default=8080, help="viewer port (default 8080; 0: any free one)")
    g.add_argument("--rate", type=float, default=10.0, help="slices per second (default 10, a scanner's pace)")
    g.add_argument("--passes", type=int, default=None, help="stop after this many passes (default: Ctrl-C)")

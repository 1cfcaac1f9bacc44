"""``scanedge serve`` and ``scanedge keys``: the streaming runtime and its CurveZMQ keys."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scanedge.cli.arguments import add_engine_args, add_limit_args, engine_options, literal, model_file
from scanedge.console import make_console
from scanedge.errors import ConfigError

__all__ = ["add_parsers", "cmd_keys_allow", "cmd_keys_generate", "cmd_serve"]


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the models until SIGINT/SIGTERM; requests in flight are answered before exiting."""
    import logging
    import os
    import signal

    from scanedge.imaging.slices import SliceLimits
    from scanedge.log_budget import configure_logging
    from scanedge.runtime.core.model_spec import ModelSpec
    from scanedge.runtime.serving.keep_warm import KeepWarmConfig
    from scanedge.runtime.serving.series_store import SeriesStoreConfig
    from scanedge.runtime.serving.server import Server, ServerConfig
    from scanedge.runtime.wire.security import CurveServerKeys

    if (args.curve_secret is None) != (args.curve_clients is None):
        raise ConfigError("--curve-secret and --curve-clients go together")
    configure_logging(args.log_level)
    curve = CurveServerKeys(args.curve_secret, args.curve_clients) if args.curve_secret else None
    config = ServerConfig(
        bind=args.bind,
        publish=args.publish,
        workers=args.workers,
        engine=engine_options(args, spinning=args.spinning),
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        max_inflight_bytes=int(args.max_inflight_mb * 1024 * 1024),
        limits=SliceLimits(max_pixels=args.max_pixels),
        curve=curve,
        insecure=args.insecure,
        job_timeout_s=args.job_timeout,
        shutdown_grace_s=args.shutdown_grace,
        stats_log_interval_s=args.stats_interval,
        series=SeriesStoreConfig(idle_s=args.series_idle, max_series=args.max_series),
        keep_warm=KeepWarmConfig(enabled=args.keep_warm),
        shared_memory=args.shm,
        also_bind=tuple(args.also_bind),
    )
    log = logging.getLogger("scanedge.runtime")
    if args.insecure:
        log.warning("--insecure: traffic is NOT encrypted and any client may connect; use CurveZMQ on real networks")
    server = Server([ModelSpec(m) for m in args.model], config, prior_provider=prior_provider(args))

    def stop(signum: int, frame: object) -> None:
        log.info("signal %d: finishing requests in flight (at most %g s), then exiting", signum, args.shutdown_grace)
        server.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve()
    if server.wedged_workers:
        # A thread stuck inside an inference library cannot be stopped from Python, and an interpreter
        # shutting down around it may crash: leave now, having answered everything that could be.
        log.error("exiting with worker(s) still stuck in inference: %s", ", ".join(server.wedged_workers))
        logging.shutdown()
        os._exit(1)
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    """Write a CurveZMQ key pair NAME.key / NAME.key_secret into DIR."""
    from scanedge.runtime.wire.security import generate_keys

    public, secret = generate_keys(args.dir, args.name, force=args.force)
    make_console().print(f"public key: {literal(public)}\nsecret key: {literal(secret)} (keep it private)")
    return 0


def cmd_keys_allow(args: argparse.Namespace) -> int:
    """Copy a client's public key into the runtime's allow-list directory."""
    from scanedge.runtime.wire.security import allow_client

    target = allow_client(args.clients_dir, args.public_key)
    make_console().print(f"allowed: {literal(target)}")
    return 0


def prior_provider(args: argparse.Namespace) -> Callable[[str, Any], Any] | None:
    """``--prior DIR`` as the runtime's prior provider: the folder's series, loaded and segmented once (on the
    first series that asks), then the prior of every series; None without ``--prior``."""
    if args.prior is None:
        return None
    import threading

    from scanedge.runtime.core.followup import folder_prior
    from scanedge.runtime.core.pipeline import Pipeline

    folder = Path(args.prior)
    if not folder.is_dir():
        raise ConfigError(f"--prior {folder} is not a folder")
    model = args.model[0] if args.model else None
    lock = threading.Lock()
    cached: list[Any] = []

    def provide(series: str, first: Any) -> Any:
        with lock:
            if not cached:
                with Pipeline.open(model) as pipe:
                    cached.append(folder_prior(folder, pipe))
            return cached[0]

    return provide


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` and ``keys generate|allow``."""
    p = sub.add_parser("serve", help="run the streaming runtime (ZeroMQ; docs/protocol.md)")
    p.add_argument(
        "--model",
        type=model_file,
        action="append",
        default=[],
        help="model to serve: a file, or demo / demo-classifier for the shipped ones (repeatable; default: demo)",
    )
    p.add_argument(
        "--bind", default="tcp://127.0.0.1:5555", help="ROUTER endpoint for consoles (default: tcp://127.0.0.1:5555)"
    )
    p.add_argument(
        "--also-bind",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help="listen for consoles here too, e.g. ipc:///run/scanedge.ipc beside the tcp port "
        "(repeatable; default: none)",
    )
    p.add_argument(
        "--publish", default=None, help="PUB endpoint for viewers, e.g. tcp://127.0.0.1:5556 (default: none)"
    )
    p.add_argument("--workers", type=int, default=1, help="inference workers, each with its own engine (default: 1)")
    add_engine_args(p, threads_help="inference threads per worker (default: one per core)")
    p.add_argument(
        "--spinning", action="store_true", help="let ONNX Runtime threads busy-wait between runs (default: off)"
    )
    p.add_argument(
        "--no-keep-warm",
        dest="keep_warm",
        action="store_false",
        help="no keep-warm pass before each slice expected at a scanner's pace (default: kept warm)",
    )
    p.add_argument(
        "--max-message-mb", type=float, default=64.0, help="larger messages are refused, TOO_LARGE (default: 64)"
    )
    p.add_argument(
        "--max-inflight-mb", type=float, default=256.0, help="payload MiB in flight before BUSY (default: 256)"
    )
    add_limit_args(p)
    p.add_argument(
        "--curve-secret", type=Path, help="the runtime's CurveZMQ secret key file, NAME.key_secret (default: none)"
    )
    p.add_argument("--curve-clients", type=Path, help="directory of allowed client public keys, *.key (default: none)")
    p.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback bind without encryption (default: refused)"
    )
    p.add_argument(
        "--job-timeout",
        type=float,
        default=60.0,
        help="seconds one inference may take before its worker is declared wedged and replaced (default: 60)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        help="on SIGTERM/SIGINT, seconds requests in flight may take before the runtime exits anyway (default: 10)",
    )
    p.add_argument(
        "--shm",
        choices=("ipc", "local", "off"),
        default="ipc",
        help="which consoles may put pixels and outputs in shared memory (docs/protocol.md section 12): ipc "
        "(default: consoles on ipc://, whose user the kernel reports, and only that user's objects; local is "
        "its earlier name), or off. tcp consoles send frames: the runtime cannot tell which user they are",
    )
    p.add_argument("--stats-interval", type=float, default=60.0, help="seconds between stats log lines (default: 60)")
    p.add_argument(
        "--series-idle",
        type=float,
        default=600.0,
        help="forget a series' lesion load after this many seconds without a slice (default: 600)",
    )
    p.add_argument(
        "--max-series", type=int, default=64, help="series whose lesion load is kept at once (default: 64; LRU)"
    )
    p.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log level (default: info)"
    )
    p.add_argument(
        "--prior",
        type=Path,
        metavar="DIR",
        help="compare every series live with the prior series in DIR (DICOM images; its lesions segmented by "
        "the first model); each RESULT then carries change (default: no follow-up)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keys", help="CurveZMQ keys for networked runtimes")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = ksub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret into DIR")
    k.add_argument("dir", type=Path, help="folder for the key pair (created if missing)")
    k.add_argument("--name", required=True, help="e.g. server, or the console's name (required)")
    k.add_argument("--force", action="store_true", help="replace an existing key pair of that name (default: refuse)")
    k.set_defaults(func=cmd_keys_generate)
    k = ksub.add_parser("allow", help="add a client's public key to the runtime's allow-list directory")
    k.add_argument("clients_dir", type=Path, help="the allow-list folder (created if missing)")
    k.add_argument("public_key", type=Path, help="the console's public key file, NAME.key (never the .key_secret)")
    k.set_defaults(func=cmd_keys_allow)

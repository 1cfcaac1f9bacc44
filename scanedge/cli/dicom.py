"""``scanedge dicom-listen``: the DICOM node (a Storage SCP that answers with DICOM SEGs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from scanedge.cli.arguments import add_engine_args, add_limit_args, engine_options, model_file, slice_limits

if TYPE_CHECKING:
    from scanedge.dicomnet.followup import FollowupConfig

__all__ = ["add_parsers", "cmd_dicom_listen", "followup_config"]


def followup_config(args: argparse.Namespace) -> FollowupConfig | None:
    """The node's :class:`~scanedge.dicomnet.followup.FollowupConfig` from the ``--prior-*`` flags; None when no
    prior source is given (follow-up off)."""
    from scanedge.dicomnet.followup import FollowupConfig
    from scanedge.dicomnet.forward import parse_forward_target
    from scanedge.dicomnet.prior_store import PriorStoreConfig
    from scanedge.dicomnet.priors import DicomwebSource, DimseSource, PriorLimits, PriorRules
    from scanedge.errors import ConfigError
    from scanedge.imaging.registration import RegistrationConfig

    if not (args.prior_pacs or args.prior_dicomweb or args.prior_store):
        return None
    pacs = None
    if args.prior_pacs:
        try:
            target = parse_forward_target(args.prior_pacs)
        except ConfigError:
            raise ConfigError(
                f"--prior-pacs takes AE@HOST:PORT (e.g. PACS@10.0.0.5:104), got {args.prior_pacs!r}"
            ) from None
        pacs = DimseSource(target.host, target.port, target.ae_title, calling_aet=args.ae_title)
    return FollowupConfig(
        pacs=pacs,
        dicomweb=DicomwebSource(args.prior_dicomweb) if args.prior_dicomweb else None,
        store=PriorStoreConfig(args.prior_store) if args.prior_store else None,
        rules=PriorRules(same_body_part=not args.prior_any_body_part, description_regex=args.prior_description),
        limits=PriorLimits(timeout_s=args.prior_timeout),
        registration=RegistrationConfig(time_budget_s=args.registration_budget),
        min_slices=args.followup_min_slices,
        wait_s=args.followup_wait,
        lesion_class=args.followup_class,
    )


def cmd_dicom_listen(args: argparse.Namespace) -> int:
    """Listen until SIGINT/SIGTERM; open series get their SEGs written before exiting. With ``--status``:
    print the status a node writing to ``--out`` last wrote, and exit."""
    import logging
    import signal

    if args.status:
        return _print_status(args.out)

    from scanedge.dicomnet import DicomListener, ListenerConfig, parse_forward_target
    from scanedge.dicomnet.forward import parse_dicomweb_target
    from scanedge.dicomnet.series import SeriesLimits
    from scanedge.errors import ConfigError
    from scanedge.log_budget import configure_logging
    from scanedge.runtime.core.model_spec import ModelSpec

    configure_logging(args.log_level)  # pynetdicom and highdicom quiet below WARNING; every call site budgeted
    try:
        series_limits = SeriesLimits(
            max_series=args.max_series, max_bytes=int(args.max_held_mb * 1024 * 1024), max_frames=args.max_frames
        )
    except ValueError as exc:
        raise ConfigError(f"--max-series, --max-held-mb and --max-frames: {exc}") from None
    config = ListenerConfig(
        ae_title=args.ae_title,
        bind=args.bind,
        port=args.port,
        out=args.out,
        forward=parse_forward_target(args.forward)
        if args.forward
        else parse_dicomweb_target(args.forward_dicomweb)
        if args.forward_dicomweb
        else None,
        outputs=tuple(args.output) or ("seg",),
        publish=args.publish,
        insecure=args.insecure,
        series_timeout_s=args.series_timeout,
        complete_on_release=args.complete_on_release,
        segmentation=args.segmentation,
        workers=args.workers,
        engine=engine_options(args, spinning=False),
        limits=slice_limits(args),
        series_limits=series_limits,
        max_associations=args.max_associations,
        max_pending=args.max_pending,
        max_per_address=args.max_per_address,
        associate_timeout_s=args.associate_timeout,
        ignore_scope=args.ignore_scope,
        allowed_calling_aes=tuple(args.allow_calling_ae),
        followup=followup_config(args),
    )
    log = logging.getLogger("scanedge.dicomnet")
    listener = DicomListener([ModelSpec(m) for m in args.model], config)
    if config.ignore_scope:
        log.warning("--ignore-scope: images outside a model's scope are segmented too (research use only)")

    def stop(signum: int, frame: object) -> None:
        log.info("signal %d: finishing open associations, writing the SEGs of open series, then exiting", signum)
        listener.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    listener.serve()
    stats = listener.stats
    refused = ", ".join(f"0x{code:04X} x{n}" for code, n in sorted(stats.refused.items())) or "none"
    pending = listener.forwarder.pending if listener.forwarder is not None else 0
    log.info(
        "stopped: %d received, %d segmented, refused %s; %s; %d waiting to be forwarded; "
        "%d series (%d image(s)) left in the spool for the next start",
        stats.received,
        stats.stored,
        refused,
        "; ".join(
            f"{stats.outputs[o.name].written} {o.label}(s) written, {stats.outputs[o.name].failures} failed"
            for o in listener.outputs
        ),
        pending,
        stats.series_pending,
        listener.spool.files,
    )
    return 0


def _print_status(out: Path) -> int:
    """The node's ``OUT/status.json``, pretty-printed, with a one-line summary first."""
    import json

    from scanedge.dicomnet.stats import read_status

    status = read_status(out)
    spool = status.get("spool") or {}
    print(
        f"{status.get('state', '?')} (updated {status.get('updated', '?')}): "
        f"{status.get('series_open', '?')} series open, {status.get('series_pending', '?')} waiting for a SEG retry, "
        f"{spool.get('files', '?')} image(s) / {spool.get('bytes', '?')} bytes spooled, "
        f"last error: {status.get('last_error') or 'none'}"
    )
    print(json.dumps(status, indent=2))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``dicom-listen``."""
    p = sub.add_parser(
        "dicom-listen",
        help="DICOM node: receive images by C-STORE, segment them live, answer with DICOM SEGs (docs/dicom-node.md)",
    )
    p.add_argument("--ae-title", default="SCANEDGE", help="this node's AE title (default: SCANEDGE)")
    p.add_argument("--port", type=int, default=11112, help="TCP port for associations (default: 11112)")
    p.add_argument(
        "--bind",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; DICOM is unencrypted)",
    )
    p.add_argument(
        "--model",
        type=model_file,
        action="append",
        default=[],
        help="model to run: a file, or demo / demo-classifier for the shipped ones (repeatable; default: demo)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("scanedge-dicom-out"),
        help="folder for the spool of received images (spool/), the SEGs (seg/), the forwarding outbox "
        "(outbox/) and status.json; nothing is written elsewhere (default: ./scanedge-dicom-out)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print the status.json a node writing to --out last wrote (series waiting, retries, last error, "
        "spool size) and exit (default: off)",
    )
    forward = p.add_mutually_exclusive_group()
    forward.add_argument(
        "--forward",
        default=None,
        metavar="AE@HOST:PORT",
        help="also send each written object (SEG, SR) there by C-STORE (default: none)",
    )
    forward.add_argument(
        "--forward-dicomweb",
        default=None,
        metavar="URL",
        help="also send each output object to this DICOMweb root by STOW-RS, e.g. http://pacs:8042/dicom-web "
        "(from the same outbox, retried alike; default: none)",
    )
    p.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="NAME",
        help="what to make of each completed series (repeatable): seg (the model's SEG), sr (a lesion SEG and a "
        "TID 1500 Measurement Report of the tracked lesions; docs/followup.md) (default: seg)",
    )
    p.add_argument(
        "--series-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="a series is complete when no instance has arrived for S seconds (default: 10)",
    )
    p.add_argument(
        "--complete-on-release",
        action="store_true",
        help="a series is also complete once every association that sent it is released (default: off)",
    )
    p.add_argument(
        "--segmentation",
        choices=("binary", "fractional"),
        default="binary",
        help="BINARY masks or FRACTIONAL probabilities in the SEG (default: binary)",
    )
    p.add_argument(
        "--publish", default=None, help="PUB endpoint for live results, e.g. tcp://127.0.0.1:5556 (default: none)"
    )
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --publish endpoint (default: off)")
    p.add_argument(
        "--allow-calling-ae",
        action="append",
        default=[],
        metavar="TITLE",
        help="accept associations only from this Calling AE title, e.g. the scanner's (repeatable; default: any)",
    )
    p.add_argument(
        "--ignore-scope",
        action="store_true",
        help="segment images outside the model's scope too (research use only; each result says so; default: off)",
    )
    p.add_argument("--workers", type=int, default=1, help="pipelines per model: images segmented at once (default: 1)")
    add_engine_args(p, threads_help="inference threads per pipeline (default: one per core)")
    add_limit_args(p, help_text="refuse images with more pixels than this (0xA700; default: 4096 x 4096)")
    g = p.add_argument_group("memory held for open series")
    g.add_argument("--max-series", type=int, default=32, help="series open at once (default: 32)")
    g.add_argument("--max-held-mb", type=float, default=512.0, help="MiB held over open series (default: 512)")
    g.add_argument("--max-frames", type=int, default=4096, help="frames per series (default: 4096)")
    p.add_argument("--max-associations", type=int, default=8, help="associations at once (default: 8)")
    g = p.add_argument_group("connections that have not associated (docs/dicom-node.md, Admission)")
    g.add_argument(
        "--max-pending",
        type=int,
        default=16,
        help="connections kept while their association request has not arrived; a new one past this closes "
        "the oldest of the busiest address (default: 16)",
    )
    g.add_argument(
        "--max-per-address", type=int, default=4, help="connections from one IP address, associated or not (default: 4)"
    )
    g.add_argument(
        "--associate-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="close a connection whose association request is not complete S seconds after it connected (default: 5)",
    )
    g = p.add_argument_group("follow-up against the patient's prior study (docs/dicom-node.md, Follow-up)")
    g.add_argument(
        "--prior-pacs", metavar="AE@HOST:PORT", help="look priors up in this PACS over DIMSE (default: no PACS)"
    )
    g.add_argument("--prior-dicomweb", metavar="URL", help="look priors up over DICOMweb at URL (default: no DICOMweb)")
    g.add_argument(
        "--prior-store",
        type=Path,
        metavar="DIR",
        help="keep every completed series in DIR and look priors up there first (default: no store)",
    )
    g.add_argument(
        "--prior-description", metavar="REGEX", help="a prior's Series Description must match REGEX (default: any)"
    )
    g.add_argument(
        "--prior-any-body-part", action="store_true", help="a prior need not have the same body part (default: off)"
    )
    g.add_argument("--prior-timeout", type=float, default=10.0, metavar="S", help="per PACS network step (default: 10)")
    g.add_argument("--registration-budget", type=float, default=5.0, metavar="S", help="per registration (default: 5)")
    g.add_argument(
        "--followup-min-slices",
        type=int,
        default=8,
        metavar="N",
        help="contiguous slices before the first live comparison; 0: only at completion (default: 8)",
    )
    g.add_argument(
        "--followup-wait",
        type=float,
        default=120.0,
        metavar="S",
        help="at completion, how long the outputs wait for the prior lookup and comparison (default: 120)",
    )
    g.add_argument(
        "--followup-class", metavar="NAME", help="the model class compared (default: every foreground class)"
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="(default: info)")
    p.set_defaults(func=cmd_dicom_listen)

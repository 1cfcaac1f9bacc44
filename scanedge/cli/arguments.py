"""Argument groups several commands share, and turning their values into the library's config objects.

Text the user typed is parsed here (comma lists, colours, sizes); a value that cannot work is a
ConfigError naming the option, so it prints as one line instead of a traceback.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rich.markup import escape

from scanedge.console import user_values
from scanedge.engines.options import BACKENDS
from scanedge.errors import ConfigError

if TYPE_CHECKING:
    from scanedge.engines import EngineConfig
    from scanedge.imaging.files import LoadedSlice
    from scanedge.imaging.overlay import OverlayConfig
    from scanedge.imaging.slices import SliceLimits
    from scanedge.runtime.core.pipeline import PipelineConfig

__all__ = [
    "ENGINE_CHOICES",
    "SHIPPED_MODELS",
    "add_engine_args",
    "add_limit_args",
    "add_model_args",
    "add_overlay_args",
    "add_remote_args",
    "engine_options",
    "literal",
    "model_file",
    "overlay_options",
    "parse_color",
    "parse_numbers",
    "parse_roles",
    "parse_size",
    "pipeline_config",
    "read_slices",
    "remote_options",
    "role_names",
    "slice_limits",
    "split_list",
    "threads_argument",
]

ENGINE_CHOICES = BACKENDS
DEFAULT_MAX_PIXELS = 4096 * 4096

T = TypeVar("T")


def literal(value: object) -> str:
    """``value`` as text rich prints as it is: paths and names from outside may contain ``[...]``."""
    return escape(str(value))


def threads_argument(text: str) -> int | str:
    """``--threads``: a count or ``auto`` (parsed by the engines' own parser, imported only when given)."""
    from scanedge.engines.options import parse_threads

    return parse_threads(text)


threads_argument.__name__ = "threads"  # argparse names the type in its message: "invalid threads value: 'x'"

# --- models ------------------------------------------------------------------------------------------------

#: the names ``--model`` takes for the models shipped in ``scanedge/models`` (a file of that name wins)
SHIPPED_MODELS = ("demo", "demo-classifier")


def model_file(text: str) -> Path:
    """``--model``'s type: a model file, or ``demo`` / ``demo-classifier`` for the shipped models (so the demo
    model can be served beside another without knowing where the package lies). A file called so wins."""
    path = Path(text)
    if text in SHIPPED_MODELS and not path.exists():
        from scanedge.models import DEMO_CLASSIFIER_PATH, DEMO_MODEL_PATH

        return DEMO_MODEL_PATH if text == "demo" else DEMO_CLASSIFIER_PATH
    return path


# --- argument groups -------------------------------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, --manifest and --ignore-scope: one model, default the shipped demo model."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", type=model_file, default=None, help="ONNX model, or demo / demo-classifier (default: demo)"
    )
    g.add_argument(
        "--manifest", type=Path, default=None, help="manifest JSON overriding the model's own (default: none)"
    )
    g.add_argument(
        "--ignore-scope",
        action="store_true",
        help="research use only: also segment images outside the model's declared scope (another modality, "
        "body part, ...); each result is marked scope 'outside' (default: such images are skipped)",
    )


def add_engine_args(
    p: argparse.ArgumentParser, *, threads_help: str | None = "inference threads (default: one per core)"
) -> None:
    """--backend (alias --engine) and --threads: which backend runs the model, and how many threads it may use."""
    g = p.add_argument_group("engine")
    g.add_argument(
        "--backend",
        "--engine",  # the earlier name of the flag, kept so that existing scripts keep working
        dest="backend",
        choices=ENGINE_CHOICES,
        default="auto",
        help="inference backend (default: auto, a matching TensorRT plan if there is one, else ONNX Runtime; "
        "remote: a serving engine, see --remote)",
    )
    g.add_argument("--threads", type=threads_argument, default=None, help=threads_help)
    add_remote_args(p)


def add_remote_args(p: argparse.ArgumentParser) -> None:
    """--remote URL and its settings: inference on a serving engine over the Open Inference Protocol."""
    g = p.add_argument_group("remote engine (Triton, KServe, MLServer over the Open Inference Protocol)")
    g.add_argument(
        "--remote",
        metavar="URL",
        default=None,
        help="grpc://HOST:PORT[/MODEL[/VERSION]] (grpcs:// for TLS); implies --backend remote. Without MODEL, "
        "each model is asked for under its manifest's name, the name export-triton gives it (default: none, "
        "inference runs here)",
    )
    g.add_argument("--remote-timeout", type=float, default=10.0, help="seconds per remote call (default: 10)")
    g.add_argument("--remote-retries", type=int, default=2, help="retries while the server is UNAVAILABLE (default: 2)")
    g.add_argument(
        "--remote-ca", type=Path, default=None, help="TLS: CA certificate(s) of the server, PEM (default: system)"
    )
    g.add_argument("--remote-cert", type=Path, default=None, help="TLS: client certificate chain, PEM (default: none)")
    g.add_argument("--remote-key", type=Path, default=None, help="TLS: client private key, PEM (default: none)")
    g.add_argument(
        "--remote-insecure",
        action="store_true",
        help="allow plain gRPC to a server beyond this machine (images cross the network unencrypted)",
    )


def remote_options(args: argparse.Namespace) -> Any:
    """RemoteConfig from --remote and its settings; None without --remote."""
    if getattr(args, "remote", None) is None:
        return None
    from scanedge.engines import RemoteConfig

    with user_values():
        return RemoteConfig(
            args.remote,
            timeout_s=args.remote_timeout,
            retries=args.remote_retries,
            tls_ca=args.remote_ca,
            tls_cert=args.remote_cert,
            tls_key=args.remote_key,
            insecure=args.remote_insecure,
        )


def engine_options(args: argparse.Namespace, **changes: Any) -> EngineConfig:
    """The engine the command line asked for, as the library's one options object (``--remote`` picks the
    remote backend unless another one was asked for, which is then an error)."""
    from scanedge.engines import EngineConfig

    backend, remote = args.backend, remote_options(args)
    if remote is not None and backend == "auto":
        backend = "remote"
    elif remote is not None and backend != "remote":
        raise ConfigError(f"--remote sends inference to a server; it does not go with --backend {backend}")
    with user_values():
        return EngineConfig(**{"backend": backend, "threads": args.threads, "remote": remote, **changes})


def add_overlay_args(p: argparse.ArgumentParser) -> None:
    """--format, --alpha, --no-fill, --no-contours, --heatmap: how overlays are drawn and written."""
    from scanedge.imaging.overlay import OverlayConfig

    defaults = OverlayConfig()
    g = p.add_argument_group("overlays")
    g.add_argument(
        "--format",
        choices=("png", "jpeg"),
        default="png",
        help="overlay file format; JPEG gets thicker outlines, which survive its compression (default: png)",
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=defaults.alpha,
        help=f"opacity of the class colour fill, 0-1 (default: {defaults.alpha})",
    )
    g.add_argument("--no-fill", dest="fill", action="store_false", help="outline findings only, no colour fill")
    g.add_argument("--no-contours", dest="contours", action="store_false", help="fill findings only, no outline")
    g.add_argument(
        "--contours",
        dest="contours",
        action="store_true",
        help=argparse.SUPPRESS,  # the earlier opt-in flag; outlines are now drawn by default
    )
    g.add_argument(
        "--heatmap",
        action="store_true",
        help="show the class probability as a colour map with a legend, outlines at the threshold (default: off)",
    )


def add_limit_args(p: argparse.ArgumentParser, *, help_text: str | None = None) -> None:
    """--max-pixels: the largest slice accepted (``help_text`` replaces the standard help; it names the default)."""
    g = p.add_argument_group("limits")
    g.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=help_text or f"refuse slices with more pixels than this, IMAGE_TOO_LARGE (default: {DEFAULT_MAX_PIXELS})",
    )


# --- config objects from arguments -----------------------------------------------------------------------


def slice_limits(args: argparse.Namespace) -> SliceLimits:
    """SliceLimits from --max-pixels."""
    from scanedge.imaging.slices import SliceLimits

    return SliceLimits(max_pixels=args.max_pixels)


def overlay_options(args: argparse.Namespace) -> OverlayConfig:
    """OverlayConfig from --alpha, --no-fill, --no-contours, --heatmap and --format (JPEG: thicker outlines)."""
    from scanedge.imaging.overlay import OverlayConfig

    with user_values():
        return OverlayConfig(
            alpha=args.alpha,
            fill=args.fill,
            contours=args.contours,
            heatmap=args.heatmap,
            contour_thickness=2 if args.format == "jpeg" else 1,
        )


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    """PipelineConfig from the limit, overlay and scope arguments."""
    from scanedge.runtime.core.pipeline import PipelineConfig

    return PipelineConfig(limits=slice_limits(args), overlay=overlay_options(args), ignore_scope=args.ignore_scope)


def read_slices(paths: Iterable[str | os.PathLike[str]], limits: SliceLimits | None = None) -> list[LoadedSlice]:
    """Every slice under the files/folders the user named, in series order; ConfigError when there is none."""
    from scanedge.imaging.files import load_slices
    from scanedge.imaging.slices import DEFAULT_LIMITS

    paths = list(paths)
    loaded = load_slices(paths, limits=limits or DEFAULT_LIMITS)
    if not loaded:
        raise ConfigError("no slices found under " + ", ".join(map(str, paths)))
    return loaded


# --- text the user typed ---------------------------------------------------------------------------------


def split_list(text: str | None) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c'); None or '' -> ()."""
    return tuple(x.strip() for x in text.split(",") if x.strip()) if text else ()


def _convert(items: Sequence[str], cast: Callable[[str], T], option: str, expected: str) -> tuple[T, ...]:
    try:
        return tuple(cast(x) for x in items)
    except ValueError:
        raise ConfigError(f"{option} takes {expected}, got {','.join(items)!r}") from None


def parse_numbers(text: str | None, option: str, count: int | None = None) -> tuple[float, ...]:
    """Comma-separated numbers for ``option``; exactly ``count`` of them when given. () for None."""
    if text is None:
        return ()
    values = _convert(split_list(text), float, option, "comma-separated numbers")
    if count is not None and len(values) != count:
        raise ConfigError(f"{option} takes {count} comma-separated numbers, got {len(values)}: {text!r}")
    return values


def parse_color(text: str) -> tuple[int, int, int]:
    """'ffcc00' or '#FFCC00' -> (255, 204, 0)."""
    hexa = text.strip().lstrip("#")
    if len(hexa) == 6 and all(c in "0123456789abcdefABCDEF" for c in hexa):
        return int(hexa[0:2], 16), int(hexa[2:4], 16), int(hexa[4:6], 16)
    raise ConfigError(f"colour {text!r} is not RRGGBB hex (e.g. ff0000 for red)")


def parse_size(text: str, option: str) -> tuple[int, int]:
    """'256x192' -> (256, 192) as (height, width), both >= 1."""
    parts = text.lower().split("x")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        h, w = (int(p) for p in parts)
        if h >= 1 and w >= 1:
            return h, w
    raise ConfigError(f"{option} takes HEIGHTxWIDTH, e.g. 256x256; got {text!r}")


def role_names(text: str | None, option: str = "--roles") -> tuple[str, ...]:
    """'FLAIR, t1' -> ('flair', 't1'): a multi-input model's role names (manifest ``inputs``), lower-cased,
    each a valid role name; () for None. Shared by ``scanedge replay --roles`` and ``segment``/``verify``."""
    from scanedge.manifest_inputs import ROLE_PATTERN

    names = tuple(n.lower() for n in split_list(text))
    bad = [n for n in names if not ROLE_PATTERN.fullmatch(n)]
    if bad:
        raise ConfigError(f"{option}: {bad[0]!r} is not a role name (a letter, then letters, digits or _)")
    return names


def parse_roles(tokens: Sequence[str] | None, paths: Sequence[Path], option: str = "--roles") -> dict[str, list[Path]]:
    """``--roles`` of ``segment`` and ``verify``: which files or folders fill which input role.

    Either ``ROLE=PATH`` tokens (``flair=study/3 t1=study/5``; a role may be named more than once), or one
    ``ROLE,ROLE`` list giving the role of each of ``paths`` in order, as ``scanedge replay --roles`` does.
    {} without the option (the series are then recognised by the manifest's rules).
    """
    if not tokens:
        return {}
    out: dict[str, list[Path]] = {}
    if len(tokens) == 1 and "=" not in tokens[0]:
        names = role_names(tokens[0], option)
        if len(names) != len(paths):
            raise ConfigError(
                f"{option} {tokens[0]} names {len(names)} role(s) for {len(paths)} path(s); give one role per "
                "path, in order, or ROLE=PATH for each"
            )
        for name, path in zip(names, paths):
            out.setdefault(name, []).append(Path(path))
        return out
    for token in tokens:
        name, sep, where = token.partition("=")
        if not sep or not where.strip():
            raise ConfigError(f"{option} takes ROLE=PATH for each role (e.g. flair=study/3 t1=study/5), got {token!r}")
        (role,) = role_names(name, option) or ("",)
        if not role:
            raise ConfigError(f"{option} {token!r} names no role before '='")
        out.setdefault(role, []).append(Path(where.strip()))
    return out

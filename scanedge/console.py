"""Terminal plumbing shared by the ``scanedge`` and ``edge-bench`` commands: consoles, progress, exit codes.

Reports (tables, summaries, JSON) go to stdout, so ``edge-bench engine M > report.txt`` keeps the report;
progress and diagnostics go to stderr.

Exit codes: 0 success, 1 a check that ran and failed (verify, compare, inspect), 2 a typed scanedge error
or a file the user named that does not exist, 3 a batch that finished but skipped some inputs (each one
named on stderr and in its results.json), 130 Ctrl-C (and SIGTERM for a benchmark, after its partial
report). Anything else is a bug and keeps its traceback.
Text that comes from outside (paths, error messages) is printed literally, never read as rich markup:
``pip install 'scanedge[dicom]'`` must not lose its ``[dicom]``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from scanedge.errors import ConfigError, ScanedgeError

__all__ = [
    "EXIT_SKIPPED",
    "PIPED_WIDTH",
    "LazyProgress",
    "make_console",
    "print_error",
    "print_table",
    "run_command",
    "user_values",
]

#: console width when output goes to a file or a pipe
PIPED_WIDTH = 200
#: exit status of a batch that finished but skipped some inputs
EXIT_SKIPPED = 3


def make_console(stderr: bool = True) -> Any:
    """A rich Console on stderr (people) or stdout (``stderr=False``, for reports), without auto-highlighting.

    Printed lines are never hard-wrapped (``soft_wrap``): a path or a hint broken at the console width
    cannot be copied, and a terminal wraps long lines by itself.
    """
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped to a file or another program there is no width to fit: tables keep whole numbers (rich
    # would otherwise squeeze them to 80 columns with "12.4…" cells).
    width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def print_table(
    console: Any,
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    left: int = 1,
) -> None:
    """A table whose cells are never cut: a rich table when it fits the console, else one line per row.

    Rich squeezes a table wider than the console by cutting cells to ``12.4…``; a number cut that way is
    worse than no number. When the table does not fit, each row is printed as ``name: column value, ...``
    lines instead, which the terminal may wrap but never shortens. The first ``left`` columns are
    left-aligned (names), the rest right-aligned (numbers). All text is printed literally.
    """
    from rich.table import Table
    from rich.text import Text

    rows = [list(r) for r in rows]
    table = Table(title=Text(title), title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(Text(col), justify="left" if i < left else "right", overflow="fold", no_wrap=True)
    for r in rows:
        table.add_row(*(Text(c) for c in r))
    if console.measure(table, options=console.options.update(max_width=10**6)).maximum <= console.width:
        console.print(table)
        return
    console.print(Text(title))
    for r in rows:
        rest = ", ".join(f"{col} {value}".strip() for col, value in zip(columns[left:], r[left:]))
        console.print(Text(f"  {' '.join(r[:left])}: {rest}" if left else f"  {rest}"))


class LazyProgress:
    """A progress callback ``(done, total)`` that shows a rich bar only once work has taken ``delay_s``.

    Short runs print nothing; use it as a context manager so the bar is removed when the work ends.
    """

    def __init__(self, console: Any, description: str, delay_s: float = 2.0) -> None:
        self._start = time.perf_counter()
        self._console = console
        self._description = description
        self._delay = delay_s
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            if time.perf_counter() - self._start < self._delay:
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(self._description),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._description, total=total)
        self._bar.update(self._task, completed=done, total=max(total, done))

    def close(self) -> None:
        """Stop the bar, if one was shown (leaving it on screen at its last state)."""
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> LazyProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def print_error(message: str, code: str | None = None) -> None:
    """One line on stderr: ``error [CODE] message``, the message printed literally and never wrapped."""
    from rich.text import Text

    line = Text("error", style="red")
    line.append(f" [{code}] {message}" if code else f" {message}")
    make_console().print(line, soft_wrap=True)


@contextmanager
def user_values() -> Iterator[None]:
    """Turn ``ValueError`` into ConfigError inside the block, for code that validates what the user typed.

    Library config objects (``OverlayConfig``, ``ServerConfig``, ...) refuse bad values with ValueError,
    which is right for Python callers; on the command line the same value is the user's to fix. Keep the
    block to building such objects from arguments: a ValueError anywhere else is a bug and must keep its
    traceback.
    """
    try:
        yield
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a command handler and turn its outcome into an exit status.

    Typed scanedge errors, and FileNotFoundError for a path the user named, print one line and give 2;
    Ctrl-C gives 130. Every other exception propagates with its traceback: it is a bug.
    """
    try:
        return int(func(args) or 0)
    except ScanedgeError as exc:
        print_error(exc.message, exc.code)
        return 2
    except FileNotFoundError as exc:
        print_error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130

"""Terminal plumbing shared by the ``scanedge`` and ``edge-bench`` commands: consoles, progress, exit codes.

Messages for people go to stderr; machine-readable output goes to stdout.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from scanedge.errors import ScanedgeError

__all__ = ["LazyProgress", "make_console", "run_command"]


def make_console(stderr: bool = True) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


class LazyProgress:
    """A progress callback ``(done, total)`` that shows a rich bar only once work has taken > 2 s."""

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
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> LazyProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a command handler: typed errors become one red line and exit status 2, Ctrl-C 130."""
    try:
        return int(func(args) or 0)
    except ScanedgeError as exc:
        make_console().print(f"[red]error[/] [{exc.code}] {exc.message}")
        return 2
    except (ValueError, FileNotFoundError) as exc:
        make_console().print(f"[red]error[/] {exc}")
        return 2
    except KeyboardInterrupt:
        return 130

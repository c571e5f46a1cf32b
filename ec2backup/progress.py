"""A small shared progress helper: a rich bar with rate and ETA on a terminal, silent otherwise.

    with progress_bar("backup", total=nbytes) as bar:
        bar.advance(len(block))

Output goes to stderr so stdout stays machine-readable (ids, JSON). Set EC2BACKUP_PROGRESS=0 to
disable it, =1 to force it on (e.g. under `script` or in CI logs).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID


@functools.cache
def stderr_console() -> Console:
    # rich is imported only when something is shown: it costs a small command (an
    # incremental `image backup` under a script) ~40 ms and ~5 MiB of its peak RSS.
    from rich.console import Console

    return Console(stderr=True)


def progress_enabled() -> bool:
    flag = os.environ.get("EC2BACKUP_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false", "no")
    return sys.stderr.isatty() and stderr_console().is_terminal


class Bar:
    """Thread-safe handle: advance() may be called from worker threads."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress = progress
        self._task = task
        self._lock = threading.Lock()
        self.completed = 0

    def advance(self, n: int) -> None:
        with self._lock:
            self.completed += n
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, advance=n)

    def set_total(self, total: int | None) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total)


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Bar]:
    if not progress_enabled():
        yield Bar(None, None)
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield Bar(progress, task)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"

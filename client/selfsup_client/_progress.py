"""Progress bars on stderr (rich): bytes for transfers, steps and losses for a job."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from selfsup_client.models import Event, Job, MetricPoint


def stderr_console() -> Console:
    """Where progress and logs go, so stdout stays the command's result."""
    return Console(stderr=True)


class TransferBar:
    """A bytes bar for an upload or a download; does nothing when disabled."""

    def __init__(self, enabled: bool, description: str, total: int | None, console: Console | None = None) -> None:
        self._progress: Progress | None = None
        self._task = TaskID(0)
        if enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console or stderr_console(),
            )
            self._task = self._progress.add_task(description, total=total)

    def set(self, completed: int) -> None:
        """Show `completed` bytes done."""
        if self._progress is not None:
            self._progress.update(self._task, completed=completed)

    def __enter__(self) -> TransferBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _number(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class JobProgress:
    """A live bar for one job: status, step / max_steps, train and val loss, tokens/s, ETA; events above it."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.console = console or stderr_console()
        self._metrics: dict[str, float] = {}
        self._max_steps = 1
        self._running = False
        self._rate_start: tuple[float, int] | None = None
        self._progress: Progress | None = None
        self._task = TaskID(0)
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=30),
                TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
                TextColumn("loss {task.fields[train_loss]}"),
                TextColumn("val {task.fields[val_loss]}"),
                TextColumn("{task.fields[tokens_per_second]} tok/s"),
                TextColumn("ETA {task.fields[eta]}"),
                console=self.console,
            )
            self._task = self._progress.add_task("queued", total=1, **self._fields(None))

    def _fields(self, eta: float | None) -> dict[str, Any]:
        return {
            "train_loss": _number(self._metrics.get("train_loss"), ".4f"),
            "val_loss": _number(self._metrics.get("val_loss"), ".4f"),
            "tokens_per_second": _number(self._metrics.get("tokens_per_second"), ",.0f"),
            "eta": _duration(eta),
        }

    def show_job(self, job: Job) -> None:
        """Show the job resource's status, step, latest metrics and ETA."""
        self._metrics.update(job.metrics)
        self._max_steps = max(job.max_steps, 1)
        self._running = job.status == "running"
        self._rate_start = (time.monotonic(), job.step) if self._running else None
        if self._progress is not None:
            self._progress.update(
                self._task,
                description=job.status,
                total=self._max_steps,
                completed=job.step,
                **self._fields(job.eta_seconds),
            )

    def show_metric(self, point: MetricPoint) -> None:
        """Update one metric and the step it was recorded at; the ETA follows the steps' pace since then."""
        self._metrics[point.name] = point.value
        if self._progress is None:
            return
        task = self._progress.tasks[self._task]
        step = max(int(task.completed), point.step)
        fields = self._fields(None)
        fields["eta"] = task.fields.get("eta", "–")
        # The stream sends the job (with the server's ETA) only when its status changes: between those,
        # the ETA is the remaining steps at the pace seen since the job was last shown running.
        now = time.monotonic()
        if self._running and self._rate_start is not None:
            started, first_step = self._rate_start
            if step > first_step and now > started:
                fields["eta"] = _duration((self._max_steps - step) * (now - started) / (step - first_step))
        self._progress.update(self._task, completed=step, **fields)

    def show_event(self, event: Event) -> None:
        """Print one event above the bar."""
        self.log(f"{event.time:%H:%M:%S} {event.type}: {event.message}")

    def log(self, text: str) -> None:
        """Print a line above the bar."""
        (self._progress.console if self._progress is not None else self.console).print(text, highlight=False)

    def __enter__(self) -> JobProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

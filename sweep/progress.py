"""What a person watching a sweep sees: a live progress bar with ETA and per-cell counts, or plain lines.

On a terminal, a rich `Live` display shows the trials done out of the total, the time left (estimated from
training steps, so running trials count with their progress) and one row per cell: seeds done, running,
and the labels so far, each undecided count with its reasons (`undecided 2 (sink 1, focus 1)`). Every
finished trial also prints one line above it, and so does a trial that Tune retries from its checkpoint
after its worker died. Without a terminal (a log file, CI, a notebook) only the lines are printed.

The display belongs to the driver process, not to Ray: Tune pickles its callbacks into the sweep's state,
so the callback (`sweep.callbacks.MlflowTrialCallback`) only forwards the trial list to whichever display
the driver opened (`SweepProgress` as a context manager). Everything shown is recomputed from that list,
so a resumed sweep counts the trials its previous driver finished.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sweep.kinds import reasons_text
from sweep.registry import get_trainer
from sweep.trainable import trial_cell, trial_overrides, trial_title
from trainers.outcome import ENDED_LABELS

LABEL_COLUMNS = ENDED_LABELS  # normal, reversed, undecided, failed
MAX_CELL_ROWS = 16  # a sampled search has a cell per trial: show the first ones and a count

_active: SweepProgress | None = None


def make_console() -> Console:
    """The driver's console: the terminal's width, or wide enough for cell names in a log file."""
    probe = Console(highlight=False)
    return probe if probe.is_terminal else Console(highlight=False, width=160)


def update(trials: list) -> None:
    """Redraw the open display (if any) from Tune's list of trials."""
    if _active is not None:
        _active.update(trials)


def started(trial: Any) -> None:
    """Print one line for a trial that just started (only without a live display, which shows it)."""
    if _active is not None and _active._live is None:
        _active.console.print(f"started {trial_title(trial.config, trial.trial_id)}")


def finished(trial: Any, label: str) -> None:
    """Print one line for a trial that just ended."""
    if _active is not None:
        _active.finished(trial, label)


def retried(trial: Any, what: str) -> None:
    """Print one line for a trial that Tune runs again from its last checkpoint (`what` happened to it)."""
    if _active is not None:
        _active.console.print(f"{trial_title(trial.config, trial.trial_id)}: {what}", soft_wrap=True)


def _label(trial: Any) -> str | None:
    """A trial's final label, or None while it has none (pending, running)."""
    if trial.status == "ERROR":
        return "failed"
    outcome = (trial.last_result or {}).get("outcome")
    return outcome.get("label") if trial.status == "TERMINATED" and isinstance(outcome, dict) else None


def _reason(trial: Any) -> str | None:
    """Why an ended trial is undecided (`UNDECIDED_REASONS` of `trainers.detector.verdict`), if it says."""
    outcome = (trial.last_result or {}).get("outcome")
    return outcome.get("reason") if isinstance(outcome, dict) else None


class SweepProgress:
    """The live view of one sweep (a context manager that installs itself as the display)."""

    def __init__(self, total: int, trainer: str, console: Console | None = None):
        self.total = total
        self.trainer = get_trainer(trainer)
        self.console = console or make_console()
        self.live = self.console.is_terminal and not self.console.is_jupyter
        self._steps: dict[str, int] = {}  # trial id -> its training steps (for the ETA)
        self._ended: dict[str, str] = {}  # trial id -> label, told before Tune marks the trial terminated
        self._reasons: dict[str, str] = {}  # trial id -> why it is undecided
        self._counts: Counter[str] = Counter()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[done]}/{task.total:.0f} trials, {task.fields[running]} running"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            # Trials end minutes apart: estimate the speed over the last ten minutes, not the default 30 s.
            speed_estimate_period=600.0,
        )
        self._task = self._progress.add_task("sweep", total=total, done=0, running=0)
        self._cells = Table()
        self._live: Live | None = None

    def __enter__(self) -> SweepProgress:
        global _active
        _active = self
        if self.live:
            self._live = Live(self._view(), console=self.console, refresh_per_second=2)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = None
        if self._live is not None:
            self._live.stop()

    def _steps_of(self, trial: Any) -> int:
        if trial.trial_id not in self._steps:
            config = self.trainer.build_config(trial_overrides(trial.config, trial.trial_id))
            self._steps[trial.trial_id] = max(1, self.trainer.total_steps(config))
        return self._steps[trial.trial_id]

    def update(self, trials: list) -> None:
        cells: dict[str, Counter[str]] = {}
        completed, running = 0.0, 0
        for trial in trials:
            counts = cells.setdefault(trial_cell(trial.config), Counter())
            counts["trials"] += 1
            label = self._ended.get(trial.trial_id) or _label(trial)
            if label is not None:
                counts[label] += 1
                reason = self._reasons.get(trial.trial_id) or _reason(trial)
                if label == "undecided" and reason:
                    counts[f"undecided_{reason}"] += 1
                counts["done"] += 1
                completed += 1
            elif trial.status == "RUNNING":
                counts["running"] += 1
                running += 1
                step = (trial.last_result or {}).get("step", 0)
                completed += min(step / self._steps_of(trial), 0.99)
        done = sum(counts["done"] for counts in cells.values())
        keys = {
            key for c in cells.values() for key in c if key in LABEL_COLUMNS or key.startswith("undecided_")
        }
        self._counts = Counter({key: sum(c[key] for c in cells.values()) for key in keys})
        self._progress.update(self._task, completed=completed, done=done, running=running)
        self._cells = self._cell_table(cells)
        if self._live is not None:
            self._live.update(self._view())

    def _cell_table(self, cells: dict[str, Counter[str]]) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("cell", overflow="fold", max_width=60)
        for name in ("seeds done", "running", *LABEL_COLUMNS):
            table.add_column(name, justify="right")
        for cell, counts in list(cells.items())[:MAX_CELL_ROWS]:
            done = f"{counts['done']}/{counts['trials']}"
            table.add_row(
                cell, done, str(counts["running"]), *(_count(counts, label) for label in LABEL_COLUMNS)
            )
        if len(cells) > MAX_CELL_ROWS:
            table.add_row(f"... {len(cells) - MAX_CELL_ROWS} more cells")
        return table

    def _view(self) -> Group:
        return Group(self._progress.get_renderable(), self._cells)

    def finished(self, trial: Any, label: str) -> None:
        seconds = (trial.last_result or {}).get("trial_seconds")
        took = f" ({seconds:.0f} s)" if isinstance(seconds, int | float) else ""
        reason = _reason(trial) if label == "undecided" else None
        self._ended[trial.trial_id] = label
        self._counts[label] += 1
        if reason:
            self._reasons[trial.trial_id] = reason
            self._counts[f"undecided_{reason}"] += 1
        done = sum(self._counts[name] for name in LABEL_COLUMNS)
        tally = "  ".join(
            f"{name} {_count(self._counts, name)}" for name in LABEL_COLUMNS if self._counts[name]
        )
        said = f"{label} ({reason})" if reason else label
        self.console.print(
            f"{trial_title(trial.config, trial.trial_id)} -> {said}{took}   [{done}/{self.total}]  {tally}"
        )


def _count(counts: Counter[str], label: str) -> str:
    """A label's count, an undecided one with its reasons: `2 (sink 1, focus 1)`."""
    why = reasons_text(counts) if label == "undecided" else ""
    return f"{counts[label]} ({why})" if why else str(counts[label])

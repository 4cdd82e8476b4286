"""A sweep from start to end, in stages: resolve -> parent run -> tuner -> fit -> finish.

Each stage takes and extends one `Sweep` context. `resolve` decides where the sweep lives and whether it is
new or resumed (nothing written yet); `open_parent_run` writes the state file and the parent run with the
sweep's design; `make_tuner` builds or restores Ray Tune's Tuner; `fit` runs the trials under the live
progress view; `finish` records any trial end the callbacks missed, writes the incidence statistics to the
parent run and turns the trials' fate into the exit code.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweep import exit_codes
from sweep.design import ARTIFACT, SweepDesign
from sweep.exit_codes import Exit
from sweep.space import SpaceFile, trial_specs
from sweep.state import (
    HEARTBEAT_SECONDS,
    STATE_FILE,
    StateError,
    SweepState,
    find_resumable,
    new_state,
    write_state,
)
from sweep.tracking import (
    ENDED_STATUSES,
    Tracker,
    absolute_uri,
    default_tracking_uri,
    get_or_create_experiment,
    source_tags,
    ui_hint,
    uncommitted_diff,
)


class SweepRefused(Exception):
    """The sweep cannot start or resume; `str()` is the one line to show. Exit code BAD_INPUT."""


@dataclass
class Sweep:
    """One sweep as the driver runs it: filled in stage by stage."""

    args: argparse.Namespace
    space: SpaceFile
    sweep_dir: Path
    state: SweepState
    resumed: bool
    design: SweepDesign
    tracker: Tracker | None = None
    client: MlflowClient | None = None
    parent_run_id: str = ""
    started: float = field(default_factory=time.perf_counter)
    earlier_wall_seconds: float = 0.0  # the parts before this one (a resumed sweep)

    @property
    def sweep_id(self) -> str:
        return self.sweep_dir.name

    def wall_seconds(self) -> float:
        """Wall time of all the sweep's parts so far."""
        return self.earlier_wall_seconds + time.perf_counter() - self.started


# -- stage 1: resolve ----------------------------------------------------------------------------------------
def resolve(args: argparse.Namespace, space: SpaceFile) -> Sweep:
    """Where the sweep lives and what it runs; SweepRefused when a resume has nothing sound to continue."""
    root = Path(args.storage).resolve()
    uri = absolute_uri(args.tracking_uri or space.mlflow.tracking_uri or default_tracking_uri())
    if args.resume:
        try:
            sweep_dir, state, skipped = find_resumable(root, space.name, args.resume)
        except StateError as exc:
            raise SweepRefused(f"cannot resume: {exc}") from None
        for problem in skipped:
            print(f"warning: skipping {problem}", file=sys.stderr)
        state = state.model_copy(update={"status": "running", "parts": state.parts + 1})
    else:
        sweep_dir = root / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        state = new_state(sweep_dir, space.name, uri, space.mlflow.experiment, Path(args.space))
    design = SweepDesign.from_space(space, sweep_dir.name)
    earlier = state.wall_seconds or 0.0  # the parts before this one
    return Sweep(args, space, sweep_dir, state, bool(args.resume), design, earlier_wall_seconds=earlier)


# -- stage 2: the state file and the parent run --------------------------------------------------------------
def open_parent_run(sweep: Sweep) -> None:
    """Write the state, then create (or find again) the parent run with the design; a resumed sweep must
    run the design it started with."""
    import mlflow

    write_state(sweep.sweep_dir, sweep.state)  # before the parent run: a kill from here on can resume
    mlflow.set_tracking_uri(sweep.state.tracking_uri)  # also exported to Ray workers started after this
    client = MlflowClient(sweep.state.tracking_uri)
    experiment_id = get_or_create_experiment(client, sweep.state.experiment)
    trial_source = source_tags(sweep.space.trainer_spec.run.partition(":")[0])
    sweep.tracker = Tracker(sweep.state.tracking_uri, experiment_id, sweep.sweep_id, trial_source)
    sweep.client = client
    if sweep.state.parent_run_id is not None:
        try:
            client.get_run(sweep.state.parent_run_id)
        except MlflowException:
            raise SweepRefused(
                f"cannot resume {sweep.sweep_id}: its parent run {sweep.state.parent_run_id} is not in "
                f"{sweep.state.tracking_uri}"
            ) from None
        recorded = _recorded_design(client, sweep.state.parent_run_id)
        if recorded is not None and not recorded.same_experiment(sweep.design):
            raise SweepRefused(
                f"cannot resume {sweep.sweep_id}: {sweep.args.space} no longer describes its trials "
                f"(compare with the parent run's {ARTIFACT}); resume with the file it started with"
            )
    parent_run_id = sweep.tracker.start_parent(  # a resumed sweep's parent run is found and set RUNNING
        {**sweep.design.params(), **{f"base.{key}": value for key, value in sweep.space.base.items()}},
        sweep.space.description or "",
        tags=source_tags("sweep.run"),
    )
    if sweep.state.parent_run_id is None:  # a new parent run: its design and the space file as written
        client.log_text(parent_run_id, sweep.design.to_json(), ARTIFACT)
        client.log_text(parent_run_id, sweep.space.text, f"space/{Path(sweep.args.space).name}")
        for path, text in sweep.space.base_files:  # the files its base came from, so the record is whole
            client.log_text(parent_run_id, text, f"space/base_from/{path.name}")
        diff = uncommitted_diff(__file__)
        if diff:
            client.log_text(parent_run_id, diff + "\n", "source/uncommitted.diff")
    sweep.parent_run_id = parent_run_id
    sweep.state = sweep.state.model_copy(update={"parent_run_id": parent_run_id, "status": "running"})
    write_state(sweep.sweep_dir, sweep.state)


def _recorded_design(client: MlflowClient, parent_run_id: str) -> SweepDesign | None:
    from sweep.results import read_design

    design = read_design(client, client.get_run(parent_run_id))
    return None if design.legacy else design


def resume_line(sweep: Sweep) -> str:
    """One line saying what a resumed sweep continues: trials done, started and left to continue, and not
    started (from the trials' MLflow runs)."""
    children = sweep.tracker.children_statuses(sweep.parent_run_id)
    done = sum(status in ENDED_STATUSES for status in children)
    started = len(children) - done
    total = sweep.design.n_trials
    return (
        f"resuming {sweep.sweep_id}: {done} of {total} trials done, {started} to continue, "
        f"{max(total - len(children), 0)} not started"
    )


# -- stage 3: the tuner --------------------------------------------------------------------------------------
def make_tuner(sweep: Sweep):
    """Restore the interrupted sweep's Tuner, or build a new one (also for a sweep killed before Tune wrote
    its state, or while it wrote it); None when nothing is left to run."""
    from sweep.callbacks import MlflowTrialCallback, TrialRecorder
    from sweep.tuner import (
        PRINT_TRIAL_ERRORS,
        build_tuner,
        init_ray,
        restore_tuner,
        set_aside_unreadable_tune_state,
    )

    # Every evaluation checkpoints; Tune's warning about the resulting (small) state snapshots is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's own console output (a configuration box, result paths) would talk over the progress view;
    # its classic reporter at verbose=0 is silent.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault(PRINT_TRIAL_ERRORS, "0")  # one line per failure instead (sweep.callbacks)
    init_ray(sweep.args.address or os.environ.get("RAY_ADDRESS"), sweep.args.num_cpus)
    specs, samples = trial_specs(sweep.space), None
    if sweep.resumed:
        lost = set_aside_unreadable_tune_state(sweep.sweep_dir)
        if lost is None:
            tuner = restore_tuner(sweep.space, sweep.sweep_dir)
            if tuner is not None:
                return tuner
        else:
            specs, samples = _unfinished_trials(sweep, specs, lost)
            if not (specs or samples):
                return None  # every trial had ended before the kill: nothing is left for Tune to run
    recorder = TrialRecorder(sweep.tracker, sweep.parent_run_id, sweep.space.trainer)
    callbacks = [MlflowTrialCallback(recorder)]
    return build_tuner(sweep.space, specs, sweep.sweep_dir, callbacks, _optuna_storage(sweep), samples)


def _unfinished_trials(sweep: Sweep, specs: list, lost: Path) -> tuple[list, int | None]:
    """(specs, optuna samples) still to run when Tune's own state was lost, read from the trials' MLflow
    runs: the ended ones are kept as they are, the others start afresh (their checkpoints were Tune's)."""
    done = sweep.tracker.finished_trial_keys(sweep.parent_run_id)
    print(
        f"warning: Ray Tune's state {lost.name.removesuffix('.unreadable')} was cut short (a driver killed "
        f"while writing it; set aside as {lost.name}): continuing from the trials' MLflow runs, "
        f"{len(done)} ended trials kept, the others started afresh",
        file=sys.stderr,
    )
    samples = max(sweep.space.samples - len(done), 0) if sweep.space.search == "optuna" else None
    return [spec for spec in specs if spec.trial_key not in done], samples


def _optuna_storage(sweep: Sweep) -> str:
    uri = sweep.state.tracking_uri
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).with_name('optuna.db')}"
    return f"sqlite:///{sweep.sweep_dir / 'optuna.db'}"


# -- stage 4: fit --------------------------------------------------------------------------------------------
def fit(sweep: Sweep, tuner):
    from sweep.progress import SweepProgress
    from sweep.tuner import quiet_tune

    sweep.started = time.perf_counter()
    if tuner is None:
        return []
    with heartbeat(sweep), SweepProgress(sweep.design.n_trials, sweep.space.trainer), quiet_tune():
        return tuner.fit()


@contextmanager
def heartbeat(sweep: Sweep) -> Iterator[None]:
    """Rewrite the state's wall time every `HEARTBEAT_SECONDS` while the trials run, and once more at the
    end: an interrupted or killed sweep's next part adds its own time to it."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            now = sweep.state.model_copy(update={"wall_seconds": sweep.wall_seconds()})
            write_state(sweep.sweep_dir, now)

    writer = threading.Thread(target=beat, name="flipsweep-state-heartbeat", daemon=True)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()
        sweep.state = sweep.state.model_copy(update={"wall_seconds": sweep.wall_seconds()})
        write_state(sweep.sweep_dir, sweep.state)


# -- stage 5: finish -----------------------------------------------------------------------------------------
def finish(sweep: Sweep, results) -> Exit:
    """Record any trial end the callbacks missed, then write incidence statistics to the parent run.

    A resumed sweep's wall time is that of all its parts, but its trials' time is not (a trial cut short
    repeats its steps since the last checkpoint), so its efficiency is not reported."""
    from sweep.callbacks import TrialRecorder, logging_seconds
    from sweep.outputs import write_incidence_files
    from sweep.progress import make_console
    from sweep.results import load_sweep
    from sweep.stats import incidence_table
    from sweep.tuner import concurrent_slots

    wall = sweep.wall_seconds()
    recorder = TrialRecorder(sweep.tracker, sweep.parent_run_id, sweep.space.trainer)
    unfinished, trial_seconds = 0, 0.0
    for result in results:
        trial_id = result.metrics.get("trial_id", "")
        if result.error is not None:
            recorder.record_failure(result.config, trial_id, str(result.error))
        elif result.metrics.get("final") and result.checkpoint is not None:
            recorder.record_completion(result.config, trial_id, result.checkpoint.path)
            trial_seconds += result.metrics.get("trial_seconds", 0.0)
        else:
            unfinished += 1
    if unfinished:
        sweep.tracker.interrupt(sweep.parent_run_id)
        write_state(sweep.sweep_dir, sweep.state.model_copy(update={"status": "interrupted"}))
        print(f"interrupted: {unfinished} trials unfinished; continue with --resume", file=sys.stderr)
        return Exit.INTERRUPTED

    record = load_sweep(sweep.client, parent_run_id=sweep.parent_run_id)
    report = record.incidence()
    slots = concurrent_slots(sweep.space, len(record.trials))
    labels = record.trials["label"]
    n_failed, n_finished = int((labels == "failed").sum()), int((labels != "failed").sum())
    metrics = {
        **report.metrics(),
        "sweep/wall_seconds": wall,
        "sweep/parts": sweep.state.parts,
        "sweep/slots": slots,
        "sweep/efficiency": trial_seconds / (wall * slots) if wall > 0 and not sweep.resumed else math.nan,
        "sweep/mlflow_seconds_per_trial": logging_seconds() / max(1, n_finished),
    }
    sweep.tracker.log_metrics(sweep.parent_run_id, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        write_incidence_files(report, Path(tmp), record.trials)
        sweep.client.log_artifacts(sweep.parent_run_id, tmp)
    sweep.tracker.finish(sweep.parent_run_id, "FINISHED")
    write_state(sweep.sweep_dir, sweep.state.model_copy(update={"status": "complete", "wall_seconds": wall}))

    console = make_console()
    console.print(incidence_table(report))
    efficiency = "n/a (resumed)" if sweep.resumed else f"{metrics['sweep/efficiency']:.0%}"
    console.print(
        f"efficiency {efficiency} on {slots} slots, "
        f"MLflow {metrics['sweep/mlflow_seconds_per_trial']:.2f} s/trial, wall {wall:.0f} s"
        + (f" in {sweep.state.parts} parts" if sweep.state.parts > 1 else "")
    )
    if n_failed:
        print(f"{n_failed} of {len(labels)} trials failed (see their runs' error.txt)", file=sys.stderr)
    return exit_codes.for_labels(list(labels))


def run_sweep(args: argparse.Namespace, space: SpaceFile) -> Exit:
    """All stages; exit code per `Exit`."""
    from sweep.tracking import TrackingUnavailable, check_reachable

    # MLflow prints a "View run" link at every finished run; the driver prints the experiment's link once.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        sweep = resolve(args, space)
        check_reachable(sweep.state.tracking_uri)
        open_parent_run(sweep)
    except SweepRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return Exit.BAD_INPUT
    except TrackingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return Exit.UNAVAILABLE
    if sweep.resumed:
        print(resume_line(sweep))
    else:
        print(
            f"sweep {sweep.sweep_id}: {sweep.design.n_trials} trials, MLflow {sweep.state.tracking_uri} "
            f"(parent run {sweep.parent_run_id}), state {sweep.sweep_dir / STATE_FILE}"
        )
    print(f"MLflow UI: {ui_hint(sweep.state.tracking_uri, sweep.tracker.experiment_id)}")
    from sweep.tuner import RestoreFailed

    try:
        tuner = make_tuner(sweep)
    except RestoreFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return Exit.BAD_INPUT
    results = fit(sweep, tuner)
    return finish(sweep, results)

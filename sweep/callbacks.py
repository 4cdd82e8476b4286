"""Driver-side Tune callbacks: one MLflow child run per trial, and the live progress view's events.

All MLflow traffic happens here, in the driver, in batches; trials stay plain functions. A trial's curves are
logged as it reports, its cross-attention image of every evaluation as an image keyed by step (from the
checkpoints, which reach shared storage also on a cluster), and at its end its `TrialOutcome` under the
outcome's fixed names. Recording a trial's end is idempotent (`record_completion`, `record_failure`), so the
driver can re-run it after a resume for trials whose end was reached but not yet recorded when the previous
driver died.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray import tune

from sweep import progress
from sweep.registry import get_trainer
from sweep.tracking import ENDED_STATUSES, Tracker
from sweep.trainable import trial_cell, trial_key, trial_overrides, trial_title
from trainers.config import flatten
from trainers.outcome import ATTENTION_MAP_KEY, TrialOutcome, attention_maps

ARTIFACTS_SKIP = ("state.pt",)
_NOT_CURVES = {"step", "final", "done", "training_iteration", "time_this_iter_s", "time_total_s", "timestamp"}
_NOT_CURVES |= {"pid", "outcome", "label"}


_logging = {"seconds": 0.0}  # MLflow time of every recorder in this driver process, restored ones included


@contextlib.contextmanager
def _timed() -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        _logging["seconds"] += time.perf_counter() - started


def logging_seconds() -> float:
    """Seconds this driver spent writing trials to MLflow (the sweep's logging overhead)."""
    return _logging["seconds"]


class TrialRecorder:
    """Creates, fills and closes the child run of each trial; its time counts in `logging_seconds`."""

    def __init__(self, tracker: Tracker, parent_run_id: str, trainer: str):
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.trainer = trainer
        self.run_ids: dict[str, str] = {}
        self.last_steps: dict[str, int] = {}
        self.image_steps: dict[str, set[int]] = {}

    def run_id(self, config: dict[str, Any], trial_id: str) -> str:
        key = trial_key(config, trial_id)
        if key not in self.run_ids:
            overrides = trial_overrides(config, trial_id)
            trainer = get_trainer(self.trainer)
            trial_config = trainer.build_config(overrides)
            kind = trainer.run_kind(trial_config)
            tags = {
                "cell": trial_cell(config),
                "kind": kind,
                "control": str(kind == "control"),
                "seed": overrides["seed"],
                "ray_trial_id": trial_id,
            }
            name = trial_title(config, trial_id)[:250]
            params = {**flatten(trial_config), "kind": kind}
            run_id = self.tracker.child(self.parent_run_id, key, name, params, tags)
            self.run_ids[key] = run_id
            self.last_steps[key] = self.tracker.last_step(run_id)
            self.image_steps[key] = self.tracker.image_steps(run_id, ATTENTION_MAP_KEY)
        return self.run_ids[key]

    def record_result(self, config: dict[str, Any], trial_id: str, result: dict[str, Any]) -> None:
        with _timed():
            run_id = self.run_id(config, trial_id)
            key = trial_key(config, trial_id)
            step = int(result.get("step", 0))
            if not result.get("final") and step > self.last_steps.get(key, -1):
                curves = {k: v for k, v in result.items() if k not in _NOT_CURVES and "/" not in k}
                self.tracker.log_metrics(run_id, curves, step=step)
                self.last_steps[key] = step

    def record_attention_maps(self, config: dict[str, Any], trial_id: str, checkpoint_dir: str) -> None:
        """Log the checkpoint's cross-attention images whose steps this run does not have yet."""
        with _timed():
            run_id = self.run_id(config, trial_id)
            logged = self.image_steps[trial_key(config, trial_id)]
            for step, path in sorted(attention_maps(checkpoint_dir).items()):
                if step not in logged:
                    self.tracker.log_image(run_id, path, ATTENTION_MAP_KEY, step)
                    logged.add(step)

    def record_completion(self, config: dict[str, Any], trial_id: str, checkpoint_dir: str) -> str:
        """Close the child run from the final checkpoint's outcome; returns the label."""
        run_id = self.run_id(config, trial_id)
        if self.tracker.status(run_id) in ENDED_STATUSES:
            return self.tracker.client.get_run(run_id).data.tags.get("label", "")
        self.record_attention_maps(config, trial_id, checkpoint_dir)
        with _timed():
            outcome = TrialOutcome.read(checkpoint_dir)
            self.tracker.set_tags(run_id, outcome.mlflow_tags())
            self.tracker.log_metrics(run_id, outcome.mlflow_metrics())  # summary values: step 0, bar charts
            self.tracker.log_artifacts(run_id, Path(checkpoint_dir), skip=ARTIFACTS_SKIP)
            self.tracker.finish(run_id, "FINISHED")
        return outcome.label

    def record_failure(self, config: dict[str, Any], trial_id: str, error: str) -> None:
        with _timed():
            run_id = self.run_id(config, trial_id)
            if self.tracker.status(run_id) in ENDED_STATUSES:
                return
            trainer = get_trainer(self.trainer)
            kind = trainer.run_kind(trainer.build_config(trial_overrides(config, trial_id)))
            outcome = TrialOutcome.failed(error, kind=kind)
            self.tracker.set_tags(run_id, outcome.mlflow_tags())
            self.tracker.log_metrics(run_id, outcome.mlflow_metrics())
            self.tracker.client.log_text(run_id, error, "error.txt")
            self.tracker.finish(run_id, "FAILED")


def trial_error_text(trial) -> str:
    error = trial.get_error()
    if error:
        return str(error)
    if trial.error_file and Path(trial.error_file).exists():
        return Path(trial.error_file).read_text()
    return "trial failed without an error message"


def retry_line(trial) -> str:
    """What the screen says of a trial that failed and that Tune runs again from its last checkpoint: what
    happened (its worker process died: killed by the OS, out of memory; or the trial's own error), what the
    sweep does, and where the details are (Tune appends each failure to the trial's error.txt)."""
    text = trial_error_text(trial)
    if any(sign in text for sign in _WORKER_DIED):
        what = "its worker process died (killed by the OS, or out of memory)"
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        what = f"it failed ({lines[-1][:200] if lines else 'no error message'})"
    retry = f"retry {trial.num_failures}" + (f" of {trial.max_failures}" if trial.max_failures >= 0 else "")
    where = f"; details in {Path(trial.path) / 'error.txt'}" if trial.path else ""
    return f"{what}; running it again from its last checkpoint ({retry}){where}"


_WORKER_DIED = ("ActorDiedError", "RayActorError", "worker process has died")  # Ray's words for a lost worker


class MlflowTrialCallback(tune.Callback):
    """Feeds Tune's trial events into a `TrialRecorder`, and tells the live progress view."""

    def __init__(self, recorder: TrialRecorder):
        self.recorder = recorder

    def on_trial_start(self, iteration, trials, trial, **info):
        self.recorder.run_id(trial.config, trial.trial_id)
        progress.started(trial)
        progress.update(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.recorder.record_result(trial.config, trial.trial_id, result)
        progress.update(trials)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self.recorder.record_attention_maps(trial.config, trial.trial_id, checkpoint.path)

    def on_trial_complete(self, iteration, trials, trial, **info):
        checkpoint = trial.checkpoint
        if checkpoint is not None:
            label = self.recorder.record_completion(trial.config, trial.trial_id, checkpoint.path)
            progress.finished(trial, label)
        progress.update(trials)

    def on_trial_recover(self, iteration, trials, trial, **info):
        progress.retried(trial, retry_line(trial))
        progress.update(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.recorder.record_failure(trial.config, trial.trial_id, trial_error_text(trial))
        progress.finished(trial, "failed")
        progress.update(trials)

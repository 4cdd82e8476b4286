"""Driver-side Tune callbacks: MLflow child runs per trial, and the live progress view.

All MLflow traffic happens here, in the driver, in batches; trials stay plain functions. Recording a trial's
end is idempotent (`record_completion`, `record_failure`), so the driver can re-run it after a resume for
trials whose end was reached but not yet recorded when the previous driver died.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray import tune
from rich.console import Console

from sweep.registry import get_trainer
from sweep.tracking import Tracker
from sweep.trainable import trial_key, trial_overrides
from trainers.config import flatten

ARTIFACTS_SKIP = ("state.pt",)
TERMINAL = ("FINISHED", "FAILED", "KILLED")


class TrialRecorder:
    """Creates, fills and closes the child run of each trial. Counts its own time (the logging overhead)."""

    def __init__(self, tracker: Tracker, parent_run_id: str, trainer: str):
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.trainer = trainer
        self.run_ids: dict[str, str] = {}
        self.last_steps: dict[str, int] = {}
        self.seconds = 0.0

    def run_id(self, config: dict[str, Any], trial_id: str) -> str:
        key = trial_key(config, trial_id)
        if key not in self.run_ids:
            overrides = trial_overrides(config, trial_id)
            spec = config.get("spec") or {}
            trial_config = get_trainer(self.trainer).build_config(overrides)
            params = flatten(trial_config)
            tags = {
                "cell": spec.get("cell", _sampled_cell(config)),
                "control": str(trial_config.model.control != "none"),
                "seed": overrides["seed"],
                "ray_trial_id": trial_id,
            }
            run_id = self.tracker.child(self.parent_run_id, key, f"{key} {tags['cell']}"[:250], params, tags)
            self.run_ids[key] = run_id
            self.last_steps[key] = self.tracker.last_step(run_id)
        return self.run_ids[key]

    def record_result(self, config: dict[str, Any], trial_id: str, result: dict[str, Any]) -> None:
        started = time.perf_counter()
        run_id = self.run_id(config, trial_id)
        key = trial_key(config, trial_id)
        step = int(result.get("step", 0))
        if not result.get("final") and step > self.last_steps.get(key, -1):
            self.tracker.log_metrics(run_id, _curve_metrics(result), step=step)
            self.last_steps[key] = step
        self.seconds += time.perf_counter() - started

    def record_completion(self, config: dict[str, Any], trial_id: str, checkpoint_dir: str | None) -> str:
        """Close the child run from the final checkpoint; returns the label."""
        started = time.perf_counter()
        run_id = self.run_id(config, trial_id)
        if self.tracker.status(run_id) in TERMINAL:
            return self.tracker.client.get_run(run_id).data.tags.get("label", "")
        result = json.loads((Path(checkpoint_dir) / "result.json").read_text())
        verdict = result["verdict"]
        tags = {
            "label": verdict["label"],
            "flip_block": verdict.get("flip_block") if verdict.get("flip_block") is not None else "",
            "time_to_flip": verdict.get("time_to_flip") if verdict.get("time_to_flip") is not None else "",
            "shifted": verdict.get("shifted", False),
            "early_stopped": result.get("early_stopped", False),
        }
        self.tracker.set_tags(run_id, tags)
        final = {f"final/{k}": v for k, v in result["final"].items() if not isinstance(v, list | dict)}
        # The run's summary figures (backward phase, flip mechanism) as verdict/* metrics.
        final.update(
            {
                f"verdict/{k}": v
                for k, v in verdict.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "step"
            }
        )
        final.update(
            {
                "final/steps_done": result["steps_done"],
                "final/detector_share": result["detector_share"],
                "final/steps_per_second": result["steps_per_second"],
            }
        )
        self.tracker.log_metrics(run_id, final, step=result["steps_done"])
        self.tracker.log_artifacts(run_id, Path(checkpoint_dir), skip=ARTIFACTS_SKIP)
        self.tracker.finish(run_id, "FINISHED")
        self.seconds += time.perf_counter() - started
        return verdict["label"]

    def record_failure(self, config: dict[str, Any], trial_id: str, error: str) -> None:
        started = time.perf_counter()
        run_id = self.run_id(config, trial_id)
        if self.tracker.status(run_id) not in TERMINAL:
            last_line = next(
                (ln for ln in reversed(error.strip().splitlines()) if ln.strip()), "unknown error"
            )
            self.tracker.set_tags(run_id, {"label": "failed", "error": last_line[:500]})
            self.tracker.client.log_text(run_id, error, "error.txt")
            self.tracker.finish(run_id, "FAILED")
        self.seconds += time.perf_counter() - started


def _sampled_cell(config: dict[str, Any]) -> str:
    sampled = config.get("sampled") or {}
    return ",".join(f"{k}={_short(v)}" for k, v in sampled.items()) or "sampled"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


_SKIP = {
    "step",
    "final",
    "done",
    "training_iteration",
    "time_this_iter_s",
    "time_total_s",
    "timestamp",
    "pid",
}


def _curve_metrics(result: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in result.items() if k not in _SKIP and "/" not in k and not k.startswith("verdict_")
    }


def trial_error_text(trial) -> str:
    error = trial.get_error()
    if error:
        return str(error)
    if trial.error_file and Path(trial.error_file).exists():
        return Path(trial.error_file).read_text()
    return "trial failed without an error message"


class MlflowTrialCallback(tune.Callback):
    """Feeds Tune's trial events into a `TrialRecorder`."""

    def __init__(self, recorder: TrialRecorder):
        self.recorder = recorder

    def on_trial_start(self, iteration, trials, trial, **info):
        self.recorder.run_id(trial.config, trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.recorder.record_result(trial.config, trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        checkpoint = trial.checkpoint
        if checkpoint is not None:
            self.recorder.record_completion(trial.config, trial.trial_id, checkpoint.path)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.recorder.record_failure(trial.config, trial.trial_id, trial_error_text(trial))


class ProgressView(tune.Callback):
    """One line per trial event: done / running / failed out of the total, and the labels so far."""

    def __init__(self, total: int | None, already: dict[str, int] | None = None):
        self.total = total
        self.running = 0
        self.labels: dict[str, int] = dict(already or {})
        self._console: Console | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_console": None}

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console(highlight=False)
        return self._console

    def _line(self, event: str) -> None:
        done = sum(self.labels.values())
        total = f"/{self.total}" if self.total else ""
        counts = "  ".join(f"{k} {v}" for k, v in sorted(self.labels.items()))
        self.console.print(f"[{done}{total} done, {self.running} running] {event}   {counts}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running += 1
        self._line(f"started {trial_key(trial.config, trial.trial_id)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running = max(0, self.running - 1)
        label = (trial.last_result or {}).get("verdict_label") or "unknown"
        self.labels[label] = self.labels.get(label, 0) + 1
        seconds = (trial.last_result or {}).get("trial_seconds", float("nan"))
        self._line(f"{trial_key(trial.config, trial.trial_id)} -> {label} ({seconds:.0f} s)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running = max(0, self.running - 1)
        self.labels["failed"] = self.labels.get("failed", 0) + 1
        self._line(f"{trial_key(trial.config, trial.trial_id)} -> FAILED")

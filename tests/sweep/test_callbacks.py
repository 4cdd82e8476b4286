"""`sweep.callbacks` without Ray: Tune's trial events, as plain objects, recorded into a temporary sqlite
MLflow store; a trial's end is recorded once, however often the driver reports it (after a resume, say)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from rich.console import Console

from sweep import callbacks
from sweep.callbacks import MlflowTrialCallback, TrialRecorder, trial_error_text
from sweep.progress import SweepProgress
from sweep.tracking import Tracker
from tests.conftest import TINY
from trainers.outcome import ATTENTION_MAPS, TrialCost, TrialOutcome

TRAINER = "conformer_aed"


def tune_config(key: str = "c000-r00", cell: str = "plain", seed: int = 0, **overrides) -> dict:
    """A trial's config as the driver hands it to Tune (`run` and one expanded trial spec)."""
    spec = {"trial_key": key, "cell": cell, "overrides": {**TINY, **overrides, "seed": seed}}
    return {"run": "trainers.train:run_trial", "spec": spec}


def tune_trial(config: dict, trial_id: str = "abc_00000", **fields) -> SimpleNamespace:
    """The parts of a Tune trial that the callback reads."""
    return SimpleNamespace(config=config, trial_id=trial_id, status="RUNNING", last_result={}, **fields)


def checkpoint(folder: Path, label: str = "normal", steps: tuple[int, ...] = (20, 40)) -> Path:
    """A trial's final checkpoint folder: its outcome (result.json), a cross-attention image per evaluation,
    and the model state, which is never uploaded."""
    folder.mkdir(parents=True)
    cost = TrialCost(train_seconds=3.0, detector_seconds=1.0, detector_share=0.25, steps_per_second=10.0)
    verdict = {"label": label, "step": steps[-1], "attention_direction": 0.9, "shifted": False}
    outcome = TrialOutcome.from_verdict(
        verdict, kind="natural", steps_done=40, early_stopped=False, cost=cost
    )
    (folder / "result.json").write_text(json.dumps({"outcome": outcome.to_dict(), "final": {}}))
    (folder / "state.pt").write_bytes(b"weights")
    (folder / ATTENTION_MAPS).mkdir()
    for step in steps:
        Image.new("L", (8, 8)).save(folder / ATTENTION_MAPS / f"step_{step:06d}.png")
    return folder


@pytest.fixture
def recorder(tracking_uri, experiment) -> TrialRecorder:
    tracker = Tracker(tracking_uri, experiment, "t-1")
    return TrialRecorder(tracker, tracker.start_parent({}), TRAINER)


def test_the_first_sight_of_a_trial_opens_its_child_run_once(recorder):
    config = tune_config(cell="model.ffn_scale=1.0", **{"model.ffn_scale": 1.0})
    run_id = recorder.run_id(config, "abc_00000")
    assert recorder.run_id(config, "abc_00000") == run_id
    run = recorder.tracker.client.get_run(run_id)
    assert run.info.run_name == "model.ffn_scale=1.0 seed 0 (c000-r00)"
    tags = run.data.tags
    assert (tags["cell"], tags["control"], tags["seed"], tags["ray_trial_id"]) == (
        "model.ffn_scale=1.0",
        "False",
        "0",
        "abc_00000",
    )
    assert run.data.params["model.ffn_scale"] == "1.0" and run.data.params["train.steps"] == "40"
    control = recorder.run_id(tune_config("c001-r00", "control", **{"model.control": "reverse_encoder"}), "x")
    assert recorder.tracker.client.get_run(control).data.tags["control"] == "True"


def test_curves_are_logged_per_new_step_and_a_resumed_recorder_goes_on_from_the_last(recorder):
    config = tune_config()
    recorder.record_result(config, "t", {"step": 20, "train_loss": 2.0, "label": "normal", "a/b": 1.0})
    recorder.record_result(config, "t", {"step": 20, "train_loss": 9.0})  # a repeated report: not again
    recorder.record_result(config, "t", {"step": 40, "train_loss": 1.0, "time_total_s": 3.0})
    recorder.record_result(config, "t", {"step": 40, "final": 1, "train_loss": 1.0})  # the trial's last
    client, run_id = recorder.tracker.client, recorder.run_id(config, "t")
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train_loss")] == [
        (20, 2.0),
        (40, 1.0),
    ]
    assert set(client.get_run(run_id).data.metrics) == {"train_loss"}  # Tune's own keys and "a/b" are not
    resumed = TrialRecorder(recorder.tracker, recorder.parent_run_id, TRAINER)  # a new driver, same run
    resumed.record_result(config, "t", {"step": 40, "train_loss": 5.0})
    resumed.record_result(config, "t", {"step": 60, "train_loss": 0.5})
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [20, 40, 60]


def test_each_attention_map_is_logged_once(recorder, tmp_path):
    config = tune_config()
    early = checkpoint(tmp_path / "early", steps=(20,))
    recorder.record_attention_maps(config, "t", str(early))
    recorder.record_attention_maps(config, "t", str(checkpoint(tmp_path / "late")))
    resumed = TrialRecorder(recorder.tracker, recorder.parent_run_id, TRAINER)
    resumed.record_attention_maps(config, "t", str(checkpoint(tmp_path / "again")))
    run_id = recorder.run_id(config, "t")
    images = [a.path for a in recorder.tracker.client.list_artifacts(run_id, "images")]
    assert sorted(recorder.tracker.image_steps(run_id, "attention")) == [20, 40]
    assert len([path for path in images if path.endswith(".png")]) == 2


def test_a_completed_trial_is_recorded_once_from_its_checkpoint(recorder, tmp_path):
    config = tune_config()
    folder = checkpoint(tmp_path / "final", label="normal")
    seconds = callbacks.logging_seconds()
    assert recorder.record_completion(config, "t", str(folder)) == "normal"
    assert callbacks.logging_seconds() > seconds  # the sweep's MLflow time counts it
    client, run_id = recorder.tracker.client, recorder.run_id(config, "t")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert (run.data.tags["label"], run.data.tags["kind"]) == ("normal", "natural")
    assert run.data.metrics["verdict/decided"] == 1.0 and run.data.metrics["verdict/reversed"] == 0.0
    # The checkpoint's files but the model state; its attention maps as images keyed by step.
    assert {a.path for a in client.list_artifacts(run_id)} == {"result.json", "images"}
    assert recorder.tracker.image_steps(run_id, "attention") == {20, 40}
    # The driver looks again (its last look, or a resumed driver): the label, and nothing logged twice.
    again = TrialRecorder(recorder.tracker, recorder.parent_run_id, TRAINER)
    assert again.record_completion(config, "t", str(folder)) == "normal"
    again.record_failure(config, "t", "Traceback ...\nRuntimeError: late")  # an ended run stays ended
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert len(client.get_metric_history(run_id, "verdict/decided")) == 1


def test_a_failed_trial_is_recorded_once_with_its_error(recorder):
    config = tune_config("c002-r00", "control", **{"model.control": "reverse_encoder"})
    error = "Traceback (most recent call last):\n  ...\nFloatingPointError: training loss became nan\n"
    recorder.record_failure(config, "t", error)
    recorder.record_failure(config, "t", error)
    client, run_id = recorder.tracker.client, recorder.run_id(config, "t")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["label"] == "failed" and run.data.tags["kind"] == "control"
    assert run.data.tags["error"] == "FloatingPointError: training loss became nan"
    assert len(client.get_metric_history(run_id, "verdict/decided")) == 1
    assert (
        client.download_artifacts(run_id, "error.txt")
        and "Traceback" in Path(client.download_artifacts(run_id, "error.txt")).read_text()
    )


def test_the_error_text_of_a_trial(tmp_path):
    assert trial_error_text(SimpleNamespace(get_error=lambda: "RayTaskError: boom")) == "RayTaskError: boom"
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback ...\nValueError: from the file")
    from_file = SimpleNamespace(get_error=lambda: None, error_file=str(error_file))
    assert trial_error_text(from_file).endswith("ValueError: from the file")
    silent = SimpleNamespace(get_error=lambda: None, error_file=None)
    assert trial_error_text(silent) == "trial failed without an error message"


def test_tune_events_reach_mlflow_and_the_progress_view(recorder, tmp_path):
    callback = MlflowTrialCallback(recorder)
    ok = tune_trial(tune_config("c000-r00"), "ok_00000")
    bad = tune_trial(tune_config("c000-r01", seed=1), "bad_00001", error_file=None)
    bad.get_error = lambda: "Traceback ...\nValueError: boom"
    out = io.StringIO()
    with SweepProgress(2, TRAINER, console=Console(file=out, width=150, color_system=None)):
        for trial in (ok, bad):
            callback.on_trial_start(0, [ok, bad], trial)
        callback.on_trial_result(0, [ok, bad], ok, {"step": 20, "train_loss": 1.0})
        ok.checkpoint = SimpleNamespace(path=str(checkpoint(tmp_path / "ok", label="reversed")))
        callback.on_checkpoint(0, [ok, bad], ok, ok.checkpoint)
        callback.on_trial_complete(0, [ok, bad], ok)
        callback.on_trial_error(0, [ok, bad], bad)
    client = recorder.tracker.client
    statuses = {
        client.get_run(recorder.run_id(trial.config, trial.trial_id)).info.status: trial
        for trial in (ok, bad)
    }
    assert set(statuses) == {"FINISHED", "FAILED"} and statuses["FAILED"] is bad
    lines = out.getvalue().splitlines()
    assert "started plain seed 0 (c000-r00)" in lines and "started plain seed 1 (c000-r01)" in lines
    assert any(line.startswith("plain seed 0 (c000-r00) -> reversed") for line in lines)
    assert any(line.startswith("plain seed 1 (c000-r01) -> failed") for line in lines)

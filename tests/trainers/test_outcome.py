"""The trial outcome: written once by the trial, read back from result.json and from MLflow's names alike."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from trainers.config import build_config
from trainers.detector.verdict import REASON_CODES, Evaluation, transient
from trainers.outcome import TrialCost, TrialOutcome, attention_maps
from trainers.reported import VERDICT_FIGURES, is_verdict_figure


def outcome(label: str = "reversed", **figures: float) -> TrialOutcome:
    verdict = {
        "label": label,
        "flip_block": 3 if label == "reversed" else None,
        "time_to_flip": 250 if label == "reversed" else None,
        "shifted": False,
        "step": 400,
        "attention_direction": -0.9 if label == "reversed" else 0.9,
        "backward_evaluations": 4,
        "backward_first_step": 150,
        "mhsa_ffn_ratio_before": math.nan,  # not computable: absent, never NaN
        **figures,
    }
    cost = TrialCost(train_seconds=10.0, detector_seconds=2.0, detector_share=1 / 6, steps_per_second=40.0)
    return TrialOutcome.from_verdict(verdict, kind="natural", steps_done=400, early_stopped=False, cost=cost)


def test_outcome_round_trips_through_result_json_and_mlflow(tmp_path):
    written = outcome()
    assert written.figures == {
        "attention_direction": -0.9,
        "backward_evaluations": 4.0,
        "backward_first_step": 150.0,
    }
    (tmp_path / "result.json").write_text(json.dumps({"outcome": written.to_dict(), "final": {}}))
    assert TrialOutcome.read(tmp_path) == written
    # What the recorder logs, read back as the loader does (a run's tags, its latest metrics, its status).
    tags = written.mlflow_tags()
    assert tags["kind"] == "natural" and "reason" not in tags
    back = TrialOutcome.from_mlflow(tags, written.mlflow_metrics(), "FINISHED")
    assert back == written.model_copy(update={"cost": back.cost}) and back.cost.train_seconds == 10.0
    assert (back.flip_block, back.time_to_flip, back.steps_done) == (3, 250, 400)


def test_the_mean_of_verdict_reversed_is_the_rate_among_decided_runs():
    runs = [outcome("reversed"), outcome("normal"), outcome("normal"), outcome("undecided")]
    runs.append(TrialOutcome.failed("Traceback ...\nFloatingPointError: training loss became nan"))
    logged = [run.mlflow_metrics() for run in runs]
    reversed_ = [m["verdict/reversed"] for m in logged if "verdict/reversed" in m]
    assert reversed_ == [1.0, 0.0, 0.0]  # the UI's mean over a group: 1/3, like sweep.stats
    assert [m["verdict/decided"] for m in logged] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert "verdict/attention_direction" not in logged[-1]  # a failed trial has no figures


def test_failed_outcome_reads_back_with_its_error():
    failed = TrialOutcome.failed(
        "Traceback (most recent call last):\n  ...\nValueError: boom\n\n", kind="control"
    )
    assert (failed.label, failed.failure, failed.decided) == ("failed", "ValueError: boom", False)
    back = TrialOutcome.from_mlflow(failed.mlflow_tags(), failed.mlflow_metrics(), "FAILED")
    assert back == failed and back.control
    assert TrialOutcome.from_mlflow({"kind": "induced"}, {}, "RUNNING").label == "incomplete"
    assert TrialOutcome.from_mlflow({"control": "True"}, {}, "RUNNING").kind == "control"  # before kinds


def test_an_undecided_outcome_says_why_everywhere():
    undecided = outcome("undecided", reason="sink")
    assert undecided.reason == "sink" and "reason" not in undecided.figures
    assert undecided.mlflow_tags()["reason"] == "sink"
    assert undecided.mlflow_metrics()["verdict/reason_code"] == REASON_CODES["sink"] > 0
    assert outcome("normal").mlflow_metrics()["verdict/reason_code"] == 0.0
    assert undecided.row()["reason"] == "sink"
    back = TrialOutcome.from_mlflow(undecided.mlflow_tags(), undecided.mlflow_metrics(), "FINISHED")
    assert back.reason == "sink"
    with pytest.raises(ValidationError, match="unknown reason"):
        TrialOutcome(label="undecided", reason="bored")


def test_figures_may_not_take_the_fixed_names():
    with pytest.raises(ValidationError, match="taken"):
        TrialOutcome(label="normal", figures={"reversed": 1.0})


def test_a_run_recorded_before_the_outcome_existed_is_read():
    # Older runs: shifted as a tag, no verdict/decided, flip figures among the verdict/* metrics.
    tags = {"label": "reversed", "shifted": "True", "control": "False"}
    metrics = {"verdict/flip_block": 5.0, "verdict/time_to_flip": 900.0, "final/steps_done": 1000.0}
    old = TrialOutcome.from_mlflow(tags, {**metrics, "verdict/attention_direction": -0.8}, "FINISHED")
    assert (old.label, old.shifted, old.flip_block, old.time_to_flip, old.steps_done) == (
        "reversed",
        True,
        5,
        900,
        1000,
    )
    assert old.figures == {"attention_direction": -0.8}


def test_a_trial_writes_its_outcome_with_declared_figures_and_an_attention_map_per_evaluation(tiny_trial):
    written = TrialOutcome.read(tiny_trial.out_dir)
    assert written.to_dict() == tiny_trial.result["outcome"]
    assert written.steps_done == 40 and written.label in ("normal", "reversed", "undecided")
    assert written.undeclared_figures == []  # every verdict figure is named in trainers/reported.py
    assert {"attention_direction", "min_attention_direction", "reversed_encoder_evaluations"} <= set(
        written.figures
    )
    maps = attention_maps(tiny_trial.out_dir)
    assert sorted(maps) == [20, 40] and all(path.read_bytes()[:4] == b"\x89PNG" for path in maps.values())


def test_verdict_figure_declarations():
    assert is_verdict_figure("backward_evaluations") and not is_verdict_figure("backward_evaluation")
    assert len(set(VERDICT_FIGURES)) == len(VERDICT_FIGURES)


def _evaluation(step: int, attention: float, g0: float, last: float) -> Evaluation:
    return Evaluation(
        step=step,
        loss=1.0,
        accuracy=0.2,  # too early to decide: these are near misses, not labels
        attention_direction=attention,
        attention_peak=0.05,
        block_directions=[g0, 0.0, last],
    )


def test_reversed_encoder_evaluations_need_all_three_directions():
    cfg = build_config({}).detector
    history = [
        _evaluation(50, -0.9, +0.8, -0.7),  # a reversed encoder
        _evaluation(100, -0.9, +0.1, -0.7),  # the encoder input does not run forwards: the trap
        _evaluation(150, -0.9, +0.8, -0.2),  # the last block does not read backwards
        _evaluation(200, +0.9, +0.8, -0.7),
        _evaluation(250, -0.6, +0.7, -0.5),
    ]
    phase = transient(history, cfg)
    assert phase["reversed_encoder_evaluations"] == 2  # steps 50 and 250 only
    assert (phase["backward_evaluations"], phase["backward_first_step"], phase["backward_last_step"]) == (
        4,
        50,
        250,
    )
    strict = build_config({"detector.min_direction": 0.6}).detector
    assert transient(history, strict)["reversed_encoder_evaluations"] == 1  # only step 50

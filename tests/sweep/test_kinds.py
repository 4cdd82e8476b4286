"""Run kinds on the sweep side (`sweep.kinds`): a cell's kind read off its config, recorded in the design, and
never pooled across kinds; each cell compared within its family, with that family's baseline."""

from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from rich.console import Console

from sweep.design import SweepDesign
from sweep.kinds import family_baselines, family_of, reasons_text
from sweep.progress import SweepProgress
from sweep.space import load_space, trial_specs, trial_table
from sweep.stats import incidence_report, logistic_regression, prepare, time_to_flip_curve
from tests.conftest import TINY

FIRST = {"model.forced_attention_at": "first", "model.forced_attention_steps": 20}
CELLS = [
    {"name": "baseline"},
    {"name": "ctc", "model.ctc_layers": [1]},
    {"name": "first-20", **FIRST},
    {"name": "first-20-ctc", **FIRST, "model.ctc_layers": [1]},
    {"name": "control", "model.control": "reverse_encoder", "model.control_block": 2},
]
KINDS = {"baseline": "natural", "ctc": "mitigation", "first-20": "induced", "first-20-ctc": "induced"}
KINDS["control"] = "control"


def write_space(folder: Path, **fields) -> Path:
    space = {"name": "kinds", "trainer": "conformer_aed", "base": dict(TINY), "cells": CELLS, "replicates": 2}
    path = folder / "kinds.yaml"
    path.write_text(yaml.safe_dump({**space, **fields}, sort_keys=False))
    return path


def run(cell: str, label: str, reason: str | None = None, **fields) -> dict:
    """One trial row as `sweep.results.trials_frame` gives it (kind and reason from the outcome)."""
    return {
        "cell": cell,
        "kind": KINDS[cell],
        "control": KINDS[cell] == "control",
        "label": label,
        "reason": reason,
        "steps": 300,
        "time_to_flip": 150.0 if label == "reversed" else math.nan,
        "attention_direction": -0.8 if label == "reversed" else 0.9,
        "model.ctc_layers": "[1]" if "ctc" in cell else "[]",
        **fields,
    }


def hand_made() -> pd.DataFrame:
    """Natural and mitigation runs that never reverse, one reversed induced run among six, two controls."""
    rows = [run("baseline", "normal") for _ in range(4)]
    rows += [run("ctc", "normal"), run("ctc", "normal"), run("ctc", "undecided", "sink")]
    rows += [run("first-20", "reversed"), run("first-20", "normal"), run("first-20", "normal")]
    rows += [run("first-20-ctc", "normal") for _ in range(3)]
    rows += [run("first-20-ctc", "undecided", "focus"), run("first-20-ctc", "undecided", "sink")]
    rows += [run("control", "reversed"), run("control", "reversed")]
    frame = pd.DataFrame(rows)
    return frame.assign(trial_key=[f"t{i:02d}" for i in range(len(frame))], seed=range(len(frame)))


# -- the must-show: one reversed induced run leaves the natural rate at 0 ------------------------------------
def test_one_reversed_induced_run_leaves_the_natural_rate_at_zero():
    report = incidence_report(hand_made(), ["model.ctc_layers"], "baseline")
    assert report.counts["reversed"] == 0 and report.counts["decided"] == 4
    assert report.overall["rate"] == 0.0  # natural runs only
    assert report.rate_of("mitigation")["rate"] == 0.0
    assert report.rate_of("induced")["rate"] == pytest.approx(1 / 6)  # its own rate: 1 of 6 decided
    metrics = report.metrics()
    assert metrics["overall/rate"] == 0.0 and metrics["overall/n_reversed"] == 0
    assert metrics["induced/rate"] == pytest.approx(1 / 6) and metrics["induced/n_decided"] == 6
    assert metrics["mitigation/n"] == 3 and metrics["control/n"] == 2
    assert "Natural runs: 4 (0 reversed" in report.summary_text()
    assert "Induced runs: 8 (1 reversed, 5 normal, 2 undecided (focus 1, sink 1)" in report.summary_text()


def test_cells_compare_within_their_family_and_never_natural_against_induced():
    report = incidence_report(hand_made(), ["model.ctc_layers"], "baseline")
    assert report.baselines == {"natural": "baseline", "induced": "first-20"}
    pairs = set(zip(report.fisher["cell"], report.fisher["baseline"], strict=True))
    assert pairs == {("ctc", "baseline"), ("first-20-ctc", "first-20")}
    # the regression of each family: the natural family's six decided runs hold no induced run
    natural = report.regression_summary.split("\n\n")[0]
    assert "natural and mitigation decided runs" in natural and "Decided runs: 6 (0 reversed" in natural
    induced = logistic_regression(hand_made(), ["model.ctc_layers"], family="induced")[1]
    assert "Decided runs: 6 (1 reversed, 5 normal)" in induced
    marginals = report.marginals.set_index(["family", "factor", "level"])
    assert marginals.loc[("natural", "model.ctc_layers", "[]"), "n"] == 4
    assert marginals.loc[("induced", "model.ctc_layers", "[]"), "reversed"] == 1
    # time to flip: the natural runs' curve has no event, the induced runs' has their one flip
    curves = report.time_to_flip[report.time_to_flip["factor"] == "all"].groupby("runs")["events"].sum()
    assert curves["natural"] == 0 and curves["induced"] == 1 and "control" not in curves
    assert time_to_flip_curve(hand_made())["events"].sum() == 0  # natural runs unless told


def test_a_declared_induced_baseline_anchors_its_family_and_the_natural_one_stays_first():
    report = incidence_report(hand_made(), ["model.ctc_layers"], "first-20-ctc")
    assert report.baselines == {"natural": "baseline", "induced": "first-20-ctc"}
    cells = [("ctc", "mitigation"), ("first", "induced"), ("plain", "natural"), ("c", "control")]
    assert family_baselines(cells, None) == {"natural": "plain", "induced": "first"}
    assert family_baselines(cells[:2], None) == {"natural": "ctc", "induced": "first"}  # no natural cell
    assert [family_of(kind) for kind in ("natural", "mitigation", "induced", "control")] == [
        "natural",
        "natural",
        "induced",
        None,
    ]


def test_the_cell_table_counts_each_undecided_reason_and_names_the_kind():
    cells = incidence_report(hand_made(), ["model.ctc_layers"]).cells.set_index("cell")
    assert cells["kind"].to_dict() == KINDS
    assert cells.loc[
        "first-20-ctc", ["undecided_focus", "undecided_sink", "undecided_accuracy"]
    ].tolist() == [
        1,
        1,
        0,
    ]
    assert reasons_text(cells.loc["ctc"].to_dict()) == "sink 1"
    assert reasons_text({}) == ""


def test_a_frame_recorded_before_kinds_reads_controls_as_control_and_the_rest_as_natural():
    old = hand_made().drop(columns=["kind", "reason"])
    prepared = prepare(old)
    assert set(prepared.loc[prepared["control"], "kind"]) == {"control"}
    assert set(prepared.loc[~prepared["control"], "kind"]) == {"natural"}
    assert prepared["reason"].isna().all()


# -- the space, the dry run and the design ------------------------------------------------------------------
def test_the_kind_of_each_cell_comes_from_its_settled_config(tmp_path):
    space = load_space(write_space(tmp_path))
    assert {cell.name: cell.kind for cell in space.grid_cells} == KINDS
    assert [cell.name for cell in space.grid_cells if cell.control] == ["control"]
    table = trial_table(trial_specs(space)).splitlines()
    assert table[0].split() == ["trial", "cell", "seed", "kind"]
    assert table[-1] == "10 trials in 5 cells (1 natural, 1 mitigation, 2 induced, 1 control)"
    assert table[5].split() == ["c002-r00", "first-20", "0", "induced"]


def test_the_design_records_cells_by_kind_and_each_familys_baseline(tmp_path):
    design = SweepDesign.from_space(load_space(write_space(tmp_path)), "kinds-1")
    assert design.kinds == KINDS and design.baseline == "baseline"
    assert design.baselines == {"natural": "baseline", "induced": "first-20"}
    params = design.params()
    assert params["induced_cells"] == ["first-20", "first-20-ctc"] and params["mitigation_cells"] == ["ctc"]
    assert (params["baseline.natural"], params["baseline.induced"]) == ("baseline", "first-20")
    # a design.json written before kinds: each cell's kind read off its settings again
    recorded = json.loads(design.to_json())
    for cell in recorded["cells"]:
        del cell["kind"]
    assert SweepDesign.from_json(json.dumps(recorded)).kinds == KINDS
    induced_only = SweepDesign.from_space(load_space(write_space(tmp_path, cells=CELLS[2:4])), "kinds-2")
    assert induced_only.baseline == "first-20" and induced_only.baselines == {"induced": "first-20"}


# -- the progress view --------------------------------------------------------------------------------------
def test_the_progress_view_says_why_runs_are_undecided():
    def trial(trial_id: str, reason: str | None) -> SimpleNamespace:
        spec = {"trial_key": trial_id, "cell": "first-20", "overrides": {**TINY, "seed": 0}}
        outcome = {"label": "undecided" if reason else "normal", "reason": reason}
        result = {"step": 40, "trial_seconds": 3.0, "outcome": outcome}
        return SimpleNamespace(
            trial_id=trial_id, config={"spec": spec}, status="TERMINATED", last_result=result
        )

    trials = [trial("c002-r00", "sink"), trial("c002-r01", "focus"), trial("c002-r02", "sink")]
    trials.append(trial("c002-r03", None))
    out = io.StringIO()
    with SweepProgress(4, "conformer_aed", console=Console(file=out, width=200, color_system=None)) as view:
        for done in trials:
            view.finished(done, done.last_result["outcome"]["label"])
        view.update(trials)
        undecided = [list(column.cells) for column in view._cells.columns if column.header == "undecided"]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("first-20 seed 0 (c002-r00) -> undecided (sink) (3 s)")
    assert lines[2].endswith("undecided 3 (sink 2, focus 1)")
    assert lines[3].endswith("normal 1  undecided 3 (sink 2, focus 1)")
    assert undecided == [["3 (sink 2, focus 1)"]]


def test_incidence_csv_carries_each_cells_kind_and_undecided_reasons(tmp_path):
    from sweep.outputs import write_incidence_files

    report = incidence_report(hand_made(), ["model.ctc_layers"], "baseline")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plot that fails would warn
        write_incidence_files(report, tmp_path)
    cells = pd.read_csv(tmp_path / "incidence.csv").set_index("cell")
    assert cells["kind"].to_dict() == KINDS
    assert cells.loc["first-20-ctc", "undecided_sink"] == 1 and cells.loc["ctc", "undecided_sink"] == 1
    fisher = pd.read_csv(tmp_path / "fisher.csv")
    assert fisher[["cell", "kind", "baseline"]].values.tolist() == [
        ["ctc", "mitigation", "baseline"],
        ["first-20-ctc", "induced", "first-20"],
    ]

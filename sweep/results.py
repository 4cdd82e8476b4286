"""Read a sweep back from MLflow: its design and one row per trial (for the driver, report and notebook).

`load_sweep` is the one loader: the parent run's `SweepDesign` (factors, cells, baseline) and a trials frame
whose outcome columns come from `TrialOutcome.from_mlflow`, i.e. exactly what each trial recorded. Its
`incidence()` is the incidence report every reader shows.

Trials frame columns: trial_key, cell, seed, status, run_id, then the outcome's row (label, control, steps
(done), flip_block, time_to_flip, shifted, early_stopped, failure, one column per verdict figure, e.g.
attention_direction, backward_evaluations), then one column per design factor (values parsed back from
MLflow's strings).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweep.design import ARTIFACT, SweepDesign
from sweep.stats import IncidenceReport, incidence_report
from sweep.tracking import PARENT_TAG, ROLE_TAG, SWEEP_TAG, TRIAL_TAG, search_all
from trainers.outcome import TrialOutcome
from trainers.reported import VERDICT_FIGURES

IDENTITY = ["trial_key", "cell", "seed", "status", "run_id"]
OUTCOME = ["label", "control", "steps", "flip_block", "time_to_flip", "shifted", "early_stopped", "failure"]
COLUMNS = IDENTITY + OUTCOME + list(VERDICT_FIGURES)


def _value(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def find_parent(client: MlflowClient, experiment_name: str, sweep_id: str | None = None) -> Run:
    """The parent run of a sweep (the newest one when `sweep_id` is None); LookupError if there is none."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise LookupError(f"no MLflow experiment named {experiment_name!r}")
    query = f"tags.`{ROLE_TAG}` = 'parent'"
    if sweep_id:
        query += f" and tags.`{SWEEP_TAG}` = '{sweep_id}'"
    runs = client.search_runs([experiment.experiment_id], query, order_by=["start_time DESC"], max_results=1)
    if not runs:
        raise LookupError(
            f"no flipsweep parent run in {experiment_name!r}" + (f" for {sweep_id}" if sweep_id else "")
        )
    return runs[0]


def read_design(client: MlflowClient, parent: Run) -> SweepDesign:
    """The design recorded on a parent run; for a run that predates design.json, what its params tell."""
    sweep_id = parent.data.tags.get(SWEEP_TAG, parent.info.run_id)
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
        try:
            path = client.download_artifacts(parent.info.run_id, ARTIFACT, tmp)
        except (MlflowException, OSError):
            return SweepDesign.from_legacy_params(sweep_id, parent.data.params)
        return SweepDesign.from_json(Path(path).read_text())


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a download progress bar even for one small file; keep it off the reader's screen."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def trials_frame(client: MlflowClient, parent_run_id: str, factors: list[str]) -> pd.DataFrame:
    """Every child run of the parent as a row (see the module docstring), sorted by trial key."""
    parent = client.get_run(parent_run_id)
    runs = search_all(client, parent.info.experiment_id, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    rows = []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        outcome = TrialOutcome.from_mlflow(tags, run.data.metrics, run.info.status)
        row = {
            "trial_key": tags.get(TRIAL_TAG),
            "cell": tags.get("cell"),
            "seed": _value(params.get("seed")),
            "status": run.info.status,
            "run_id": run.info.run_id,
            **outcome.row(),
        }
        for factor in factors:
            value = _value(params.get(factor))
            row[factor] = str(value) if isinstance(value, list | dict) else value
        rows.append(row)
    extra = sorted({key for row in rows for key in row} - set(COLUMNS) - set(factors))  # undeclared figures
    frame = pd.DataFrame(rows, columns=COLUMNS + extra + [f for f in factors if f not in COLUMNS])
    for figure in VERDICT_FIGURES:
        frame[figure] = pd.to_numeric(frame[figure]).astype(float)
    return frame.sort_values("trial_key", ignore_index=True)


@dataclass
class SweepRecord:
    """A sweep as recorded in MLflow: its parent run, its design and its trials."""

    parent: Run
    design: SweepDesign
    trials: pd.DataFrame

    @property
    def name(self) -> str:
        return self.parent.data.tags.get("mlflow.runName", self.parent.info.run_id)

    def incidence(self) -> IncidenceReport:
        """The incidence report over the design's factors against the design's baseline."""
        report = incidence_report(self.trials, self.design.factors, self.design.baseline)
        if self.design.legacy:
            report.notes.append(
                "this sweep predates recorded designs (design.json): factors from its params, no baseline"
            )
        return report


def load_sweep(
    client: MlflowClient,
    experiment: str | None = None,
    sweep_id: str | None = None,
    parent_run_id: str | None = None,
) -> SweepRecord:
    """A sweep by parent run id, or by experiment name and sweep id (the newest sweep when None)."""
    if parent_run_id is not None:
        parent = client.get_run(parent_run_id)
    elif experiment is not None:
        parent = find_parent(client, experiment, sweep_id)
    else:
        raise ValueError("load_sweep needs an experiment name or a parent run id")
    design = read_design(client, parent)
    return SweepRecord(parent, design, trials_frame(client, parent.info.run_id, design.factors))

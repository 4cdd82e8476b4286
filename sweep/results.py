"""Load a sweep's trials from MLflow into one pandas frame (used by the driver and the notebook).

One row per child run: trial_key, cell, control, label (normal / reversed / undecided / failed), seed, steps,
time_to_flip, attention_direction, reversal_score, status, run_id, and one column per factor
(dotted config key, values parsed back from MLflow's strings).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

from sweep.tracking import PARENT_TAG, ROLE_TAG, SWEEP_TAG, TRIAL_TAG

COLUMNS = [
    "trial_key",
    "cell",
    "control",
    "label",
    "seed",
    "steps",
    "time_to_flip",
    "flip_block",
    "attention_direction",
    "reversal_score",
    "status",
    "run_id",
]


def _value(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _number(text: str | None) -> float:
    value = _value(text)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def _search_all(client: MlflowClient, experiment_id: str, query: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_parent(client: MlflowClient, experiment_name: str, sweep_id: str | None = None):
    """The parent run of a sweep (the newest one when `sweep_id` is None)."""
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


def trials_frame(client: MlflowClient, parent_run_id: str, factors: list[str] | None = None) -> pd.DataFrame:
    """Every child run of the parent as a row; `factors` default to the parent's `factor.*` params."""
    parent = client.get_run(parent_run_id)
    if factors is None:
        factors = [k.removeprefix("factor.") for k in parent.data.params if k.startswith("factor.")]
    runs = _search_all(client, parent.info.experiment_id, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    rows = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        status = run.info.status
        label = "failed" if status == "FAILED" else tags.get("label", "incomplete")
        row = {
            "trial_key": tags.get(TRIAL_TAG),
            "cell": tags.get("cell"),
            "control": tags.get("control") == "True",
            "label": label,
            "seed": _value(params.get("seed")),
            "steps": _value(params.get("train.steps")),
            "time_to_flip": _number(tags.get("time_to_flip")),
            "flip_block": _number(tags.get("flip_block")),
            "attention_direction": metrics.get(
                "final/attention_direction", metrics.get("attention_direction")
            ),
            "reversal_score": metrics.get("final/reversal_score", metrics.get("reversal_score")),
            "status": status,
            "run_id": run.info.run_id,
        }
        for factor in factors:
            value = _value(params.get(factor))
            row[factor] = str(value) if isinstance(value, list | dict) else value
        rows.append(row)
    frame = pd.DataFrame(rows, columns=COLUMNS + [f for f in factors if f not in COLUMNS])
    return frame.sort_values("trial_key", ignore_index=True)

"""MLflow bookkeeping: one parent run per sweep, one nested child run per trial.

Every write goes through `MlflowClient.log_batch` with only the keys we want (Ray's MLflowLoggerCallback logs
each result key with its own call and is ~10x slower). Child runs are found again by the tags
`flipsweep.sweep_id` + `flipsweep.trial_key`, so a resumed sweep keeps each trial's run: no duplicates, none
left RUNNING.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

SWEEP_TAG = "flipsweep.sweep_id"
TRIAL_TAG = "flipsweep.trial_key"
ROLE_TAG = "flipsweep.role"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LENGTH = 6000
BATCH_LIMIT = 100  # MLflow's limit on params per log_batch call


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached; raised before any training starts."""


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail fast with a readable message when an HTTP tracking server does not answer."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status != 200:
                raise TrackingUnavailable(
                    f"tracking server {tracking_uri} answered {response.status} on /health"
                )
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnavailable(f"tracking server {tracking_uri} is unreachable: {reason}") from None


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another sweep created it a moment ago
        return client.get_experiment_by_name(name).experiment_id


def _params(values: dict[str, Any]) -> list[Param]:
    return [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in values.items()]


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
    return out


class Tracker:
    """Thin, picklable wrapper around an MlflowClient for one sweep."""

    def __init__(self, tracking_uri: str, experiment_id: str, sweep_id: str):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.sweep_id = sweep_id
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks into tuner.pkl
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # -- runs ----------------------------------------------------------------------------------------------
    def _find(self, **tags: str):
        query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=2)
        return runs[0] if runs else None

    def start_parent(self, params: dict[str, Any], description: str = "") -> str:
        existing = self._find(**{SWEEP_TAG: self.sweep_id, ROLE_TAG: "parent"})
        if existing is not None:
            self.client.update_run(existing.info.run_id, status="RUNNING")
            return existing.info.run_id
        tags = {SWEEP_TAG: self.sweep_id, ROLE_TAG: "parent", "mlflow.note.content": description}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.sweep_id)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def child(
        self, parent_run_id: str, trial_key: str, run_name: str, params: dict[str, Any], tags: dict
    ) -> str:
        """The trial's child run, created on first sight and reused after a resume."""
        existing = self._find(**{SWEEP_TAG: self.sweep_id, TRIAL_TAG: trial_key})
        if existing is not None:
            if existing.info.status != "FINISHED":
                self.client.update_run(existing.info.run_id, status="RUNNING")
            return existing.info.run_id
        all_tags = {
            SWEEP_TAG: self.sweep_id,
            TRIAL_TAG: trial_key,
            ROLE_TAG: "trial",
            PARENT_TAG: parent_run_id,
            **{k: str(v) for k, v in tags.items()},
        }
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=run_name)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def last_step(self, run_id: str, key: str = "train_loss") -> int:
        history = self.client.get_metric_history(run_id, key)
        return max((m.step for m in history), default=-1)

    # -- writes ----------------------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = _params(params)
        for i in range(0, len(items), BATCH_LIMIT):
            self.client.log_batch(run_id, params=items[i : i + BATCH_LIMIT])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in _numeric(metrics).items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[i : i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in tags.items()])

    def log_artifacts(
        self, run_id: str, directory: Path, skip: tuple[str, ...] = (), subdir: str | None = None
    ):
        for path in sorted(Path(directory).iterdir()):
            if path.is_file() and path.name not in skip and not path.name.endswith(".tmp"):
                self.client.log_artifact(run_id, str(path), subdir)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def children(self, parent_run_id: str):
        """All child runs of a parent, as a pandas frame (params.*, metrics.*, tags.*)."""
        import mlflow

        return mlflow.search_runs(
            experiment_ids=[self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
            max_results=50000,
            output_format="pandas",
        )

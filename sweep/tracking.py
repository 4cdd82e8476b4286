"""MLflow bookkeeping: one parent run per sweep, one nested child run per trial.

Where each part of a sweep's MLflow record is written:

* here, `Tracker`: the runs themselves (create, find again after a resume, end), batched writes, the
  experiment's kind and the source tags of the code every run ran;
* `sweep.driver`: the parent run's contents: the design's params, `design.json`, the space files, the
  uncommitted diff, and at the end the incidence metrics and files (`sweep.stats`, `sweep.outputs`);
* `sweep.callbacks`: each trial's child run: its tags (cell, kind, seed), the trial config and kind as
  params, its curves as it reports, an attention image per evaluation, and its outcome at the end;
* `trainers.outcome.TrialOutcome`: the names of a child run's outcome (tags `label`, `kind`, `reason`,
  `error`; metrics `verdict/*`, `trial/*`), written by `mlflow_tags` / `mlflow_metrics` and read back by
  `from_mlflow` (`sweep.results`).

Every write goes through `MlflowClient.log_batch` with only the keys we want (Ray's MLflowLoggerCallback logs
each result key with its own call and is ~10x slower). Child runs are found again by the tags
`flipsweep.sweep_id` + `flipsweep.trial_key`, so a resumed sweep keeps each trial's run: no duplicates, none
left RUNNING. An interrupted sweep's parent and unfinished trials end KILLED until it is resumed.

The experiment is tagged as a model-training experiment (`mlflow.experimentKind`), so that the MLflow UI
opens it on its runs table and charts, and every run carries the code it ran: MLflow's source tags (entry
point, git commit, branch, remote) plus `flipsweep.git.dirty`; a parent run of uncommitted code also keeps
the diff (`source/uncommitted.diff`).
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

SWEEP_TAG = "flipsweep.sweep_id"
TRIAL_TAG = "flipsweep.trial_key"
ROLE_TAG = "flipsweep.role"
PARENT_TAG = "mlflow.parentRunId"
DIRTY_TAG = "flipsweep.git.dirty"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # the MLflow UI's "Machine learning" experiment kind
MAX_PARAM_LENGTH = 6000
# A trial whose run ended is not run again. An interrupted sweep marks its parent and its unfinished trials
# INTERRUPTED (MLflow's KILLED); `--resume` sets them RUNNING again and continues them.
ENDED_STATUSES = ("FINISHED", "FAILED")
INTERRUPTED = "KILLED"
BATCH_LIMIT = 100  # MLflow's limit on params per log_batch call


def default_tracking_uri() -> str:
    """sqlite file in the working directory, as an absolute URI (Ray trials run in other folders)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def absolute_uri(uri: str) -> str:
    """A relative sqlite URI made absolute (the driver and every Ray worker must open the same file)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """Where to look at an experiment in the MLflow UI, opened on its runs in the model-training view (the UI
    of MLflow 3 opens on GenAI pages unless told `workflowType=machine_learning`)."""
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"`mlflow ui --backend-store-uri {tracking_uri}`, then http://127.0.0.1:5000/{page}"


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
    """The experiment's id, created if need be, and marked as a model-training experiment."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except MlflowException:  # another sweep created it a moment ago
            experiment = client.get_experiment_by_name(name)
        else:
            return experiment_id
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def source_tags(module: str) -> dict[str, str]:
    """MLflow's source tags for code in `module` (found without importing it): the file, its git commit,
    branch and remote, and whether the working tree differs from that commit."""
    from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url

    path = importlib.util.find_spec(module).origin
    tags = {MLFLOW_SOURCE_NAME: path, MLFLOW_SOURCE_TYPE: "LOCAL"}
    try:
        import getpass

        tags[MLFLOW_USER] = getpass.getuser()
    except (KeyError, OSError):  # no user name in a container without a passwd entry
        pass
    found = {
        MLFLOW_GIT_COMMIT: get_git_commit(path),
        MLFLOW_GIT_BRANCH: get_git_branch(path),
        MLFLOW_GIT_REPO_URL: get_git_repo_url(path),
    }
    tags.update({key: value for key, value in found.items() if value})
    if found[MLFLOW_GIT_COMMIT]:
        tags[DIRTY_TAG] = str(bool(uncommitted_diff(path)) or _untracked(path)).lower()
    return tags


def _repo(path: str):
    import git

    return git.Repo(path, search_parent_directories=True)


def uncommitted_diff(path: str) -> str:
    """`git diff HEAD` of the repository holding `path` ("" when clean or not in a repository)."""
    try:
        return _repo(path).git.diff("HEAD")
    except Exception:  # noqa: BLE001 - no git, no repository: nothing to record
        return ""


def _untracked(path: str) -> bool:
    try:
        return bool(_repo(path).untracked_files)
    except Exception:  # noqa: BLE001
        return False


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


def search_all(client: MlflowClient, experiment_id: str, query: str) -> list:
    """Every run of the experiment matching `query`, page by page."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    """Every child (trial) run of a sweep's parent run."""
    return search_all(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")


class Tracker:
    """Thin, picklable wrapper around an MlflowClient for one sweep."""

    def __init__(self, tracking_uri: str, experiment_id: str, sweep_id: str, trial_tags: dict | None = None):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.sweep_id = sweep_id
        self.trial_tags = dict(trial_tags or {})  # on every child run: the trial code's source tags
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

    def start_parent(self, params: dict[str, Any], description: str = "", tags: dict | None = None) -> str:
        """The sweep's parent run, created with `params` and `tags`, or found again (and set RUNNING)."""
        existing = self._find(**{SWEEP_TAG: self.sweep_id, ROLE_TAG: "parent"})
        if existing is not None:
            self.client.update_run(existing.info.run_id, status="RUNNING")
            return existing.info.run_id
        tags = {
            **(tags or {}),
            SWEEP_TAG: self.sweep_id,
            ROLE_TAG: "parent",
            "mlflow.note.content": description,
        }
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.sweep_id)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def child(
        self, parent_run_id: str, trial_key: str, run_name: str, params: dict[str, Any], tags: dict
    ) -> str:
        """The trial's child run, created on first sight and reused after a resume (an ended run stays ended;
        an interrupted one runs again)."""
        existing = self._find(**{SWEEP_TAG: self.sweep_id, TRIAL_TAG: trial_key})
        if existing is not None:
            if existing.info.status not in ENDED_STATUSES:
                self.client.update_run(existing.info.run_id, status="RUNNING")
            return existing.info.run_id
        all_tags = {
            **self.trial_tags,
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

    def log_image(self, run_id: str, path: Path, key: str, step: int) -> None:
        """An image file logged under `key` at `step`: the MLflow UI shows it with a step slider."""
        from PIL import Image

        with Image.open(path) as image:
            self.client.log_image(run_id, image.convert("RGB"), key=key, step=step, synchronous=True)

    def image_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which an image under `key` was already logged (after a resume: not again)."""
        stem = key.replace("/", "~") + "+step+"
        names = (Path(a.path).name for a in self.client.list_artifacts(run_id, "images"))
        return {int(name[len(stem) :].split("+")[0]) for name in names if name.startswith(stem)}

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def interrupt(self, parent_run_id: str) -> None:
        """Mark an interrupted sweep: its unfinished trials' runs and its parent run end INTERRUPTED, so that
        the MLflow UI shows none of them running; a resume sets them RUNNING again."""
        for run in child_runs(self.client, self.experiment_id, parent_run_id):
            if run.info.status not in ENDED_STATUSES:
                self.finish(run.info.run_id, INTERRUPTED)
        self.finish(parent_run_id, INTERRUPTED)

    def finished_trial_keys(self, parent_run_id: str) -> set[str]:
        """The trial keys of a parent's child runs that ended (finished or failed)."""
        runs = child_runs(self.client, self.experiment_id, parent_run_id)
        return {run.data.tags[TRIAL_TAG] for run in runs if run.info.status in ENDED_STATUSES}

    def children_statuses(self, parent_run_id: str) -> list[str]:
        """The status of every child run of a parent."""
        return [run.info.status for run in child_runs(self.client, self.experiment_id, parent_run_id)]

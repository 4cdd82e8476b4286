"""What the report reads of each run, from MLflow or from a kept folder (`sweep.kept`), read once."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from sweep.kept import KeptRuns
from sweep.results import SweepRecord
from trainers.config import DetectorConfig
from trainers.detector.verdict import LABELS

# The detector's own default, for runs that did not log the key.
DEFAULT_MIN_DIRECTION = DetectorConfig.model_fields["min_direction"].default
DEFAULT_SINK_LIFT = DetectorConfig.model_fields["sink_lift"].default

ATTENTION_MAP = "attention.png"  # the trial's last cross-attention map, an artifact of its run


class RunReader:
    """What the report reads of each run: its metric curves, trial-config values and last attention map,
    each read once per report; from MLflow, or for the runs of kept folders (`sweep.kept`) from there."""

    def __init__(self, client: MlflowClient | None, kept: KeptRuns | None = None):
        self.client = client
        self.kept = kept or KeptRuns()
        self._cache: dict[tuple[str, str], pd.Series] = {}
        self._params: dict[str, dict[str, str]] = {}

    @classmethod
    def of(cls, client: MlflowClient | None, record: SweepRecord) -> RunReader:
        """A reader for the record's runs, those of its kept folders read from there."""
        kept = KeptRuns()
        for folder in record.kept_folders:
            kept.add(folder)
        return cls(client, kept)

    def __call__(self, run_id: str, key: str) -> pd.Series:
        """A metric's curve as a step-indexed series (empty if the run never logged it)."""
        if run_id in self.kept.run_ids:
            return self.kept.curve(run_id, key)
        if (run_id, key) not in self._cache:
            points = self.client.get_metric_history(run_id, key)
            self._cache[run_id, key] = pd.Series({p.step: p.value for p in points}, dtype=float).sort_index()
        return self._cache[run_id, key]

    def param(self, run_id: str, key: str, default: float) -> float:
        """A run's numeric trial-config value (e.g. `model.layers`)."""
        if run_id in self.kept.run_ids:
            return self.kept.param(run_id, key, default)
        if run_id not in self._params:
            self._params[run_id] = self.client.get_run(run_id).data.params
        return float(self._params[run_id].get(key, default))

    def attention_map(self, run_id: str, target: Path) -> bool:
        """Copy the run's last cross-attention map to `target`; False if it has none."""
        if run_id in self.kept.run_ids:
            return self.kept.attention_map(run_id, target)
        if ATTENTION_MAP not in {a.path for a in self.client.list_artifacts(run_id)}:
            return False
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(self.client.download_artifacts(run_id, ATTENTION_MAP, tmp), target)
        return True


def finished_runs(reader: RunReader, trials: pd.DataFrame) -> pd.DataFrame:
    """The runs with a label (not failed, not incomplete), with their depth and detector threshold."""
    done = trials[trials["label"].isin(LABELS)].copy()
    done["layers"] = [int(reader.param(r, "model.layers", 0)) for r in done["run_id"]]
    thresholds = (reader.param(r, "detector.min_direction", DEFAULT_MIN_DIRECTION) for r in done["run_id"])
    done["min_direction"] = list(thresholds)
    return done

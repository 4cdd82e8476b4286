"""Read a sweep back from MLflow: its design and one row per trial (for the driver, report and notebook).

`load_sweep` is the one loader: the parent run's `SweepDesign` (factors, cells, baseline) and a trials frame
whose outcome columns come from `TrialOutcome.from_mlflow`, i.e. exactly what each trial recorded. Its
`incidence()` is the incidence report every reader shows.

`load_sweeps` reads several sweeps that continue one study (more seeds of its cells, or new cells beside them,
e.g. a `base_from` space run later) as one record: a cell that several sweeps ran must have the same settings
in each, a (cell, seed) may have an outcome in one sweep only, and a run a sweep left without an outcome is
dropped where another sweep has that (cell, seed)'s outcome. Trial keys become `<sweep id>/<trial key>`. A
sweep whose store is gone is read from the folder `sweep.report --tables` kept it in (`sweep.kept`).

Trials frame columns: trial_key, cell, seed, status, run_id, then the outcome's row (label, kind, control,
reason, steps (done), flip_block, time_to_flip, shifted, early_stopped, failure, one column per verdict
figure, e.g. attention_direction, backward_evaluations), then one column per design factor (values parsed
back from MLflow's strings). A run recorded before kinds takes its cell's kind from the design.
"""

from __future__ import annotations

import contextlib
import hashlib
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

from sweep.design import ARTIFACT, CellDesign, SweepDesign
from sweep.kept import KeptError, SweepSource, is_kept, read_kept
from sweep.registry import get_trainer
from sweep.stats import IncidenceReport, incidence_report
from sweep.tracking import ROLE_TAG, SWEEP_TAG, TRIAL_TAG, child_runs
from trainers.config import ConfigError, flatten
from trainers.outcome import ENDED_LABELS, TrialOutcome
from trainers.reported import VERDICT_FIGURES

IDENTITY = ["trial_key", "cell", "seed", "status", "run_id"]
OUTCOME = ["label", "kind", "control", "reason", "steps", "flip_block", "time_to_flip", "shifted"]
OUTCOME += ["early_stopped", "failure"]
COLUMNS = IDENTITY + OUTCOME + list(VERDICT_FIGURES)


def _factor_value(param: str | None) -> Any:
    """A factor's value in a trials frame, from the run's param (lists and dicts as their text)."""
    value = _value(param)
    return str(value) if isinstance(value, list | dict) else value


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


def trials_frame(
    client: MlflowClient, parent: Run, factors: list[str], kinds: dict[str, str] | None = None
) -> pd.DataFrame:
    """Every child run of the parent as a row (see the module docstring), sorted by trial key; `kinds`: the
    design's cell kinds, for runs recorded before their outcome carried one."""
    runs = child_runs(client, parent.info.experiment_id, parent.info.run_id)
    rows = []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        if "kind" not in tags and (kinds or {}).get(tags.get("cell", "")):
            tags = {**tags, "kind": kinds[tags["cell"]]}
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
            row[factor] = _factor_value(params.get(factor))
        rows.append(row)
    extra = sorted({key for row in rows for key in row} - set(COLUMNS) - set(factors))  # undeclared figures
    frame = pd.DataFrame(rows, columns=COLUMNS + extra + [f for f in factors if f not in COLUMNS])
    for figure in VERDICT_FIGURES:
        frame[figure] = pd.to_numeric(frame[figure]).astype(float)
    return frame.sort_values("trial_key", ignore_index=True)


def space_name(sweep_id: str) -> str:
    """A sweep id, `<space name>-<date>-<time>`, without its start time."""
    return sweep_id.rsplit("-", 2)[0]


@dataclass
class SweepRecord:
    """A sweep as recorded: where it was read from (MLflow or a kept folder, `sweep.kept`), its design and its
    trials (several sources: sweeps pooled by `load_sweeps`)."""

    sources: list[SweepSource]
    design: SweepDesign
    trials: pd.DataFrame

    @property
    def run_names(self) -> list[str]:
        """The sweep ids, `<space name>-<date>-<time>` (the parent runs' names)."""
        return [source.name for source in self.sources]

    @property
    def name(self) -> str:
        return " + ".join(self.run_names)

    @property
    def space_names(self) -> str:
        """The sweeps' names without their start times, joined by `+`."""
        return "+".join(space_name(name) for name in self.run_names)

    @property
    def figure_name(self) -> str:
        """What the sweeps' own figures are named by: their ids, so that sweeps of one space file run a few
        cells at a time (`--cells`) do not overwrite each other's curves in one folder. Past 100 characters
        (many sweeps pooled): their space names, each once, and a digest of the ids."""
        ids = "+".join(self.run_names) or self.design.sweep_id
        if len(ids) <= 100:
            return ids
        names = "+".join(dict.fromkeys(space_name(name) for name in self.run_names))
        return f"{names[:80]}-{hashlib.sha1(ids.encode()).hexdigest()[:8]}"

    @property
    def wall_seconds(self) -> float | None:
        """The sweeps' wall time, summed (None if one of them did not record it)."""
        walls = [source.wall_seconds for source in self.sources]
        return None if None in walls else float(sum(walls))

    @property
    def kept_folders(self) -> list[Path]:
        """The kept folders the record was read from, once each."""
        return list(dict.fromkeys(s.folder for s in self.sources if s.folder is not None))

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
    return SweepRecord([_source(parent)], design, trials_frame(client, parent, design.factors, design.kinds))


def _source(parent: Run) -> SweepSource:
    """A parent run as a record's source: its name (the sweep id) and the wall time it recorded."""
    name = parent.data.tags.get("mlflow.runName", parent.info.run_id)
    return SweepSource(name, parent.data.metrics.get("sweep/wall_seconds"))


class PoolError(ValueError):
    """Sweeps that cannot be read as one study (the message says which cell, seed or setting)."""


def load_sweeps(client: MlflowClient | None, experiment: str, sweep_ids: list[str]) -> SweepRecord:
    """Several sweeps read as one study (see the module docstring). Each id names a sweep of the experiment in
    MLflow or a folder it was kept in (`sweep.kept`, read without MLflow); no id: the newest sweep."""
    parts = [_SweepPart.read(client, experiment, sweep_id) for sweep_id in sweep_ids or [None]]
    design = pool_designs([part.design for part in parts]) if len(parts) > 1 else parts[0].design
    # Each sweep's trials read with the pooled factors: a child run's params hold its whole trial config; a
    # kept sweep has the columns of its own design's factors.
    frames = [part.trials(client, design) for part in parts]
    sources = [source for part in parts for source in part.sources]
    trials = pool_trials(frames, [part.design.sweep_id for part in parts]) if len(parts) > 1 else frames[0]
    return SweepRecord(sources, design, trials)


@dataclass
class _SweepPart:
    """One `--sweep` of a study: a parent run in MLflow, or a kept folder."""

    sources: list[SweepSource]
    design: SweepDesign
    parent: Run | None = None
    kept: pd.DataFrame | None = None

    @classmethod
    def read(cls, client: MlflowClient | None, experiment: str, sweep_id: str | None) -> _SweepPart:
        if sweep_id is not None and is_kept(sweep_id):
            try:
                kept = read_kept(sweep_id)
            except KeptError as exc:
                raise PoolError(str(exc)) from exc
            return cls(kept.sources, kept.design, kept=kept.trials)
        if client is None:
            raise PoolError(f"{sweep_id} is not a folder, and no MLflow store was given to find it in")
        parent = find_parent(client, experiment, sweep_id)
        return cls([_source(parent)], read_design(client, parent), parent=parent)

    def trials(self, client: MlflowClient | None, design: SweepDesign) -> pd.DataFrame:
        """This sweep's trials frame with a column for every factor of the (pooled) `design`: from MLflow, its
        runs' params; from a kept folder, a factor its own design did not vary is read off its cells."""
        if self.kept is None:
            return trials_frame(client, self.parent, design.factors, design.kinds)
        trials = self.kept.copy()
        missing = [f for f in design.factors if f not in trials.columns]
        if missing:
            values = {
                cell.name: cell_factor_values(self.design.trainer, cell, missing)
                for cell in self.design.cells
            }
            for factor in missing:
                trials[factor] = [values.get(cell, {}).get(factor) for cell in trials["cell"]]
        return trials


def cell_factor_values(trainer: str, cell: CellDesign, factors: list[str]) -> dict[str, Any]:
    """A cell's values of `factors` as `trials_frame` reads them from its trials' params: the trial config
    built from the cell's settings, flattened, written as strings and parsed back (None if it cannot be
    built)."""
    spec = get_trainer(trainer)
    settings = {spec.renamed_keys.get(key, key): value for key, value in cell.settings.items()}
    try:
        config = flatten(spec.build_config(settings))
    except ConfigError:
        return {}
    return {factor: _factor_value(str(config[factor]) if factor in config else None) for factor in factors}


def pool_designs(designs: list[SweepDesign]) -> SweepDesign:
    """One grid design for sweeps that continue one study: their cells (in first-seen order), factors, seeds
    and levels united; the baseline is the one declared (at most one may be), else the first sweep's."""
    first = designs[0]
    cells: dict[str, tuple[str, CellDesign]] = {}
    for design in designs:
        if design.legacy:
            raise PoolError(
                f"sweep {design.sweep_id} predates recorded designs: its cells cannot be compared"
            )
        if design.search != "grid" or design.trainer != first.trainer:
            raise PoolError(
                f"sweep {design.sweep_id} ({design.search}, {design.trainer}) does not pool with "
                f"{first.sweep_id} ({first.search}, {first.trainer}): only grid sweeps of one trainer do"
            )
        for cell in design.cells:
            if cell.name in cells:
                _same_cell(*cells[cell.name], design.sweep_id, cell)
            else:
                cells[cell.name] = (design.sweep_id, cell)
    declared = {d.baseline for d in designs if d.baseline_declared}
    if len(declared) > 1:
        raise PoolError(f"the sweeps declare different baselines: {sorted(declared)}")
    baseline = next(iter(declared), first.baseline)
    levels: dict[str, list[Any]] = {}
    for design in designs:
        for key, values in design.levels.items():
            levels.setdefault(key, [])
            levels[key] += [v for v in values if v not in levels[key]]
    return SweepDesign(
        sweep_id=" + ".join(d.sweep_id for d in designs),
        space=" + ".join(dict.fromkeys(d.space for d in designs)),
        trainer=first.trainer,
        search="grid",
        factors=list(dict.fromkeys(f for d in designs for f in d.factors)),
        levels=levels,
        cells=[cell for _, cell in cells.values()],
        baseline=baseline,
        baseline_declared=bool(declared),
        seeds=sorted({seed for d in designs for seed in d.seeds}),
    )


def _same_cell(sweep_a: str, a: CellDesign, sweep_b: str, b: CellDesign) -> None:
    """Refuse to pool a cell whose settings differ between two sweeps (compared in their JSON form)."""
    settings_a, settings_b = (c.model_dump(mode="json")["settings"] for c in (a, b))
    if settings_a != settings_b or a.control != b.control:
        differing = sorted(
            k for k in settings_a.keys() | settings_b.keys() if settings_a.get(k) != settings_b.get(k)
        )
        what = (
            ", ".join(f"{k} = {settings_a.get(k)!r} vs {settings_b.get(k)!r}" for k in differing) or "control"
        )
        raise PoolError(f"cell {a.name!r} differs between sweeps {sweep_a} and {sweep_b}: {what}")


def pool_trials(frames: list[pd.DataFrame], sweep_ids: list[str]) -> pd.DataFrame:
    """The sweeps' trials frames as one, with a `sweep` column and keys `<sweep id>/<trial key>`: a (cell,
    seed) with an outcome in two sweeps is refused; one without an outcome (left unfinished by an interrupted
    sweep) is dropped where another sweep has that (cell, seed)'s outcome."""
    parts = [
        frame.assign(sweep=sweep_id, trial_key=sweep_id + "/" + frame["trial_key"])
        for frame, sweep_id in zip(frames, sweep_ids, strict=True)
    ]
    pooled = pd.concat(parts, ignore_index=True)
    ended = pooled["label"].isin(ENDED_LABELS)
    pair = pd.MultiIndex.from_frame(pooled[["cell", "seed"]])
    with_outcome = pair[ended]
    twice = pooled[ended & pair.isin(with_outcome[with_outcome.duplicated()])]
    if len(twice):
        first = twice.iloc[0]
        same = twice[(twice["cell"] == first["cell"]) & (twice["seed"] == first["seed"])]["sweep"]
        where = " and ".join(same)
        raise PoolError(f"cell {first['cell']!r} seed {first['seed']} has an outcome in sweeps {where}")
    superseded = ~ended & pair.isin(with_outcome)
    return pooled[~superseded].sort_values("trial_key", ignore_index=True)

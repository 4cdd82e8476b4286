"""A sweep kept as files: what `sweep.report` needs to read a study again once its MLflow store is gone.

A session's checkout may lose `mlflow.db`, while a long study's seeds run over several sessions. So
`sweep.report --tables DIR` keeps, beside the statistics, everything the report reads of the sweep:

* `design.json`: the design the driver recorded (`sweep.design.SweepDesign`);
* `trials.csv`: one row per trial, as `sweep.results.trials_frame` reads it from MLflow (`sweep.outputs`);
* `sweep.json`: the sweep ids and their wall times;
* `curves.csv`: the metric curves the report reads of each finished run (`CURVES`, long format: run_id, key,
  step, value);
* `params.csv`: the trial-config values it reads (`PARAMS`: run_id, key, value);
* `maps/<run_id>.png`: each finished run's last cross-attention map.

`sweep.report --sweep DIR` (and `sweep.results.load_sweeps`) reads such a folder where it would read a sweep
id, alone or pooled with sweeps still in MLflow; the report is the same, line for line, as the one read from
MLflow (tests/e2e/test_sweep.py). A folder kept before curves were kept reads with empty curves: its report
says so, and the sections that need curves show nothing for its runs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sweep.design import ARTIFACT, SweepDesign
from sweep.outputs import TRIALS
from trainers.reported import VERDICT_FIGURES

SWEEP = "sweep.json"
CURVES_FILE = "curves.csv"
PARAMS_FILE = "params.csv"
MAPS = "maps"
# The curves the report reads of a run: its label and undecided reason at each evaluation, the plotted
# readings, the sink's, the two a label is checked against (accuracy and the attention's peak: why a run is
# undecided, read by hand from the kept folder alone), what was imposed on training (the MHSA scale, the
# learned attention's share), and per block the MHSA/FFN and MHSA/residual norm ratios, the initial frames'
# self-attention reach, pull and entropy, and the gradient map's direction (G_0 the input; the flipping block
# and the paper's depth are chosen when the report is read, so every block is kept).
CURVES = (
    "label_code",
    "reason_code",
    "attention_direction",
    "cross_initial_lift",
    "outside_sink_direction",
    "accuracy",
    "attention_peak",
    "mhsa_scale",
    "learned_attention_share",
)
BLOCK_CURVES = (
    "mhsa_ffn_ratio_{block}",
    "mhsa_residual_ratio_{block}",
    "self_initial_reach_{block}",
    "self_initial_pull_{block}",
    "self_initial_entropy_{block}",
)
PARAMS = ("model.layers", "detector.min_direction", "detector.sink_lift", "model.forced_attention_steps")


class KeptError(ValueError):
    """A folder that is not a kept sweep (the message names the folder and the missing file)."""


def is_kept(sweep: str) -> bool:
    """Whether a `--sweep` argument names a folder (a kept sweep) rather than a sweep id."""
    return Path(sweep).is_dir()


def curve_keys(layers: int) -> list[str]:
    """Every curve kept of a run with `layers` blocks."""
    blocks = range(1, layers + 1)
    maps = [f"block_direction_{b}" for b in range(layers + 1)]
    return list(CURVES) + [key.format(block=b) for key in BLOCK_CURVES for b in blocks] + maps


@dataclass(frozen=True)
class SweepSource:
    """One sweep of a record: its id (`<space name>-<date>-<time>`, the parent run's name), its wall time, and
    the folder it was read from (None: read from MLflow)."""

    name: str
    wall_seconds: float | None
    folder: Path | None = None


@dataclass
class KeptSweep:
    """A kept folder read back: its sources (one per sweep it holds), design and trials frame."""

    folder: Path
    sources: list[SweepSource]
    design: SweepDesign
    trials: pd.DataFrame = field(repr=False)


def read_kept(folder: str | Path) -> KeptSweep:
    """The sweep kept in `folder` (see the module docstring); KeptError names what is missing."""
    folder = Path(folder)
    for name in (ARTIFACT, TRIALS):
        if not (folder / name).is_file():
            raise KeptError(
                f"{folder} is not a kept sweep: it has no {name} (`sweep.report --tables {folder}` keeps one "
                "while the sweep is still in MLflow)"
            )
    design = SweepDesign.from_json((folder / ARTIFACT).read_text())
    trials = pd.read_csv(folder / TRIALS, dtype={"reason": object, "failure": object})
    for figure in VERDICT_FIGURES:
        if figure in trials:
            trials[figure] = pd.to_numeric(trials[figure]).astype(float)
    if (folder / SWEEP).is_file():
        recorded = json.loads((folder / SWEEP).read_text())
        sources = [SweepSource(s["name"], s.get("wall_seconds"), folder) for s in recorded["sweeps"]]
    else:
        sources = [SweepSource(design.sweep_id, None, folder)]
    return KeptSweep(folder, sources, design, trials)


def write_kept(folder: Path, sources: list[SweepSource], design: SweepDesign, reader, finished) -> None:
    """Keep the sweep in `folder`: its design, its sources, and each finished run's curves, params and map
    (read through `reader`, a `sweep.report.RunReader`, so a kept sweep keeps what it was read from). The
    trials frame itself is written with the statistics (`sweep.outputs.write_incidence_files`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ARTIFACT).write_text(design.to_json())
    sweeps = [{"name": s.name, "wall_seconds": s.wall_seconds} for s in sources]
    (folder / SWEEP).write_text(json.dumps({"sweeps": sweeps}, indent=2) + "\n")
    curves, params = [], []
    maps = folder / MAPS
    maps.mkdir(exist_ok=True)
    for run_id in finished["run_id"]:
        values = {key: reader.param(run_id, key, float("nan")) for key in PARAMS}
        params += [{"run_id": run_id, "key": key, "value": value} for key, value in values.items()]
        layers = 0 if pd.isna(values["model.layers"]) else int(values["model.layers"])
        for key in curve_keys(layers):
            series = reader(run_id, key)
            curves.append(pd.DataFrame({"run_id": run_id, "key": key, "step": series.index, "value": series}))
        reader.attention_map(run_id, maps / f"{run_id}.png")
    columns = ["run_id", "key", "step", "value"]
    frame = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=columns)
    frame.astype({"step": int}).to_csv(folder / CURVES_FILE, index=False, float_format="%.7g")
    pd.DataFrame(params, columns=["run_id", "key", "value"]).to_csv(folder / PARAMS_FILE, index=False)


@dataclass
class KeptRuns:
    """The curves, params and maps of the runs of kept folders, by run id (what `RunReader` serves)."""

    curves: dict[tuple[str, str], pd.Series] = field(default_factory=dict)
    params: dict[str, dict[str, float]] = field(default_factory=dict)
    maps: dict[str, Path] = field(default_factory=dict)
    run_ids: set[str] = field(default_factory=set)
    without_curves: list[Path] = field(default_factory=list)  # folders kept before curves were

    def add(self, folder: Path) -> None:
        """The runs of the sweep kept in `folder`."""
        self.run_ids |= set(pd.read_csv(folder / TRIALS, usecols=["run_id"], dtype=str)["run_id"].dropna())
        if not (folder / CURVES_FILE).is_file():
            self.without_curves.append(folder)
            return
        curves = pd.read_csv(folder / CURVES_FILE, dtype={"run_id": str, "key": str})
        for (run_id, key), part in curves.groupby(["run_id", "key"], sort=False):
            self.curves[run_id, key] = pd.Series(part["value"].to_numpy(float), index=part["step"].to_numpy())
        params = pd.read_csv(folder / PARAMS_FILE, dtype={"run_id": str, "key": str})
        for row in params.itertuples(index=False):
            self.params.setdefault(row.run_id, {})[row.key] = float(row.value)
        for path in (folder / MAPS).glob("*.png"):
            self.maps[path.stem] = path

    def curve(self, run_id: str, key: str) -> pd.Series:
        return self.curves.get((run_id, key), pd.Series(dtype=float))

    def param(self, run_id: str, key: str, default: float) -> float:
        value = self.params.get(run_id, {}).get(key, default)
        return default if pd.isna(value) else value

    def attention_map(self, run_id: str, target: Path) -> bool:
        if run_id not in self.maps:
            return False
        if self.maps[run_id].resolve() != target.resolve():  # a kept folder written into itself again
            shutil.copyfile(self.maps[run_id], target)
        return True

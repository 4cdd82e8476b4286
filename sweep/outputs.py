"""A sweep's incidence report as files: the tables as CSV, `model_summary.txt` and the four plots.

The driver logs these to the parent run; the notebook writes the same files to show them. Statistics
(`sweep.stats`) and figures (`sweep.plots`) know nothing of each other; this module puts them side by side.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from sweep import plots
from sweep.stats import IncidenceReport

TABLES = ("incidence.csv", "marginals.csv", "fisher.csv", "regression.csv", "time_to_flip.csv")
PLOTS = ("rate_by_factor.png", "heatmap.png", "direction_distribution.png", "time_to_flip.png")
TRIALS = "trials.csv"  # one row per trial: its cell, seed, settings and outcome, as `sweep.results` reads it


def write_incidence_files(
    report: IncidenceReport, directory: str | Path, trials: pd.DataFrame | None = None
) -> list[Path]:
    """Write the tables, model_summary.txt and the plots (under plots/) into `directory`, and `trials` (the
    sweep's trials frame) as trials.csv when given; the paths written.

    A plot that fails is left out with a warning and a note in the summary: a broken figure must not cost a
    sweep its statistics.
    """
    directory = Path(directory)
    plot_dir = directory / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    tables = (report.cells, report.marginals, report.fisher, report.regression, report.time_to_flip)
    for name, table in zip(TABLES, tables, strict=True):
        table.to_csv(directory / name, index=False)
        written.append(directory / name)
    drawings = (
        (plots.plot_rate_by_factor, report),
        (plots.plot_heatmap, report),
        (plots.plot_direction_distribution, report.trials),
        (plots.plot_time_to_flip, report.time_to_flip),
    )
    for name, (draw, source) in zip(PLOTS, drawings, strict=True):
        try:
            written.append(draw(source, plot_dir / name))
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            message = f"plot {name} failed: {type(exc).__name__}: {exc}"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            report.notes.append(message)
    (directory / "model_summary.txt").write_text(report.summary_text())
    written.append(directory / "model_summary.txt")
    if trials is not None:
        trials.to_csv(directory / TRIALS, index=False)
        written.append(directory / TRIALS)
    return written

"""A study's report, read back from MLflow: incidence with intervals, the backward phase, the mechanism.

    python -m sweep.report [--experiment NAME] [--sweep ID [--sweep ID ...]] [--tracking-uri URI]
                           [--out FILE.md] [--plots DIR] [--tables DIR]

Prints Markdown (the tables of docs/reproduction.md come from here). Everything per run is what the trial
recorded (its `TrialOutcome`, read by `sweep.results.load_sweep`), and the comparisons use the design the
driver recorded on the parent run, so the numbers are the driver's own. Several `--sweep`s read as one study
(sweeps that continue it with more seeds, or new cells beside its baseline: `sweep.results.load_sweeps`).
Its parts: `reader` (what is read of each run), `analyses` (the tables it computes), `sections` (Markdown).

* **Design**: the factors, the cells by run kind (natural, mitigation, induced, control), the baseline cell
  (declared, or the first natural cell) and each family's baseline (`sweep.kinds`).
* **Incidence** per cell: its kind, normal / reversed / undecided (and why) / failed and the reversal rate
  among decided runs with its Wilson 95 % interval, then each kind's runs pooled (never two kinds in one
  rate); **Fisher tests** of every cell against its family's baseline and the **logistic regression** over
  the factors within each family (`sweep.stats`).
* **Backward phase** per cell: runs whose cross-attention read reversed (direction <= -min_direction) at some
  evaluation, whatever their final label, how many evaluations and between which steps; and runs whose
  attention, G_0 and last block all read as a flip at some evaluation (the near misses of a `reversed` label).
* **The start-edge sink** per run: when the cross-attention's lift on the initial frames first reached
  `detector.sink_lift`, for how many evaluations, its last and highest lift, the direction outside it, the
  gradient maps' directions at the end and the initial frames' self-attention reach, and what became of it
  (`SINK_FATES`: the paper's picture, none, gone, stays).
* **The initial frames' self-attention** per run, in its farthest-reaching block: reach, pull and entropy at
  the first evaluation, when forced cross-attention ended (induced and mitigation runs) and at the end.
* **The interventions** (runs with something imposed: induced runs and forced cross-attention): from which
  evaluation the MHSA scale and the learned attention's share held still, and what the attention and the
  gradient maps did before and after; then which induced cells to re-run with more seeds (the longest
  reversed encoder), any that flipped at a rate worth a study of its own (`FLIP_RANGE`), and for each one
  that never flipped the Wilson bound on ending `reversed` beside how many runs ended with a reversed
  encoder left undecided.
* **Dominance** per cell: the MHSA/FFN and MHSA/residual norm ratios of the block at the paper's depth (10 of
  12), first, largest and last reading (from the curves).
* **Reversed runs**, each verified: final attention direction, G_0 direction (must read forwards), the last
  block's direction, the flipping block and when the flip happened.
* **Mechanism** (per family of kinds, controls left out): the flipping block's MHSA/FFN ratio before and
  after the flip, next to the same block of every run that did not flip, read from its curve at the median
  flip step.
* **Each run**: its label, the step from which every evaluation gave that label, why its evaluations were
  undecided along the way, and its last readings (also `runs.csv` with `--tables`). With `--plots`, each
  run's last cross-attention map is fetched beside the curves, named by its cell and seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from sweep.kept import is_kept, write_kept
from sweep.report.reader import RunReader, finished_runs
from sweep.report.sections import (
    backward_lines,
    closing_lines,
    comparison_lines,
    design_lines,
    dominance_lines,
    first_step_lines,
    incidence_lines,
    initial_links_lines,
    intervention_lines,
    kept_lines,
    mechanism_lines,
    plot_lines,
    reversed_lines,
    runs_lines,
    sink_lines,
)
from sweep.results import PoolError, load_sweeps
from sweep.tracking import default_tracking_uri


def report(
    client: MlflowClient | None,
    experiment: str,
    sweep_ids: list[str] | None = None,
    *,
    plots: Path | None = None,
    tables: Path | None = None,
) -> str:
    """The sweep's report as Markdown, one section after another (several ids: the sweeps pooled as one
    study; none: the newest sweep); `plots`: also draw every run's curves there; `tables`: also write the
    statistics there as files (the same files the driver logged to the parent run)."""
    record = load_sweeps(client, experiment, sweep_ids or [])
    stats = record.incidence()
    if tables is not None:
        from sweep.outputs import write_incidence_files

        write_incidence_files(stats, tables, record.trials)
    reader = RunReader.of(client, record)
    finished = finished_runs(reader, stats.trials)
    if tables is not None:
        write_kept(tables, record.sources, record.design, reader, finished)
    out = [f"## {record.name}", "", *design_lines(record), *incidence_lines(stats), *comparison_lines(stats)]
    out += backward_lines(finished) + first_step_lines(finished) + sink_lines(reader, finished)
    out += initial_links_lines(reader, finished) + intervention_lines(reader, finished, stats)
    out += dominance_lines(reader, finished)
    out += reversed_lines(finished) + mechanism_lines(reader, finished)
    out += runs_lines(reader, finished, tables)
    if plots is not None:
        out += plot_lines(reader, finished, plots, record)
    out += closing_lines(record, stats) + kept_lines(reader)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="flipsweep", help="MLflow experiment name")
    parser.add_argument(
        "--sweep",
        action="append",
        help="sweep id, or a folder a sweep was kept in with --tables (default: the newest sweep in the "
        "experiment); repeat it to read sweeps as one study",
    )
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or ./mlflow.db")
    parser.add_argument("--out", help="also write the Markdown to this file")
    parser.add_argument("--plots", type=Path, help="draw curves of every run into this folder")
    parser.add_argument(
        "--tables",
        type=Path,
        help="write the statistics (CSV, summary, plots) into this folder, and keep the sweep there: "
        "--sweep FOLDER reads it again without MLflow",
    )
    args = parser.parse_args(argv)
    from_mlflow = not args.sweep or not all(is_kept(sweep) for sweep in args.sweep)
    # The driver's default store; none when every sweep is a kept folder (nothing is created then).
    client = MlflowClient(args.tracking_uri or default_tracking_uri()) if from_mlflow else None
    try:
        text = report(client, args.experiment, args.sweep, plots=args.plots, tables=args.tables)
    except (LookupError, PoolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0

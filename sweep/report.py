"""A study's report, read back from MLflow: incidence with intervals, the backward phase, the mechanism.

    python -m sweep.report [--experiment NAME] [--sweep ID] [--tracking-uri URI] [--out FILE.md]

Prints Markdown (the tables of docs/reproduction.md come from here):

* **Incidence** per cell: normal / reversed / undecided / failed and the reversal rate among decided runs
  with its Wilson 95 % interval (`sweep.stats`).
* **Backward phase** per cell: runs whose cross-attention read reversed (direction <= -min_direction, the
  run's own detector threshold, 0.5 by default) at some evaluation, whatever their final label, and for
  how many steps. The prototype saw such phases with absolute positions while the attention was still flat.
* **Dominance** per cell: the MHSA/FFN norm ratio of the block at the paper's depth (10 of 12), first,
  largest and last reading.
* **Reversed runs**, each verified: final attention direction, G_0 direction (must read forwards), the last
  block's direction, the flipping block and when the flip happened.
* **Mechanism** (natural runs only): the MHSA-to-FFN norm ratio of the flipping block before and after the
  flip, next to the same block of every run that did not flip, read at the same step.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from sweep.results import find_parent, trials_frame
from sweep.stats import incidence_report
from trainers.config import DetectorConfig
from trainers.detector import reads_reversed

# The detector's own defaults, for runs that did not log these keys.
DEFAULT_MIN_DIRECTION = DetectorConfig.model_fields["min_direction"].default
DEFAULT_EVERY = DetectorConfig.model_fields["every"].default


class Histories:
    """Metric curves of runs, each fetched from MLflow once per report (the tables and plots share them)."""

    def __init__(self, client: MlflowClient):
        self.client = client
        self._cache: dict[tuple[str, str], pd.Series] = {}

    def __call__(self, run_id: str, key: str) -> pd.Series:
        """A metric's curve as a step-indexed series (empty if the run never logged it)."""
        if (run_id, key) not in self._cache:
            points = self.client.get_metric_history(run_id, key)
            self._cache[run_id, key] = pd.Series({p.step: p.value for p in points}, dtype=float).sort_index()
        return self._cache[run_id, key]


def paper_depth(layers: int) -> int:
    """The block at the paper's flipping depth (10 of 12), scaled to a run's depth."""
    return max(1, round(layers * 10 / 12))


def _at(curve: pd.Series, step: float) -> float:
    """The curve's last reading at or before `step` (NaN if none)."""
    if curve.empty or math.isnan(step):
        return math.nan
    before = curve[curve.index <= step]
    return float(before.iloc[-1]) if len(before) else math.nan


def reversed_encoder_readings(
    attention: pd.Series, g0: pd.Series, last_block: pd.Series, min_direction: float = DEFAULT_MIN_DIRECTION
) -> int:
    """Evaluations whose directions all read as a flip (the detector's `reads_reversed`), whether or not
    accuracy and attention peak were yet high enough for the detector to decide: the near misses a `reversed`
    label needs, as opposed to the trap (flat attention over a forward encoder)."""
    joined = pd.concat([attention, g0, last_block], axis=1, join="inner").dropna()
    return int(reads_reversed(*(joined.iloc[:, i] for i in range(3)), min_direction).sum())


def readings(history: Histories, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: the backward phase and the final directions, from the metric curves."""
    rows = []
    for trial in trials.itertuples(index=False):
        if trial.label in ("failed", "incomplete"):
            continue
        run = history.client.get_run(trial.run_id)
        layers = int(float(run.data.params.get("model.layers", "0")))
        every = int(float(run.data.params.get("detector.every", DEFAULT_EVERY)))
        min_direction = float(run.data.params.get("detector.min_direction", DEFAULT_MIN_DIRECTION))
        attention = history(trial.run_id, "attention_direction")
        backward = attention[attention <= -min_direction]
        g0 = history(trial.run_id, "block_direction_0")
        last_block = history(trial.run_id, f"block_direction_{layers}")
        rows.append(
            {
                "trial_key": trial.trial_key,
                "layers": layers,
                "min_attention": float(attention.min()) if len(attention) else math.nan,
                "backward_steps": len(backward) * every,
                "backward_from": float(backward.index[0]) if len(backward) else math.nan,
                "backward_to": float(backward.index[-1]) if len(backward) else math.nan,
                "min_direction": min_direction,
                "reversed_encoder_steps": every
                * reversed_encoder_readings(attention, g0, last_block, min_direction),
                "g0_direction": _at(g0, math.inf),
                "last_block_direction": _at(last_block, math.inf),
                "final_step": float(attention.index[-1]) if len(attention) else math.nan,
            }
        )
    return trials.merge(pd.DataFrame(rows), on="trial_key", how="left")


def mechanism(history: Histories, frame: pd.DataFrame) -> pd.DataFrame:
    """MHSA/FFN ratio of the flipping block before (last reading before the flip) and at the end; runs that
    did not flip are read at the same block and the median flip step of the sweep."""
    flipped = frame[frame["label"] == "reversed"]
    if flipped.empty:
        return pd.DataFrame()
    block = int(flipped["flip_block"].mode().iloc[0])
    flip_step = float(flipped["time_to_flip"].median())
    rows = []
    for run in frame[frame["label"].isin(["reversed", "normal", "undecided"])].itertuples(index=False):
        own = run.label == "reversed"
        b = int(run.flip_block) if own else block
        step = float(run.time_to_flip) if own else flip_step
        ratio = history(run.run_id, f"mhsa_ffn_ratio_{b}")
        rows.append(
            {
                "trial_key": run.trial_key,
                "cell": run.cell,
                "label": run.label,
                "block": b,
                "ratio_before": _at(ratio, step - 1),
                "ratio_after": _at(ratio, math.inf),
            }
        )
    return pd.DataFrame(rows)


def dominance(history: Histories, frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell, MHSA/FFN and MHSA/residual norm ratios of the block at the paper's depth (10 of 12, scaled to
    the run's depth): first evaluation, maximum, end. Does self-attention come to dominate?"""
    rows = []
    for run in frame.dropna(subset=["min_attention"]).itertuples(index=False):
        block = paper_depth(run.layers)
        ratio = history(run.run_id, f"mhsa_ffn_ratio_{block}")
        residual = history(run.run_id, f"mhsa_residual_ratio_{block}")
        if ratio.empty or residual.empty:
            continue
        rows.append(
            {
                "cell": run.cell,
                "block": block,
                "ffn_first": float(ratio.iloc[0]),
                "ffn_max": float(ratio.max()),
                "ffn_end": float(ratio.iloc[-1]),
                "residual_first": float(residual.iloc[0]),
                "residual_max": float(residual.max()),
                "residual_end": float(residual.iloc[-1]),
            }
        )
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).groupby("cell", sort=False).median().reset_index()


def curves(history: Histories, frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Long-format curves (cell, trial_key, step, value) of metric `key`; `{depth}` in the key is replaced by
    the block at the paper's depth (10 of 12) of each run."""
    parts = []
    for run in frame.dropna(subset=["min_attention"]).itertuples(index=False):
        name = key.replace("{depth}", str(paper_depth(run.layers)))
        series = history(run.run_id, name)
        parts.append(
            pd.DataFrame(
                {"cell": run.cell, "trial_key": run.trial_key, "step": series.index, "value": series}
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def write_plots(history: Histories, frame: pd.DataFrame, directory: Path, name: str) -> list[Path]:
    """Attention direction and MHSA/residual ratio (paper's depth) over training, one line per run."""
    from sweep.plots import plot_curves  # matplotlib only when plots are asked for

    return [
        plot_curves(
            curves(history, frame, "attention_direction"),
            directory / f"{name}_attention_direction.png",
            "value",
            f"{name}: cross-attention direction (+1 diagonal, -1 anti-diagonal)",
            "attention direction",
            ylim=(-1.05, 1.05),
        ),
        plot_curves(
            curves(history, frame, "mhsa_residual_ratio_{depth}"),
            directory / f"{name}_mhsa_residual.png",
            "value",
            f"{name}: ||MHSA|| / ||residual|| at the paper's depth",
            "MHSA / residual",
        ),
    ]


def _markdown(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    return frame.to_markdown(index=False, floatfmt=floatfmt) if len(frame) else "(none)"


def report(
    client: MlflowClient, experiment: str, sweep_id: str | None = None, plots: Path | None = None
) -> str:
    parent = find_parent(client, experiment, sweep_id)
    trials = trials_frame(client, parent.info.run_id)
    factors = [k.removeprefix("factor.") for k in parent.data.params if k.startswith("factor.")]
    stats = incidence_report(trials, factors, parent.data.params.get("baseline") or None)
    history = Histories(client)
    frame = readings(history, trials)
    out = [f"## {parent.data.tags.get('mlflow.runName', parent.info.run_id)}", ""]

    cells = stats.cells.copy()
    cells["rate [95% CI]"] = [
        "-" if math.isnan(r.rate) else f"{r.rate:.0%} [{r.ci_low:.0%}, {r.ci_high:.0%}]"
        for r in cells.itertuples()
    ]
    columns = ["cell", *factors, "n", "reversed", "normal", "undecided", "failed", "rate [95% CI]"]
    out += ["### Incidence", "", _markdown(cells[[c for c in columns if c in cells]]), ""]

    finished = frame.dropna(subset=["min_attention"])
    phase = finished.groupby("cell", sort=False).agg(
        runs=("trial_key", "size"),
        with_backward_phase=("backward_steps", lambda s: int((s > 0).sum())),
        median_backward_steps=("backward_steps", "median"),
        with_reversed_encoder=("reversed_encoder_steps", lambda s: int((s > 0).sum())),
        median_reversed_encoder_steps=("reversed_encoder_steps", "median"),
        median_min_attention=("min_attention", "median"),
        median_final_attention=("attention_direction", "median"),
        median_final_step=("final_step", "median"),
    )
    out += [
        "### Backward phase (attention direction <= -min_direction, 0.5 by default, at some evaluation)",
        "",
    ]
    out += [
        "`reversed_encoder`: evaluations whose attention, G_0 and last-block directions all read as a flip "
        "(accuracy and attention peak not required).",
        "",
    ]
    out += [_markdown(phase.reset_index(), ".2f"), ""]

    out += [
        "### Self-attention dominance: MHSA/FFN and MHSA/residual norm ratios at the paper's depth (medians)",
        "",
    ]
    out += [_markdown(dominance(history, finished)), ""]

    flipped = frame[frame["label"] == "reversed"]
    verify = flipped[
        ["trial_key", "cell", "control", "attention_direction", "g0_direction", "last_block_direction"]
        + ["flip_block", "time_to_flip"]
    ]
    out += ["### Reversed runs, verified", "", _markdown(verify), ""]
    if len(flipped):
        ok = reads_reversed(
            flipped["attention_direction"],
            flipped["g0_direction"],
            flipped["last_block_direction"],
            flipped["min_direction"],
        )
        out += [f"{int(ok.sum())} of {len(flipped)} reversed runs pass every check.", ""]
    natural = frame[~frame["control"].astype(bool)]
    if (natural["label"] == "reversed").any():
        ratios = mechanism(history, natural)  # constructed flips say nothing about the mechanism
        summary = ratios.groupby("label")[["ratio_before", "ratio_after"]].median().reset_index()
        summary.insert(1, "runs", ratios.groupby("label").size().values)
        out += ["### Mechanism: MHSA/FFN norm ratio of the flipping block (medians)", ""]
        out += [_markdown(summary), "", _markdown(ratios[ratios["label"] == "reversed"]), ""]
    elif len(natural):
        out += ["No natural run reversed, so there is no flipping block to read the mechanism from.", ""]
    if plots is not None:
        name = parent.data.tags.get("mlflow.runName", experiment).rsplit("-", 2)[0]  # <name>-<date>-<time>
        out += [f"![{p.stem}]({p.as_posix()})" for p in write_plots(history, frame, plots, name)] + [""]
    if "sweep/wall_seconds" in parent.data.metrics:
        out += [f"Sweep wall time: {parent.data.metrics['sweep/wall_seconds']:.0f} s.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="flipsweep", help="MLflow experiment name")
    parser.add_argument("--sweep", help="sweep id (default: the newest sweep in the experiment)")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or ./mlflow.db")
    parser.add_argument("--out", help="also write the Markdown to this file")
    parser.add_argument("--plots", type=Path, help="draw curves of every run into this folder")
    args = parser.parse_args(argv)
    from sweep.run import default_tracking_uri  # the driver's default, so both read the same store

    client = MlflowClient(args.tracking_uri or default_tracking_uri())
    try:
        text = report(client, args.experiment, args.sweep, args.plots)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())

"""A study's report, read back from MLflow: incidence with intervals, the backward phase, the mechanism.

    python -m sweep.report [--experiment NAME] [--sweep ID [--sweep ID ...]] [--tracking-uri URI]
                           [--out FILE.md] [--plots DIR] [--tables DIR]

Prints Markdown (the tables of docs/reproduction.md come from here). Everything per run is what the trial
recorded (its `TrialOutcome`, read by `sweep.results.load_sweep`), and the comparisons use the design the
driver recorded on the parent run, so the numbers are the driver's own. Several `--sweep`s read as one study
(sweeps that continue it with more seeds, or new cells beside its baseline: `sweep.results.load_sweeps`).

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
  reversed encoder) and any that flipped at a rate worth a study of its own (`FLIP_RANGE`).
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
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from sweep.kept import KeptRuns, is_kept, write_kept
from sweep.kinds import FAMILIES, FAMILY_TEXT, KINDS, reasons_text
from sweep.results import PoolError, SweepRecord, load_sweeps
from sweep.stats import IncidenceReport
from sweep.tracking import default_tracking_uri
from trainers.config import DetectorConfig
from trainers.detector.verdict import LABEL_CODES, LABELS, REASON_CODES, UNDECIDED_REASONS, reads_reversed

# The detector's own default, for runs that did not log the key.
DEFAULT_MIN_DIRECTION = DetectorConfig.model_fields["min_direction"].default
DEFAULT_SINK_LIFT = DetectorConfig.model_fields["sink_lift"].default


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


def paper_depth(layers: int) -> int:
    """The block at the paper's flipping depth (10 of 12), scaled to a run's depth."""
    return max(1, round(layers * 10 / 12))


def _at(curve: pd.Series, step: float) -> float:
    """The curve's last reading at or before `step` (NaN if none)."""
    if curve.empty or math.isnan(step):
        return math.nan
    before = curve[curve.index <= step]
    return float(before.iloc[-1]) if len(before) else math.nan


def finished_runs(reader: RunReader, trials: pd.DataFrame) -> pd.DataFrame:
    """The runs with a label (not failed, not incomplete), with their depth and detector threshold."""
    done = trials[trials["label"].isin(LABELS)].copy()
    done["layers"] = [int(reader.param(r, "model.layers", 0)) for r in done["run_id"]]
    thresholds = (reader.param(r, "detector.min_direction", DEFAULT_MIN_DIRECTION) for r in done["run_id"])
    done["min_direction"] = list(thresholds)
    return done


def backward_phase(finished: pd.DataFrame) -> pd.DataFrame:
    """Per cell, from each run's recorded figures: the backward phase and the reversed-encoder readings."""
    return finished.groupby("cell", sort=False).agg(
        runs=("trial_key", "size"),
        with_backward_phase=("backward_evaluations", lambda s: int((s > 0).sum())),
        median_backward_evaluations=("backward_evaluations", "median"),
        median_backward_from=("backward_first_step", "median"),
        median_backward_to=("backward_last_step", "median"),
        with_reversed_encoder=("reversed_encoder_evaluations", lambda s: int((s > 0).sum())),
        median_reversed_encoder_evaluations=("reversed_encoder_evaluations", "median"),
        median_min_attention=("min_attention_direction", "median"),
        median_final_attention=("attention_direction", "median"),
        median_final_step=("steps", "median"),
    )


FIRST_STEP = ("max_cross_initial_lift", "max_self_initial_reach", "max_backward_fraction")


def first_step(finished: pd.DataFrame) -> pd.DataFrame:
    """Per cell, the paper's first step from each run's recorded running maxima: how much the cross-attention
    ever piled onto the initial encoder frames (relative to uniform), how far the initial frames'
    self-attention ever reached into the utterance's far half (any block; 0.5 is uniform), and the most
    utterances ever reading backwards at one evaluation. Empty for sweeps recorded before these figures."""
    if not set(FIRST_STEP) <= set(finished.columns) or finished.empty:
        return pd.DataFrame()
    return finished.groupby("cell", sort=False).agg(
        runs=("trial_key", "size"),
        median_cross_initial_lift=("max_cross_initial_lift", "median"),
        highest_cross_initial_lift=("max_cross_initial_lift", "max"),
        median_self_initial_reach=("max_self_initial_reach", "median"),
        highest_self_initial_reach=("max_self_initial_reach", "max"),
        median_backward_fraction=("max_backward_fraction", "median"),
    )


# What became of a run's start-edge sink by its last evaluation, checked in this order.
SINK_FATES = {
    "paper": "G_0 forwards and the last block backwards (the paper's picture), whatever the sink",
    "none": "no evaluation's cross-attention lift on the initial frames reached detector.sink_lift",
    "gone": "a sink formed, and the last evaluation's lift is under sink_lift",
    "stays": "the last evaluation's lift is still at or over sink_lift",
}


def sink_fate(lift: pd.Series, sink_lift: float, g0: float, last_block: float, min_direction: float) -> str:
    """A run's sink fate (SINK_FATES) from its lift curve and its last gradient-map directions."""
    if g0 >= min_direction and last_block <= -min_direction:
        return "paper"
    if lift.empty or lift.max() < sink_lift:
        return "none"
    return "gone" if lift.iloc[-1] < sink_lift else "stays"


def sinks(reader: RunReader, finished: pd.DataFrame) -> pd.DataFrame:
    """Per finished run, the start-edge sink over training: from which evaluation the mean cross-attention
    lift on the initial frames reached `detector.sink_lift`, at how many, its last and highest lift, the
    attention's direction outside it at the end, each gradient map's direction at the end (G_0 the input,
    G_l block l), the initial frames' highest self-attention reach (and its block), and its fate."""
    rows = []
    for run in finished.itertuples(index=False):
        lift = reader(run.run_id, "cross_initial_lift")
        if lift.empty:
            continue
        sink_lift = reader.param(run.run_id, "detector.sink_lift", DEFAULT_SINK_LIFT)
        sunk = lift[lift >= sink_lift]
        blocks = [reader(run.run_id, f"block_direction_{b}") for b in range(run.layers + 1)]
        ends = [_at(curve, math.inf) for curve in blocks]
        reach = {b: reader(run.run_id, f"self_initial_reach_{b}").max() for b in range(1, run.layers + 1)}
        widest = max(reach, key=lambda b: -math.inf if math.isnan(reach[b]) else reach[b], default=None)
        rows.append(
            {
                "trial_key": run.trial_key,
                "cell": run.cell,
                "seed": run.seed,
                "label": run.label,
                "sink_from": float(sunk.index.min()) if len(sunk) else math.nan,
                "sink_evaluations": len(sunk),
                "evaluations": len(lift),
                "lift_end": float(lift.iloc[-1]),
                "lift_max": float(lift.max()),
                "outside_sink_end": _at(reader(run.run_id, "outside_sink_direction"), math.inf),
                "gradient_maps_end": " ".join(f"{d:+.2f}" for d in ends),
                "reach_max": reach.get(widest, math.nan),
                "reach_block": widest,
                "fate": sink_fate(lift, sink_lift, ends[0], ends[-1], run.min_direction),
            }
        )
    return pd.DataFrame(rows)


INITIAL_LINKS = ("reach", "pull", "entropy")


def initial_links(reader: RunReader, finished: pd.DataFrame) -> pd.DataFrame:
    """Per finished run, how the initial frames' self-attention links them with the utterance, in the block
    whose reach ever went highest: reach (mass on the far half; 0.5 uniform, 1 mirrored), pull (the other
    frames' mass on them over uniform) and entropy (over log T'; 1 uniform), at the first evaluation, when
    forced cross-attention ended (`model.forced_attention_steps`; NaN for runs never forced) and at the end.

    The paper's first step has the initial frames "linked with all informative frames": far-reaching
    attention raises the reach, evenly spread attention the entropy; forcing on the first frames against
    forcing on the centre (or none) says whether it is the forced frame that moves them.
    """
    rows = []
    for run in finished.itertuples(index=False):
        blocks = range(1, int(run.layers) + 1)
        reach = {b: reader(run.run_id, f"self_initial_reach_{b}") for b in blocks}
        highest = {b: curve.max() for b, curve in reach.items() if not curve.empty}
        if not highest:
            continue
        block = max(highest, key=lambda b: -math.inf if math.isnan(highest[b]) else highest[b])
        forced = reader.param(run.run_id, "model.forced_attention_steps", 0.0)
        row = {"trial_key": run.trial_key, "cell": run.cell, "seed": run.seed, "kind": run.kind}
        row |= {"block": block, "forced_until": forced if forced > 0 else math.nan}
        for name in INITIAL_LINKS:
            curve = reader(run.run_id, f"self_initial_{name}_{block}")
            first = float(curve.iloc[0]) if len(curve) else math.nan
            row |= {f"{name}_first": first, f"{name}_forced": _at(curve, row["forced_until"])}
            row[f"{name}_end"] = _at(curve, math.inf)
        rows.append(row)
    return pd.DataFrame(rows)


# What is imposed on a run, as the trial records it at every evaluation (trainers.reported).
INTERVENTION_CURVES = ("mhsa_scale", "learned_attention_share")
FOLLOW_UP_CELLS = 2  # induced cells to re-run with more seeds: those whose encoder read reversed longest
FLIP_RANGE = (0.15, 0.85)  # an induced cell flipping this often is worth a study of its own


def settled_at(curves: list[pd.Series]) -> float:
    """The first evaluation from which every curve keeps its last value (NaN if none was recorded)."""
    curves = [c for c in curves if not c.empty]
    if not curves:
        return math.nan
    frame = pd.concat(curves, axis=1).sort_index().ffill()
    moving = frame.index[(frame != frame.iloc[-1]).any(axis=1)]
    later = frame.index[frame.index > moving.max()] if len(moving) else frame.index
    return float(later.min())


def interventions(reader: RunReader, finished: pd.DataFrame) -> pd.DataFrame:
    """Per finished run with something imposed on it (an induced run, or one whose cross-attention was forced:
    the centre controls), what training did once the intervention held still: `settled_at`, the first
    evaluation with the MHSA scale and the learned attention's share at their final values; `scale_end`;
    the attention's direction outside any sink then (`direction_settled`), its lowest reading from then on
    and at the end; and the evaluations whose attention, G_0 and last block read as a flip
    (`reads_reversed`) before and from `settled_at`. Runs recorded before these curves show NaN."""
    rows = []
    for run in finished.itertuples(index=False):
        scale, share = (reader(run.run_id, key) for key in INTERVENTION_CURVES)
        imposed = bool((scale != 1.0).any()) or bool((share < 1.0).any())
        if not imposed and run.kind != "induced":
            continue
        start = settled_at([scale, share])
        direction = reader(run.run_id, "outside_sink_direction")
        g0, last = (reader(run.run_id, f"block_direction_{b}") for b in (0, run.layers))
        flips = reads_reversed(
            direction, g0.reindex(direction.index), last.reindex(direction.index), run.min_direction
        )
        after = direction[direction.index >= start]
        rows.append(
            {
                "trial_key": run.trial_key,
                "cell": run.cell,
                "seed": run.seed,
                "kind": run.kind,
                "label": run.label,
                "settled_at": start,
                "scale_end": _at(scale, math.inf),
                "direction_settled": _at(direction, start),
                "lowest_after": float(after.min()) if len(after) else math.nan,
                "direction_end": _at(direction, math.inf),
                "reversed_encoder_before": int(flips[flips.index < start].sum()) if len(after) else math.nan,
                "reversed_encoder_after": int(flips[flips.index >= start].sum()) if len(after) else math.nan,
            }
        )
    return pd.DataFrame(rows)


def follow_up_lines(stats: IncidenceReport, finished: pd.DataFrame) -> list[str]:
    """What the induced cells call for next: the FOLLOW_UP_CELLS whose encoder read reversed at the most
    evaluations (`reversed_encoder_evaluations`, the detector's count), and any cell whose decided runs
    flipped at a rate within FLIP_RANGE, with its Wilson interval."""
    induced = finished[finished["kind"] == "induced"]
    if induced.empty:
        return []
    longest = (
        induced.groupby("cell", sort=False)["reversed_encoder_evaluations"]
        .max()
        .sort_values(ascending=False, kind="stable")
    )
    kept = longest[longest > 0].head(FOLLOW_UP_CELLS)
    if kept.empty:
        lines = [
            "- No induced cell's encoder read reversed (attention, G_0 and last block) at any evaluation."
        ]
    else:
        named = ", ".join(f"`{cell}` ({int(n)} evaluations)" for cell, n in kept.items())
        lines = [f"- Longest reversed encoder, to re-run with more seeds: {named}."]
    cells = stats.cells[stats.cells["kind"] == "induced"]
    low, high = FLIP_RANGE
    flipping = [c for c in cells.itertuples() if not math.isnan(c.rate) and low <= c.rate <= high]
    for c in flipping:
        lines.append(
            f"- `{c.cell}` flipped in {int(c.reversed)} of {int(c.reversed + c.normal)} decided runs "
            f"({c.rate:.0%} [{c.ci_low:.0%}, {c.ci_high:.0%}]): a study of its own, mitigations beside it."
        )
    if not flipping:
        lines.append(
            f"- No induced cell flipped at a rate between {low:.0%} and {high:.0%} of its decided runs."
        )
    return lines


def mechanism(reader: RunReader, finished: pd.DataFrame) -> pd.DataFrame:
    """MHSA/FFN ratio of the flipping block before the flip and at the end: a reversed run's own recorded
    figures; a run that did not flip, read from its curve at that block and the sweep's median flip step."""
    flipped = finished[finished["label"] == "reversed"]
    if flipped.empty:
        return pd.DataFrame()
    block = int(flipped["flip_block"].mode().iloc[0])
    flip_step = float(flipped["time_to_flip"].median())
    rows = []
    for run in finished.itertuples(index=False):
        if run.label == "reversed":
            b, before, after = int(run.flip_block), run.mhsa_ffn_ratio_before, run.mhsa_ffn_ratio_after
        else:
            b, ratio = block, reader(run.run_id, f"mhsa_ffn_ratio_{block}")
            before, after = _at(ratio, flip_step - 1), _at(ratio, math.inf)
        rows.append(
            {
                "trial_key": run.trial_key,
                "cell": run.cell,
                "label": run.label,
                "block": b,
                "ratio_before": before,
                "ratio_after": after,
            }
        )
    return pd.DataFrame(rows)


def dominance(reader: RunReader, finished: pd.DataFrame) -> pd.DataFrame:
    """Per cell, MHSA/FFN and MHSA/residual norm ratios of the block at the paper's depth (10 of 12, scaled to
    the run's depth): first evaluation, maximum, end. Does self-attention come to dominate?"""
    rows = []
    for run in finished.itertuples(index=False):
        block = paper_depth(run.layers)
        ratio = reader(run.run_id, f"mhsa_ffn_ratio_{block}")
        residual = reader(run.run_id, f"mhsa_residual_ratio_{block}")
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


def curves(reader: RunReader, finished: pd.DataFrame, key: str) -> pd.DataFrame:
    """Long-format curves (cell, trial_key, step, value) of metric `key`; `{depth}` in the key is replaced by
    the block at the paper's depth (10 of 12) of each run."""
    parts = []
    for run in finished.itertuples(index=False):
        name = key.replace("{depth}", str(paper_depth(run.layers)))
        series = reader(run.run_id, name)
        parts.append(
            pd.DataFrame(
                {"cell": run.cell, "trial_key": run.trial_key, "step": series.index, "value": series}
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def write_plots(reader: RunReader, finished: pd.DataFrame, directory: Path, name: str) -> list[Path]:
    """Attention direction, MHSA/residual ratio (paper's depth) and the cross-attention lift on the initial
    frames over training, one line per run."""
    from sweep.plots import plot_curves  # matplotlib only when plots are asked for

    return [
        plot_curves(
            curves(reader, finished, "attention_direction"),
            directory / f"{name}_attention_direction.png",
            "value",
            f"{name}: cross-attention direction (+1 diagonal, -1 anti-diagonal)",
            "attention direction",
            ylim=(-1.05, 1.05),
        ),
        plot_curves(
            curves(reader, finished, "mhsa_residual_ratio_{depth}"),
            directory / f"{name}_mhsa_residual.png",
            "value",
            f"{name}: ||MHSA|| / ||residual|| at the paper's depth",
            "MHSA / residual",
        ),
        plot_curves(
            curves(reader, finished, "cross_initial_lift"),
            directory / f"{name}_cross_initial_lift.png",
            "value",
            f"{name}: cross-attention on the initial frames, relative to uniform",
            "lift over uniform",
        ),
    ]


# A run's last readings in the per-run table, in the order a reader checks them: learnt, which way, how sharp,
# the start-edge sink, the encoder's gradient maps, the most backward reading on the way.
RUN_FIGURES = (
    "accuracy",
    "attention_direction",
    "outside_sink_direction",
    "attention_peak",
    "attention_focus",
    "word_overlap",
    "cross_initial_lift",
    "max_cross_initial_lift",
    "g0_direction",
    "encoder_direction",
    "min_attention_direction",
)
RUNS_TABLE = "runs.csv"
ATTENTION_MAP = "attention.png"  # the trial's last cross-attention map, an artifact of its run


def settled_from(labels: pd.Series, label: str) -> float:
    """The first step from which every evaluation's label (`label_code` curve) was the run's final `label`;
    NaN for an undecided run or one whose last evaluation disagrees."""
    if label == "undecided" or labels.empty or labels.iloc[-1] != LABEL_CODES[label]:
        return math.nan
    other = labels.index[labels != LABEL_CODES[label]]
    held = labels.index[labels.index > other.max()] if len(other) else labels.index
    return float(held.min())


def undecided_evaluations(reason_codes: pd.Series) -> str:
    """How many of the run's evaluations were undecided, by reason (`reason_code` curve): "sink 2"."""
    counts = reason_codes.value_counts()
    return ", ".join(
        f"{reason} {int(counts[code])}" for reason, code in REASON_CODES.items() if code in counts.index
    )


def runs(reader: RunReader, finished: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: label (reason), the step it settled from, its undecided evaluations by reason
    and its last readings (those of RUN_FIGURES the sweep recorded)."""
    rows = []
    for run in finished.itertuples(index=False):
        rows.append(
            {
                "settled_from": settled_from(reader(run.run_id, "label_code"), run.label),
                "undecided_evaluations": undecided_evaluations(reader(run.run_id, "reason_code")),
            }
        )
    figures = [f for f in RUN_FIGURES if f in finished.columns]
    ids = ["trial_key", "cell", "seed", "kind", "label", "reason", "steps"]
    table = finished[[c for c in ids if c in finished.columns]].reset_index(drop=True)
    if "reason" in table:
        table["reason"] = table["reason"].fillna("")
    return pd.concat([table, pd.DataFrame(rows), finished[figures].reset_index(drop=True)], axis=1)


def fetch_attention_maps(reader: RunReader, finished: pd.DataFrame, directory: Path, name: str) -> list:
    """Each finished run's last cross-attention map, copied into `directory` as
    `<name>_<cell>_seed<seed>_attention.png` (not by trial key: keys repeat across pooled sweeps); returns
    (run, path) for the runs that have one."""
    directory.mkdir(parents=True, exist_ok=True)
    fetched = []
    for run in finished.itertuples(index=False):
        cell = re.sub(r"[^A-Za-z0-9._=-]+", "-", str(run.cell))
        target = directory / f"{name}_{cell}_seed{run.seed}_attention.png"
        if reader.attention_map(run.run_id, target):
            fetched.append((run, target))
    return fetched


def _markdown(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    return frame.to_markdown(index=False, floatfmt=floatfmt) if len(frame) else "(none)"


def design_lines(record: SweepRecord) -> list[str]:
    """What the sweep compares: its search, factors, cells by kind and each family's baseline."""
    design = record.design
    how = "declared" if design.baseline_declared else f"the first {design.kinds.get(design.baseline)} cell"
    baseline = f"`{design.baseline}` ({how})" if design.baseline else "none"
    others = [
        f"{family} baseline: `{cell}`" for family, cell in design.baselines.items() if family != "natural"
    ]
    controls = ", ".join(f"`{c}`" for c in design.control_cells) or "none"
    kinds = ", ".join(f"{len(design.cells_of(kind))} {kind}" for kind in KINDS if design.cells_of(kind))
    lines = [
        "### Design",
        "",
        f"Search: {design.search}; factors: {', '.join(f'`{f}`' for f in design.factors) or 'none'}; "
        f"baseline cell: {baseline}"
        + "".join(f"; {text}" for text in others)
        + f"; control cells: {controls}"
        + (f"; cells by kind: {kinds}" if kinds else "")
        + (f"; seeds: {design.seeds}" if design.seeds else "")
        + ".",
        "",
    ]
    if len(design.baselines) > 1:
        lines += [
            "Rates never pool two kinds of run, and each cell is compared with the baseline of its family "
            "(natural and mitigation cells with the natural baseline, induced cells with the induced one).",
            "",
        ]
    if design.legacy:
        lines += ["(This sweep predates recorded designs: factors read from its params, no baseline.)", ""]
    return lines


def incidence_lines(stats: IncidenceReport) -> list[str]:
    """Incidence per cell (its kind, label counts, the rate with its interval, why runs are undecided), then
    the runs of each kind pooled, one kind at a time."""
    cells = stats.cells.copy()
    cells["rate [95% CI]"] = [
        "-" if math.isnan(r.rate) else f"{r.rate:.0%} [{r.ci_low:.0%}, {r.ci_high:.0%}]"
        for r in cells.itertuples()
    ]
    cells["undecided: why"] = [reasons_text(row) for row in stats.cells.to_dict("records")]
    # n counts runs without an outcome yet (an interrupted sweep's): show how many, when there are any.
    counts = ["n", "reversed", "normal", "undecided", "failed"] + (
        ["unfinished"] if cells["unfinished"].any() else []
    )
    why = ["undecided: why"] if cells["undecided: why"].any() else []
    columns = ["cell", "kind", *stats.factors, *counts, "rate [95% CI]", *why]
    table = _markdown(cells[[c for c in columns if c in cells]])
    return ["### Incidence", "", table, "", *(f"- {line}" for line in stats.kind_lines()), ""]


def comparison_lines(stats: IncidenceReport) -> list[str]:
    """Fisher tests of each cell against its family's baseline, and the logistic regression, as Markdown."""
    lines = []
    for baseline, part in stats.fisher.groupby("baseline", sort=False):
        table = _markdown(part.drop(columns="baseline"), ".4g")
        lines += [f"### Fisher exact tests against `{baseline}`", "", table, ""]
    if stats.baseline_cell and stats.fisher.empty:  # a baseline alone in its family: nothing to compare
        lines += [f"### Fisher exact tests against `{stats.baseline_cell}`", "", "(none)", ""]
    return lines + ["### Logistic regression", "", "```", stats.regression_summary, "```", ""]


def backward_lines(finished: pd.DataFrame) -> list[str]:
    """The backward phase per cell: runs whose attention read reversed at some evaluation."""
    return [
        "### Backward phase (attention direction <= -min_direction, 0.5 by default, at some evaluation)",
        "",
        "`reversed_encoder`: evaluations whose attention, G_0 and last-block directions all read as a flip "
        "(accuracy and attention peak not required). `backward_from` / `_to`: first and last such step.",
        "",
        _markdown(backward_phase(finished).reset_index(), ".2f"),
        "",
    ]


def first_step_lines(finished: pd.DataFrame) -> list[str]:
    """The paper's first step per cell (none for sweeps recorded before its figures)."""
    initial = first_step(finished)
    if initial.empty:
        return []
    return [
        "### The paper's first step: the initial frames (running maxima over training)",
        "",
        "`cross_initial_lift`: cross-attention mass on the first `detector.initial_frames` encoder "
        "frames over its uniform share (1: uniform). `self_initial_reach`: the initial frames' "
        "self-attention mass on the utterance's far half, any block (0.5 uniform, 0 local, 1 mirrored). "
        "`backward_fraction`: utterances whose attention reads backwards at one evaluation.",
        "",
        _markdown(initial.reset_index()),
        "",
    ]


def sink_lines(reader: RunReader, finished: pd.DataFrame) -> list[str]:
    """The start-edge sink of each run over training, and what became of it (none for runs without curves)."""
    table = sinks(reader, finished)
    if table.empty:
        return []
    fates = table["fate"].value_counts()
    counts = ", ".join(f"{fate} {int(fates[fate])}" for fate in SINK_FATES if fate in fates.index)
    rules = "; ".join(f"`{fate}`: {rule}" for fate, rule in SINK_FATES.items())
    return [
        "### The start-edge sink over training, and what became of it",
        "",
        "`sink_from`: the first evaluation whose mean cross-attention lift on the initial frames reached "
        "`detector.sink_lift`; `sink_evaluations` of `evaluations` did. `outside_sink_end`: the attention's "
        "direction outside the sink at the end; `gradient_maps_end`: G_0 (the input) to the last block; "
        "`reach_max`: the initial frames' highest self-attention mass on the far half (0.5 uniform) and "
        f"its block. Fates, checked in this order: {rules}.",
        "",
        _markdown(table),
        "",
        f"Fates: {counts}.",
        "",
    ]


def initial_links_lines(reader: RunReader, finished: pd.DataFrame) -> list[str]:
    """The initial frames' self-attention per run (none for runs recorded without its curves)."""
    table = initial_links(reader, finished)
    if table.empty:
        return []
    if table["forced_until"].isna().all():
        table = table.drop(columns=[f"{name}_forced" for name in INITIAL_LINKS] + ["forced_until"])
    return [
        "### The initial frames' self-attention: how far, how evenly, how much read",
        "",
        "In the block whose reach went highest: `reach`, the initial frames' self-attention mass on the far "
        "half (0.5 uniform, 0 local, 1 mirrored); `pull`, the other frames' mass on them over uniform; "
        "`entropy`, the initial frames' attention entropy over log T' (1 uniform, 0 one frame). At the first "
        "evaluation, when forced cross-attention ended (`forced_until`, runs forced only) and at the end.",
        "",
        _markdown(table),
        "",
    ]


def intervention_lines(reader: RunReader, finished: pd.DataFrame, stats: IncidenceReport) -> list[str]:
    """The runs with something imposed on them, after it held still, and what the induced cells call for
    (none in a sweep without such runs)."""
    table = interventions(reader, finished)
    if table.empty:
        return []
    return [
        "### The interventions: what training did once they held still",
        "",
        "`settled_at`: the first evaluation with the MHSA scale (`scale_end`) and the decoder's learned "
        "share of its cross-attention at their final values. Directions are the attention's outside any "
        "start-edge sink, at `settled_at`, lowest from then on, and at the end; `reversed_encoder_*`: "
        "evaluations whose attention, G_0 and last block all read as a flip, before and from `settled_at`.",
        "",
        _markdown(table),
        "",
        *follow_up_lines(stats, finished),
        "",
    ]


def dominance_lines(reader: RunReader, finished: pd.DataFrame) -> list[str]:
    """The paper's second step per cell: MHSA/FFN and MHSA/residual norm ratios at the paper's depth."""
    return [
        "### Self-attention dominance: MHSA/FFN and MHSA/residual norm ratios at the paper's depth (medians)",
        "",
        _markdown(dominance(reader, finished)),
        "",
    ]


def reversed_lines(finished: pd.DataFrame) -> list[str]:
    """Every reversed run with the readings that verify it, and how many pass every check."""
    flipped = finished[finished["label"] == "reversed"]
    verify = flipped[
        ["trial_key", "cell", "kind", "attention_direction", "g0_direction", "encoder_direction"]
        + ["flip_block", "time_to_flip"]
    ]
    lines = ["### Reversed runs, verified", "", _markdown(verify), ""]
    if len(flipped):
        ok = reads_reversed(
            flipped["attention_direction"],
            flipped["g0_direction"],
            flipped["encoder_direction"],
            flipped["min_direction"],
        )
        lines += [f"{int(ok.sum())} of {len(flipped)} reversed runs pass every check.", ""]
    return lines


def mechanism_lines(reader: RunReader, finished: pd.DataFrame) -> list[str]:
    """Per family of kinds, the flipping block's MHSA/FFN ratio before and after the flip, next to the runs
    that did not flip; constructed flips (controls) say nothing about the mechanism and are left out."""
    lines = []
    for family, kinds in FAMILIES.items():
        runs = finished[finished["kind"].isin(kinds)]
        who = FAMILY_TEXT[family]
        if (runs["label"] == "reversed").any():
            ratios = mechanism(reader, runs)
            summary = ratios.groupby("label")[["ratio_before", "ratio_after"]].median().reset_index()
            summary.insert(1, "runs", ratios.groupby("label").size().values)
            lines += [f"### Mechanism, {who} runs: MHSA/FFN norm ratio of the flipping block (medians)", ""]
            lines += [_markdown(summary), "", _markdown(ratios[ratios["label"] == "reversed"]), ""]
        elif len(runs):
            lines += [f"No {who} run reversed, so there is no flipping block to read the mechanism from.", ""]
    return lines


def runs_lines(reader: RunReader, finished: pd.DataFrame, tables: Path | None = None) -> list[str]:
    """Every finished run, one row each (written to `tables/runs.csv` too when given)."""
    table = runs(reader, finished)
    if tables is not None:
        tables.mkdir(parents=True, exist_ok=True)
        table.to_csv(tables / RUNS_TABLE, index=False)
    reasons = ", ".join(UNDECIDED_REASONS)
    return [
        "### Each run: its label, when it settled, and its last readings",
        "",
        "`settled_from`: the first step from which every evaluation gave the run's final label. "
        f"`undecided_evaluations`: its evaluations that were undecided, by reason ({reasons}). "
        "`outside_sink_direction`: the attention's direction outside a start-edge sink; "
        "`cross_initial_lift`: the cross-attention on the initial frames over uniform (last / "
        "`max_`: highest); `g0_direction` / `encoder_direction`: the encoder input's and the last block's "
        "gradient maps; `min_attention_direction`: the most backward reading at any evaluation (outside any "
        "sink).",
        "",
        _markdown(table),
        "",
    ]


def plot_lines(reader: RunReader, finished: pd.DataFrame, plots: Path, record: SweepRecord) -> list[str]:
    """Every run's curves drawn into `plots`, and each run's last cross-attention map fetched there, as
    Markdown images (a map's caption: cell, seed, label)."""
    drawn = write_plots(reader, finished, plots, record.space_names)
    maps = fetch_attention_maps(reader, finished, plots, record.space_names)
    lines = [f"![{p.stem}]({p.as_posix()})" for p in drawn]
    for run, path in maps:
        why = f" ({run.reason})" if isinstance(run.reason, str) and run.reason else ""
        lines.append(f"![{run.cell}, seed {run.seed}: {run.label}{why}]({path.as_posix()})")
    return lines + [""]


def closing_lines(record: SweepRecord, stats: IncidenceReport) -> list[str]:
    """The sweep's wall time and the statistics' notes."""
    lines = []
    if record.wall_seconds is not None:
        pooled = f" ({len(record.sources)} sweeps, summed)" if len(record.sources) > 1 else ""
        lines += [f"Sweep wall time: {record.wall_seconds:.0f} s{pooled}.", ""]
    if stats.notes:
        lines += ["Notes:", "", *(f"- {note}" for note in stats.notes), ""]
    return lines


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


def kept_lines(reader: RunReader) -> list[str]:
    """Which kept folders had no curves (their runs' curve-read figures are missing above)."""
    return [
        f"({folder} was kept without curves: its runs' settling steps, undecided evaluations, dominance and "
        "curves are not shown.)"
        for folder in reader.kept.without_curves
    ]


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


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())

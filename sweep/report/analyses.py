"""What the report computes of a study's finished runs, as tables: per cell (the backward phase, the first
step's running maxima, dominance) and per run (the start-edge sink and its fate, the initial frames'
self-attention, the interventions once they held still, the mechanism, each run's last readings).

Each reads the runs' recorded outcome (`finished`, from `reader.finished_runs`) and, where it needs one, a
metric's curve over training (`RunReader`); none writes anything. `sections` turns them into Markdown.
"""

from __future__ import annotations

import math

import pandas as pd

from sweep.report.reader import DEFAULT_SINK_LIFT, RunReader
from trainers.detector.verdict import LABEL_CODES, REASON_CODES, reads_reversed


def paper_depth(layers: int) -> int:
    """The block at the paper's flipping depth (10 of 12), scaled to a run's depth."""
    return max(1, round(layers * 10 / 12))


def _at(curve: pd.Series, step: float) -> float:
    """The curve's last reading at or before `step` (NaN if none)."""
    if curve.empty or math.isnan(step):
        return math.nan
    before = curve[curve.index <= step]
    return float(before.iloc[-1]) if len(before) else math.nan


def outside_sink(outside: pd.Series | None, whole: pd.Series) -> pd.Series:
    """The attention's direction outside any start-edge sink, the one the verdict reads; where a run was
    recorded before the sink was read apart (`outside` missing, empty or NaN), the whole attention's.
    Per-run columns (rows aligned) or one run's curves (steps aligned) alike."""
    return whole if outside is None else outside.combine_first(whole)


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


def farthest_reach(reader: RunReader, run) -> tuple[int | None, float]:
    """The block whose initial frames' self-attention reach (`self_initial_reach_<b>`, mass on the far half)
    ever went highest, and that reach; (None, NaN) for a run recorded without reach curves."""
    highest = {b: reader(run.run_id, f"self_initial_reach_{b}").max() for b in range(1, int(run.layers) + 1)}
    recorded = {b: reach for b, reach in highest.items() if not math.isnan(reach)}
    if not recorded:
        return None, math.nan
    block = max(recorded, key=recorded.get)
    return block, recorded[block]


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
        reach_block, reach_max = farthest_reach(reader, run)
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
                "reach_max": reach_max,
                "reach_block": reach_block,
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
        block, _ = farthest_reach(reader, run)
        if block is None:
            continue
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


def block_directions(reader: RunReader, run) -> pd.DataFrame:
    """One run's encoder gradient maps over training: steps x maps (column 0: G_0, the input; column l:
    block l), each entry a map's direction (+1 forwards, -1 backwards). Empty when none were recorded."""
    maps = {b: reader(run.run_id, f"block_direction_{b}") for b in range(run.layers + 1)}
    return pd.DataFrame({b: curve for b, curve in maps.items() if len(curve)}).sort_index()


def imposed(reader: RunReader, run) -> pd.Series:
    """By evaluation step, whether an intervention acted there: the MHSA branch scaled (not x1) or the
    decoder's cross-attention forced in part (its learned share under 1). Empty when neither was recorded."""
    scale = reader(run.run_id, "mhsa_scale")
    share = reader(run.run_id, "learned_attention_share")
    acting = [on for on in (scale != 1.0, share < 1.0) if len(on)]
    if not acting:
        return pd.Series(dtype=bool)
    return pd.concat(acting, axis=1).fillna(False).any(axis=1).sort_index()


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

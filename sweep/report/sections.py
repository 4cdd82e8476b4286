"""The report's sections as Markdown, one function a section, in the order the report prints them."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from sweep.kinds import FAMILIES, FAMILY_TEXT, KINDS, reasons_text
from sweep.report.analyses import (
    INITIAL_LINKS,
    SINK_FATES,
    backward_phase,
    block_directions,
    curves,
    dominance,
    first_step,
    imposed,
    initial_links,
    interventions,
    mechanism,
    outside_sink,
    runs,
    sinks,
)
from sweep.report.reader import RunReader
from sweep.results import SweepRecord
from sweep.stats import IncidenceReport, wilson_interval
from trainers.detector.verdict import UNDECIDED_REASONS, reads_reversed

FOLLOW_UP_CELLS = 2  # induced cells to re-run with more seeds: those whose encoder read reversed longest
FLIP_RANGE = (0.15, 0.85)  # an induced cell flipping this often is worth a study of its own


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
    return lines + unflipped_bound_lines(cells, induced)


def unflipped_bound_lines(cells: pd.DataFrame, induced: pd.DataFrame) -> list[str]:
    """How sure a null is, per induced cell with no `reversed` run: the Wilson 95 % interval of ending
    `reversed` over its finished runs. An `undecided` run did not end `reversed`, so it counts; over decided
    runs alone a cell whose runs all stay undecided would say nothing at all. Beside it, how many of those
    runs ended with every direction reading a flip (`reads_reversed` on their last attention, G_0 and last
    block) yet stayed undecided, for any reason: a reversed encoder the decoder did not learn to read."""
    unflipped = cells[(cells["kind"] == "induced") & (cells["reversed"] == 0)]
    attention = outside_sink(induced.get("outside_sink_direction"), induced["attention_direction"])
    ended = reads_reversed(
        attention,
        induced["g0_direction"],
        induced["encoder_direction"],
        induced["min_direction"],
    )
    ended_reversed_encoder = ended.groupby(induced["cell"]).sum()
    lines = []
    for c in unflipped.itertuples():
        runs = int(c.reversed + c.normal + c.undecided)
        if runs == 0:
            continue
        _, high = wilson_interval(0, runs)
        unread = int(ended_reversed_encoder.get(c.cell, 0))
        unread_low, unread_high = wilson_interval(unread, runs)
        lines.append(
            f"  - `{c.cell}`: 0 of {runs} [0%, {high:.0%}] "
            f"({int(c.normal)} normal, {int(c.undecided)} undecided; {unread} of {runs} ended with the "
            f"encoder reading reversed [{unread_low:.0%}, {unread_high:.0%}])"
        )
    if not lines:
        return []
    return [
        "- Induced cells with no `reversed` run: ended `reversed` in 0 of their finished runs, Wilson 95 % "
        "(an `undecided` run counts as one that did not end reversed), and how many ended with attention, "
        "G_0 and last block all reading a flip but undecided, Wilson 95 %:",
        *lines,
    ]


def write_plots(reader: RunReader, finished: pd.DataFrame, directory: Path, name: str) -> list[Path]:
    """Attention direction, MHSA/residual ratio (paper's depth) and the cross-attention lift on the initial
    frames over training, one line per run, as `<name>_<figure>.png` (`name`: the record's `figure_name`)."""
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


RUNS_TABLE = "runs.csv"


def run_figure(directory: Path, name: str, run, figure: str) -> Path:
    """Where one run's figure goes: `<name>_<cell>_seed<seed>_<figure>.png` (by cell and seed, not by trial
    key: keys repeat across pooled sweeps)."""
    cell = re.sub(r"[^A-Za-z0-9._=-]+", "-", str(run.cell))
    return directory / f"{name}_{cell}_seed{run.seed}_{figure}.png"


def fetch_attention_maps(reader: RunReader, finished: pd.DataFrame, directory: Path, name: str) -> list:
    """Each finished run's last cross-attention map, copied into `directory` (`run_figure`, `attention`);
    returns (run, path) for the runs that have one."""
    directory.mkdir(parents=True, exist_ok=True)
    fetched = []
    for run in finished.itertuples(index=False):
        target = run_figure(directory, name, run, "attention")
        if reader.attention_map(run.run_id, target):
            fetched.append((run, target))
    return fetched


def write_block_maps(reader: RunReader, finished: pd.DataFrame, directory: Path, name: str) -> list:
    """Each finished run's gradient maps over training under its attention's direction (`run_figure`,
    `blocks`): where in the encoder, and from when, the input runs backwards. Returns (run, path) for the
    runs that recorded them."""
    from sweep.plots import plot_block_directions  # matplotlib only when plots are asked for

    drawn = []
    for run in finished.itertuples(index=False):
        blocks = block_directions(reader, run)
        if blocks.empty:
            continue
        attention = outside_sink(
            reader(run.run_id, "outside_sink_direction"), reader(run.run_id, "attention_direction")
        )
        title = f"{run.cell}, seed {run.seed}: the encoder's gradient maps over training"
        target = run_figure(directory, name, run, "blocks")
        drawn.append((run, plot_block_directions(blocks, attention, target, title, imposed(reader, run))))
    return drawn


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
    drawn = write_plots(reader, finished, plots, record.figure_name)
    maps = fetch_attention_maps(reader, finished, plots, record.space_names)
    blocks = write_block_maps(reader, finished, plots, record.space_names)
    lines = [f"![{p.stem}]({p.as_posix()})" for p in drawn]
    for run, path in maps:
        why = f" ({run.reason})" if isinstance(run.reason, str) and run.reason else ""
        lines.append(f"![{run.cell}, seed {run.seed}: {run.label}{why}]({path.as_posix()})")
    for run, path in blocks:
        lines.append(f"![{run.cell}, seed {run.seed}: gradient maps over training]({path.as_posix()})")
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


def kept_lines(reader: RunReader) -> list[str]:
    """Which kept folders had no curves (their runs' curve-read figures are missing above)."""
    return [
        f"({folder} was kept without curves: its runs' settling steps, undecided evaluations, dominance and "
        "curves are not shown.)"
        for folder in reader.kept.without_curves
    ]

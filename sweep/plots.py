"""Figures of a sweep's incidence statistics (PNG files for the parent run's `plots/` artifacts).

Every function draws on a bare `matplotlib.figure.Figure` with an Agg canvas instead of going through
`pyplot`: nothing touches a display or pyplot's global figure list, so a figure lives only as long as the
call and needs no closing, even when the caller is a notebook with an interactive backend. Seaborn provides
the styling and the statistical plot types. With nothing to show, a function still writes a PNG that says so.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sweep.kinds import FAMILIES, KINDS
from sweep.stats import IncidenceReport, decided_runs, family_runs, level_order, prepare, varying_factors

LABEL_COLORS = {"normal": "#4c72b0", "reversed": "#c44e52", "undecided": "#8c8c8c", "failed": "#222222"}
STYLE = "whitegrid"
DPI = 110
MAX_ANNOTATED = 12  # most levels per panel that get a k/n label


def _level_text(level) -> str:
    """A factor level as a tick label: numbers with 3 significant digits, everything else as is."""
    if isinstance(level, float):
        return f"{level:.3g}"
    return str(level)


def _figure(panels: int = 1, panel_size: tuple[float, float] = (4.2, 3.4), max_columns: int = 3):
    """A styled Agg figure with `panels` axes laid out in rows of at most `max_columns`."""
    columns = max(1, min(panels, max_columns))
    rows = max(1, math.ceil(panels / columns))
    with sns.axes_style(STYLE):
        figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return figure, list(axes[:panels])


def _suptitle(figure: Figure, title: str) -> None:
    """The figure's title, wrapped to its width: a one-panel figure is narrower than most titles."""
    figure.suptitle(
        textwrap.fill(title, width=max(30, int(9 * figure.get_figwidth())), break_on_hyphens=False)
    )


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    figure.clear()  # drop the artists now rather than at garbage collection
    return path


def _message(path: str | Path, title: str, text: str) -> Path:
    """A placeholder figure: the title of the plot that would be here and why it is not."""
    figure, (ax,) = _figure(1, (5.0, 2.6))
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, wrap=True, transform=ax.transAxes)
    return _save(figure, path)


# ------------------------------------------------------------------------------------------------------------


def _rate_panels(report: IncidenceReport) -> list[tuple[str, str, pd.DataFrame]]:
    """(title, family, rows with level / decided / reversed / rate / ci) per panel: one per family and
    factor (the induced family's titled so), else one per cell."""
    panels = [
        (factor if family == "natural" else f"{factor} ({family})", family, part.reset_index(drop=True))
        for (family, factor), part in report.marginals.groupby(["family", "factor"], sort=False)
    ]
    if panels:
        return panels
    # No factors (e.g. a sweep of named mitigation cells): the cells themselves are the levels.
    cells = report.cells[~report.cells["control"]].rename(columns={"cell": "level"})
    return [("cell", "", cells.reset_index(drop=True))] if len(cells) else []


def plot_rate_by_factor(report: IncidenceReport, path: str | Path) -> Path:
    """Reversal rate per factor level with Wilson 95 % bars and k/n labels, one panel per factor and family
    of kinds, with the rate of the family's own kind (natural, induced) as a dashed line."""
    title = "Reversal rate by factor level (natural and mitigation runs; induced runs apart)"
    panels = _rate_panels(report)
    if not panels or all(part["decided"].sum() == 0 for _, _, part in panels):
        return _message(path, title, "no decided runs")
    figure, axes = _figure(len(panels))
    color = sns.color_palette()[3]
    for ax, (name, family, part) in zip(axes, panels, strict=True):
        x = np.arange(len(part))
        rate = part["rate"].to_numpy(dtype=float)
        below = np.nan_to_num(rate - part["ci_low"].to_numpy(dtype=float))
        above = np.nan_to_num(part["ci_high"].to_numpy(dtype=float) - rate)
        ax.errorbar(x, rate, yerr=[below, above], fmt="o", color=color, capsize=4, markersize=6)
        # k/n above each bar, so that 1/2 and 50/100 do not look alike; only where the labels fit, since a
        # sampled continuous factor can have one level per run.
        if len(part) <= MAX_ANNOTATED:
            for xi, row in zip(x, part.itertuples(index=False), strict=True):
                top = 0.0 if math.isnan(row.ci_high) else row.ci_high
                ax.annotate(
                    f"{row.reversed}/{row.decided}",
                    (xi, top),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                )
        overall = report.rate_of(family)["rate"] if family else math.nan
        if not math.isnan(overall):
            label = f"all {family} runs {overall:.0%}"
            ax.axhline(overall, color="0.5", linestyle="--", linewidth=1, label=label)
            ax.legend(loc="best", fontsize=8, frameon=False)
        ticks = [_level_text(v) for v in part["level"]]
        crowded = sum(len(t) + 3 for t in ticks) > 40  # roughly what fits under one panel unrotated
        ax.set_xticks(x, ticks, rotation=45 if crowded else 0, ha="right" if crowded else "center")
        ax.set_xlim(-0.5, len(part) - 0.5)
        ax.set_ylim(-0.02, 1.1)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("reversed / decided")
    _suptitle(figure, title)
    return _save(figure, path)


# ------------------------------------------------------------------------------------------------------------


def plot_heatmap(report: IncidenceReport, path: str | Path, factors: Sequence[str] | None = None) -> Path:
    """Reversal rate over the first two factors with more than one level, each square annotated k/n, within
    the first family of kinds where two factors vary (natural and mitigation runs, else induced runs).

    Runs are pooled over any further factors (named in the subtitle).
    """
    prepared = prepare(report.trials, report.factors)
    families = [f for f in FAMILIES if len(varying_factors(family_runs(prepared, f), report.factors)) >= 2]
    family = families[0] if families else "natural"
    title = f"Reversal rate over two factors ({' and '.join(FAMILIES[family])} runs)"
    trials = family_runs(prepared, family)
    chosen = list(factors) if factors else varying_factors(trials, report.factors)[:2]
    if len(chosen) < 2:
        return _message(path, title, "needs two factors with more than one level")
    decided = decided_runs(trials)
    if decided.empty:
        return _message(path, title, "no decided runs")
    rows_f, cols_f = chosen
    reversed_ = decided.assign(k=decided["label"] == "reversed").groupby([rows_f, cols_f])["k"]
    k = reversed_.sum().unstack()
    n = reversed_.count().unstack()
    k = k.reindex(index=level_order(trials[rows_f]), columns=level_order(trials[cols_f]))
    n = n.reindex(index=k.index, columns=k.columns)
    rate = (k / n).astype(float)
    rate.index = [_level_text(v) for v in rate.index]
    rate.columns = [_level_text(v) for v in rate.columns]
    labels = np.array(
        [
            [f"{int(a)}/{int(b)}" if b == b and b > 0 else "0/0" for a, b in zip(kr, nr, strict=True)]
            for kr, nr in zip(k.fillna(0).to_numpy(), n.to_numpy(), strict=True)
        ]
    )
    figure, (ax,) = _figure(1, (1.6 + 1.3 * len(k.columns), 1.6 + 0.9 * len(k.index)))
    sns.heatmap(
        rate,
        ax=ax,
        vmin=0.0,
        vmax=1.0,
        cmap="rocket_r",
        annot=labels,
        fmt="",
        linewidths=0.5,
        cbar_kws={"label": "reversed / decided"},
    )
    ax.set_ylabel(rows_f)
    ax.set_xlabel(cols_f)
    pooled = [f for f in varying_factors(trials, report.factors) if f not in chosen]
    ax.set_title(title + (f"\npooled over {', '.join(pooled)}" if pooled else ""), fontsize=10)
    return _save(figure, path)


# ------------------------------------------------------------------------------------------------------------


def plot_direction_distribution(trials: pd.DataFrame, path: str | Path) -> Path:
    """Histogram of the final attention direction, stacked by label; one panel per run kind (natural,
    mitigation, induced runs, detector controls)."""
    title = "Attention direction by label"
    trials = prepare(trials)
    trials = trials[trials["attention_direction"].notna()]
    if trials.empty:
        return _message(path, title, "no runs with an attention direction")
    names = {kind: f"{kind} runs" for kind in KINDS} | {"control": "detector controls"}
    groups = [(names[kind], trials[trials["kind"] == kind]) for kind in KINDS]
    groups = [(name, part) for name, part in groups if len(part)]
    figure, axes = _figure(len(groups), (5.0, 3.4))
    bins = np.linspace(-1.0, 1.0, 21)
    for ax, (name, part) in zip(axes, groups, strict=True):
        known = [label for label in LABEL_COLORS if (part["label"] == label).any()]
        other = sorted(set(part["label"]) - set(known))
        sns.histplot(
            data=part,
            x="attention_direction",
            hue="label",
            hue_order=known + other,
            palette={**LABEL_COLORS, **dict.fromkeys(other, "#bbbbbb")},
            multiple="stack",
            bins=bins,
            ax=ax,
        )
        ax.axvline(0.0, color="0.4", linewidth=1, linestyle=":")
        ax.set_xlim(-1.05, 1.05)
        ax.set_xlabel("attention direction (+1 diagonal, -1 anti-diagonal)")
        ax.set_ylabel("runs")
        ax.set_title(f"{name} (n = {len(part)})", fontsize=10)
    _suptitle(figure, title)
    return _save(figure, path)


# ------------------------------------------------------------------------------------------------------------


def plot_time_to_flip(curve: pd.DataFrame, path: str | Path) -> Path:
    """Kaplan-Meier curves of P(not yet reversed): one panel for all runs of each kind, one per factor that
    varies within a family of kinds (the `runs` each curve follows, in its title)."""
    title = "Time to flip (Kaplan-Meier; controls left out)"
    if curve is None or curve.empty:
        return _message(path, title, "no runs to follow")
    curve = curve if "runs" in curve.columns else curve.assign(runs="natural")
    panels = list(dict.fromkeys(zip(curve["runs"], curve["factor"], strict=True)))
    figure, axes = _figure(len(panels))
    for ax, (runs, factor) in zip(axes, panels, strict=True):
        part = curve[(curve["factor"] == factor) & (curve["runs"] == runs)]
        groups = list(dict.fromkeys(part["group"]))
        palette = sns.color_palette(n_colors=max(1, len(groups)))
        for color, group in zip(palette, groups, strict=True):
            line = part[part["group"] == group]
            median = line["median_time_to_flip"].iloc[0]
            label = str(group) + ("" if math.isnan(median) else f" (median {median:.0f})")
            ax.step(line["step"], line["survival"], where="post", color=color, label=label)
            ax.fill_between(
                line["step"],
                line["ci_low"],
                line["ci_high"],
                step="post",
                color=color,
                alpha=0.15,
                linewidth=0,
            )
        ax.axhline(0.5, color="0.6", linewidth=0.8, linestyle=":")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("training step")
        ax.set_ylabel("P(not yet reversed)")
        ax.set_title(f"{factor} ({runs} runs)", fontsize=10)
        ax.legend(fontsize=8, frameon=False, loc="lower left")
        if part["events"].sum() == 0:
            ax.text(0.5, 0.55, "no run reversed", ha="center", transform=ax.transAxes, color="0.4")
    _suptitle(figure, title)
    return _save(figure, path)


def plot_curves(
    curves: pd.DataFrame,
    path: str | Path,
    value: str,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One thin line per run of `value` over training steps, one panel per cell.

    `curves` has columns cell, trial_key, step and `value` (long format, as
    `sweep.report.analyses.curves` gives it).
    """
    if curves.empty:
        return _message(path, title, "no curves recorded")
    cells = list(dict.fromkeys(curves["cell"]))
    figure, axes = _figure(len(cells), (4.2, 3.0), max_columns=3)
    for ax, cell in zip(axes, cells, strict=True):
        part = curves[curves["cell"] == cell]
        sns.lineplot(part, x="step", y=value, units="trial_key", estimator=None, lw=0.9, alpha=0.7, ax=ax)
        ax.set_title(cell if len(cell) <= 48 else cell[:45] + "...", fontsize=8)
        ax.set_ylabel(ylabel)
        if ylim:
            ax.set_ylim(*ylim)
    _suptitle(figure, title)
    return _save(figure, path)


def plot_block_directions(
    blocks: pd.DataFrame, attention: pd.Series, path: str | Path, title: str, imposed: pd.Series | None = None
) -> Path:
    """Which way each part of the encoder carries the input, over training: one row per gradient map (G_0,
    the input, at the bottom; the last block on top), coloured by its direction (blue +1 forwards, red -1
    backwards), under the cross-attention's direction on the same steps. A reversed encoder is a red band
    over blue rows, and the row where the colour changes is the flipping block.

    `blocks` is `sweep.report.analyses.block_directions` (steps x maps); `attention` a direction by step;
    `imposed`, by step, whether an intervention acted there (shaded over the attention).
    """
    if blocks.empty:
        return _message(path, title, "no gradient maps recorded")
    with sns.axes_style(STYLE):
        figure = Figure(figsize=(7.5, 4.6), layout="constrained")
        FigureCanvasAgg(figure)
        top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[1, 2])
    top.plot(attention.index, attention.to_numpy(dtype=float), lw=1.2, color=sns.color_palette()[0])
    top.axhline(0.0, color="0.5", lw=0.6)
    if imposed is not None and imposed.any():
        top.fill_between(
            imposed.index,
            -1.05,
            1.05,
            where=imposed.to_numpy(dtype=bool),
            color="0.85",
            step="mid",
            label="intervention acting",
        )
        top.legend(loc="lower left", fontsize=7, frameon=False)
    top.set_ylim(-1.05, 1.05)
    top.set_ylabel("attention\ndirection")
    steps, maps = blocks.index.to_numpy(dtype=float), blocks.columns.to_numpy(dtype=float)
    mesh = bottom.pcolormesh(
        steps,
        maps,
        np.ma.masked_invalid(blocks.to_numpy(dtype=float).T),
        cmap="RdBu",
        vmin=-1.0,
        vmax=1.0,
        shading="nearest",
    )
    bottom.grid(False)
    bottom.set_yticks(maps, [f"G{int(m)}" for m in maps])
    bottom.set_xlabel("step")
    bottom.set_ylabel("gradient map")
    figure.colorbar(mesh, ax=[top, bottom], label="gradient map's direction", shrink=0.6)
    _suptitle(figure, title)
    return _save(figure, path)

"""A sweep's incidence report: every statistic at once, as MLflow metrics, a summary text and a table."""

from __future__ import annotations

import hashlib
import io
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from sweep.stats.regression import logistic_regression
from sweep.stats.survival import CURVE_COLUMNS, time_to_flip_curve
from sweep.stats.tables import (
    FISHER_COLUMNS,
    cell_table,
    fisher_vs_baseline,
    label_counts,
    marginal_rates,
    natural_runs,
    prepare,
    reversal_rate,
    varying_factors,
)

MAX_CURVES = 8  # most time-to-flip curves per factor in a report


_SEGMENT = re.compile(r"[^A-Za-z0-9_.\-]")


MAX_SEGMENT = 96  # MLflow metric names stop at 250 characters; a sampled cell name can be far longer


def metric_segment(text: Any) -> str:
    """One path segment of an MLflow metric name: letters, digits, `_ - .` only, never `.` or `..`, at most
    MAX_SEGMENT characters (a long one keeps its start and ends in a hash of the whole text)."""
    segment = _SEGMENT.sub("_", str(text))
    segment = re.sub(r"\.{2,}", "_", segment)
    if len(segment) > MAX_SEGMENT:
        digest = hashlib.sha1(str(text).encode()).hexdigest()[:10]
        segment = f"{segment[: MAX_SEGMENT - 11]}-{digest}"
    return segment if segment not in ("", ".") else "_"


def _segments(names: Iterable[Any]) -> dict[Any, str]:
    """Sanitised, unique segments for distinct names (a clash gets `-2`, `-3`, ...)."""
    out: dict[Any, str] = {}
    used: set[str] = set()
    for name in dict.fromkeys(names):
        base = candidate = metric_segment(name)
        i = 1
        while candidate in used:
            i += 1
            candidate = f"{base}-{i}"
        used.add(candidate)
        out[name] = candidate
    return out


@dataclass
class IncidenceReport:
    """Everything `incidence_report` computes about one sweep, ready for MLflow, files and the terminal."""

    factors: list[str]
    baseline_cell: str | None
    cells: pd.DataFrame
    marginals: pd.DataFrame
    fisher: pd.DataFrame
    regression: pd.DataFrame
    regression_summary: str
    time_to_flip: pd.DataFrame
    counts: dict[str, int]
    control_counts: dict[str, int]
    trials: pd.DataFrame = field(repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def overall(self) -> dict[str, float]:
        """Reversal rate of all natural decided runs with its Wilson 95 % interval."""
        rate, low, high = reversal_rate(self.counts["reversed"], self.counts["decided"])
        return {"rate": rate, "ci_low": low, "ci_high": high}

    def metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow; names use letters, digits and `_ - . /` only. Rates may be nan."""
        out: dict[str, float] = {f"overall/{k}": v for k, v in self.overall.items()}
        out.update({f"overall/n_{k}" if k != "n" else "overall/n": v for k, v in self.counts.items()})
        out.update({f"control/n_{k}" if k != "n" else "control/n": v for k, v in self.control_counts.items()})
        names = _segments(self.cells["cell"])
        for row in self.cells.itertuples(index=False):
            if row.control:
                prefix = f"control/{names[row.cell]}"
                out[f"{prefix}/sensitivity"] = row.rate
            else:
                prefix = f"cell/{names[row.cell]}"
                out[f"{prefix}/rate"] = row.rate
                out[f"{prefix}/n_reversed"] = row.reversed
            out[f"{prefix}/ci_low"] = row.ci_low
            out[f"{prefix}/ci_high"] = row.ci_high
            out[f"{prefix}/n_decided"] = row.decided
            out[f"{prefix}/n_failed"] = row.failed
        factor_names = _segments(self.factors)
        for factor, part in self.marginals.groupby("factor", sort=False):
            levels = _segments(part["level"])
            for row in part.itertuples(index=False):
                out[f"marginal/{factor_names[factor]}/{levels[row.level]}/rate"] = row.rate
        for row in self.fisher.itertuples(index=False):
            out[f"fisher/{names[row.cell]}/p_value"] = row.p_value
        out["regression/estimable"] = float(len(self.regression) > 0)
        terms = _segments(self.regression["term"])
        for row in self.regression.itertuples(index=False):
            out[f"regression/{terms[row.term]}/odds_ratio"] = row.odds_ratio
            out[f"regression/{terms[row.term]}/p_value"] = row.p_value
        overall = self.time_to_flip[self.time_to_flip["factor"] == "all"]
        if len(overall):
            out["overall/median_time_to_flip"] = float(overall["median_time_to_flip"].iloc[0])
        return {k: float(v) for k, v in out.items()}

    def summary_text(self) -> str:
        """The plain-text contents of model_summary.txt."""
        c = self.counts
        rate = self.overall
        lines = [
            "flipsweep incidence summary",
            "",
            f"Natural runs: {c['n']} ({c['reversed']} reversed, {c['normal']} normal,"
            f" {c['undecided']} undecided, {c['failed']} failed).",
            f"Overall reversal rate over decided runs: {_rate_text(c['reversed'], c['decided'], rate)}.",
            f"Control runs: {self.control_counts['n']} (detector sensitivity per control cell below).",
            f"Factors: {', '.join(self.factors) or 'none'}. Baseline cell: {self.baseline_cell or 'none'}.",
            "",
            "Cells (rate = reversed / decided, Wilson 95 % interval; failed and undecided runs excluded):",
            _frame_text(self.cells),
            "",
            self.regression_summary,
        ]
        if len(self.fisher):
            fisher = self.fisher.drop(columns="baseline")  # named in the heading instead
            lines += ["", f"Fisher exact tests against {self.baseline_cell}:", _frame_text(fisher)]
        if self.notes:
            lines += ["", "Notes:", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"


def _frame_text(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)"
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _rate_text(k: int, n: int, rate: dict[str, float]) -> str:
    if n == 0:
        return "n/a (no decided runs)"
    return f"{k}/{n} = {rate['rate']:.1%} [{rate['ci_low']:.1%}, {rate['ci_high']:.1%}]"


def incidence_report(
    df: pd.DataFrame, factors: Sequence[str], baseline_cell: str | None = None
) -> IncidenceReport:
    """All incidence statistics of a trials frame.

    `baseline_cell` is the cell every natural cell is compared with (Fisher tests) and whose levels are the
    regression's references; a sweep records it with its design (`sweep.design`). None: no comparisons, and
    each factor's first level as reference.
    """
    factors = list(factors)
    trials = prepare(df, factors)
    notes: list[str] = []
    cells = cell_table(trials, factors)
    natural_cells = cells.loc[~cells["control"], "cell"].tolist()
    if baseline_cell is not None and baseline_cell not in natural_cells:
        # The end of a long sweep is the wrong moment to crash: say so, and compare with nothing.
        note = f"baseline cell {baseline_cell!r} has no natural runs in this sweep; no comparisons with it"
        warnings.warn(note, RuntimeWarning, stacklevel=2)
        notes.append(note)
        baseline_cell = None
    fisher = (
        fisher_vs_baseline(trials, baseline_cell) if baseline_cell else pd.DataFrame(columns=FISHER_COLUMNS)
    )

    # Treatment-code each factor against the baseline cell's level, so odds ratios read "vs baseline".
    reference = {}
    if baseline_cell:
        base = cells.loc[cells["cell"] == baseline_cell].iloc[0]
        reference = {f: base[f] for f in factors}
    regression, summary = logistic_regression(trials, factors, reference)

    # One overall time-to-flip curve, plus one set per factor that varies among natural runs, unless it has
    # so many levels (a sampled continuous factor) that every curve would follow a run or two.
    natural = natural_runs(trials)
    by = [f for f in varying_factors(natural, factors) if natural[f].nunique() <= MAX_CURVES]
    curves = [time_to_flip_curve(trials)] + [time_to_flip_curve(trials, by=f) for f in by]
    curves = [c for c in curves if len(c)]
    curve = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)

    def tally(part: pd.DataFrame) -> dict[str, int]:
        counts = label_counts(part["label"])
        return {k: counts[k] for k in ("n", "reversed", "normal", "undecided", "failed", "decided")}

    return IncidenceReport(
        factors=factors,
        baseline_cell=baseline_cell,
        cells=cells,
        marginals=marginal_rates(trials, factors),
        fisher=fisher,
        regression=regression,
        regression_summary=summary,
        time_to_flip=curve,
        counts=tally(natural),
        control_counts=tally(trials[trials["control"]]),
        trials=trials,
        notes=notes,
    )


def _interval_text(rate: float, low: float, high: float) -> str:
    return "-" if math.isnan(rate) else f"{rate:4.0%} [{low:.0%}, {high:.0%}]"


def incidence_table(report: IncidenceReport) -> Table:
    """The incidence per cell as a rich table: label counts and the rate among decided runs with its Wilson
    95 % interval; controls marked, natural runs pooled in the last row."""
    table = Table(title="Incidence (rate = reversed / decided, Wilson 95 % CI)", title_justify="left")
    table.add_column("cell", overflow="fold")
    for name in ("n", "rev", "norm", "und", "fail"):
        table.add_column(name, justify="right")
    table.add_column("rate [95% CI]")
    for row in report.cells.itertuples(index=False):
        cell = row.cell + (" (control)" if row.control else "")
        cell += " (baseline)" if row.cell == report.baseline_cell else ""
        counts = (row.n, row.reversed, row.normal, row.undecided, row.failed)
        table.add_row(cell, *map(str, counts), _interval_text(row.rate, row.ci_low, row.ci_high))
    c, overall = report.counts, report.overall
    table.add_section()
    pooled = (c["n"], c["reversed"], c["normal"], c["undecided"], c["failed"])
    table.add_row("all natural runs", *map(str, pooled), _interval_text(*overall.values()), style="bold")
    return table


def format_table(report: IncidenceReport, width: int = 120) -> str:
    """`incidence_table` as plain text (for logs and notebooks)."""
    # force_jupyter=False: in a notebook, rich would otherwise display the table instead of writing it
    console = Console(
        file=io.StringIO(), width=width, color_system=None, highlight=False, force_jupyter=False
    )
    console.print(incidence_table(report))
    return console.file.getvalue().rstrip() + "\n"

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

from sweep.kinds import FAMILIES, FAMILY_TEXT, RATE_KINDS, family_baselines, reasons_text
from sweep.stats.regression import REGRESSION_COLUMNS, logistic_regression
from sweep.stats.survival import CURVE_COLUMNS, time_to_flip_curve
from sweep.stats.tables import (
    FISHER_COLUMNS,
    cell_table,
    families_present,
    family_runs,
    fisher_vs_baseline,
    kind_runs,
    label_counts,
    marginal_rates,
    prepare,
    reason_counts,
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
    """Everything `incidence_report` computes about one sweep, ready for MLflow, files and the terminal.

    Rates are per kind and comparisons per family of kinds (`sweep.kinds`): `counts` are the natural runs',
    `kind_counts` every kind's that has runs, `baselines` each family's baseline cell; the `marginals`,
    `fisher` and `regression` rows name their family, and each time-to-flip curve the `runs` it follows.
    """

    factors: list[str]
    baseline_cell: str | None  # the design's baseline: it anchors its own family
    cells: pd.DataFrame
    marginals: pd.DataFrame
    fisher: pd.DataFrame
    regression: pd.DataFrame
    regression_summary: str
    time_to_flip: pd.DataFrame
    counts: dict[str, int]  # natural runs
    control_counts: dict[str, int]
    trials: pd.DataFrame = field(repr=False)
    notes: list[str] = field(default_factory=list)
    baselines: dict[str, str] = field(default_factory=dict)  # family -> its baseline cell
    kind_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # rate kind -> counts (with runs)

    @property
    def overall(self) -> dict[str, float]:
        """Reversal rate of the natural decided runs (natural runs only) with its Wilson 95 % interval."""
        return self.rate_of("natural")

    def rate_of(self, kind: str) -> dict[str, float]:
        """Reversal rate of one kind's decided runs with its Wilson 95 % interval (nan without any)."""
        counts = self.kind_counts.get(kind) or _NO_RUNS
        rate, low, high = reversal_rate(counts["reversed"], counts["decided"])
        return {"rate": rate, "ci_low": low, "ci_high": high}

    def metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow; names use letters, digits and `_ - . /` only. Rates may be nan.

        Natural runs under `overall/`, the other kinds under `mitigation/` and `induced/`, controls under
        `control/`; a family's comparisons under `fisher/`, `marginal/`, `regression/` (natural family) or
        `marginal/induced/`, `regression/induced/` (induced family)."""
        out: dict[str, float] = {f"overall/{k}": v for k, v in self.overall.items()}
        out.update({f"overall/n_{k}" if k != "n" else "overall/n": v for k, v in self.counts.items()})
        for kind, counts in self.kind_counts.items():
            if kind != "natural":
                out.update({f"{kind}/{k}": v for k, v in self.rate_of(kind).items()})
                out.update({f"{kind}/n_{k}" if k != "n" else f"{kind}/n": v for k, v in counts.items()})
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
        for (family, factor), part in self.marginals.groupby(["family", "factor"], sort=False):
            levels = _segments(part["level"])
            head = _family_prefix("marginal", family)
            for row in part.itertuples(index=False):
                out[f"{head}/{metric_segment(factor)}/{levels[row.level]}/rate"] = row.rate
        for row in self.fisher.itertuples(index=False):
            out[f"fisher/{names[row.cell]}/p_value"] = row.p_value
        for family in self._regressed_families():
            head = _family_prefix("regression", family)
            part = self.regression[self.regression["family"] == family]
            out[f"{head}/estimable"] = float(len(part) > 0)
            terms = _segments(part["term"])
            for row in part.itertuples(index=False):
                out[f"{head}/{terms[row.term]}/odds_ratio"] = row.odds_ratio
                out[f"{head}/{terms[row.term]}/p_value"] = row.p_value
        for kind in self.kind_counts:
            overall = self.time_to_flip[
                (self.time_to_flip["factor"] == "all") & (self.time_to_flip["runs"] == kind)
            ]
            if len(overall):
                head = "overall" if kind == "natural" else kind
                out[f"{head}/median_time_to_flip"] = float(overall["median_time_to_flip"].iloc[0])
        return {k: float(v) for k, v in out.items()}

    def _regressed_families(self) -> list[str]:
        """The families the regression was fitted for (the natural family at least, as the summary says)."""
        families = [f for f in FAMILIES if any(self.kind_counts.get(kind) for kind in FAMILIES[f])]
        return families or ["natural"]

    def kind_lines(self) -> list[str]:
        """One line per kind with runs: its label counts, its reversal rate and why its undecided runs are."""
        lines = []
        for kind, counts in self.kind_counts.items():
            why = reasons_text(reason_counts(kind_runs(self.trials, kind)))
            lines.append(
                f"{kind.capitalize()} runs: {counts['n']} ({counts['reversed']} reversed, {counts['normal']} "
                f"normal, {counts['undecided']} undecided{f' ({why})' if why else ''}, {counts['failed']} "
                f"failed); reversal rate over decided runs: "
                f"{_rate_text(counts['reversed'], counts['decided'], self.rate_of(kind))}."
            )
        return lines or ["No runs outside controls."]

    def summary_text(self) -> str:
        """The plain-text contents of model_summary.txt."""
        others = [
            f"{family} baseline cell: {cell}"
            for family, cell in self.baselines.items()
            if family != "natural"
        ]
        lines = [
            "flipsweep incidence summary",
            "",
            "Rates never pool two kinds of run (natural, mitigation, induced); comparisons stay within a"
            " family (natural with mitigation cells, induced with induced cells).",
            *self.kind_lines(),
            f"Control runs: {self.control_counts['n']} (detector sensitivity per control cell below).",
            f"Factors: {', '.join(self.factors) or 'none'}. Baseline cell: {self.baseline_cell or 'none'}."
            + "".join(f" {text.capitalize()}." for text in others),
            "",
            "Cells (rate = reversed / decided, Wilson 95 % interval; failed and undecided runs excluded):",
            _frame_text(self.cells),
            "",
            self.regression_summary,
        ]
        for baseline, part in self.fisher.groupby("baseline", sort=False):
            fisher = part.drop(columns="baseline")  # named in the heading instead
            lines += ["", f"Fisher exact tests against {baseline}:", _frame_text(fisher)]
        if self.notes:
            lines += ["", "Notes:", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"


_NO_RUNS = {"n": 0, "reversed": 0, "normal": 0, "undecided": 0, "failed": 0, "decided": 0}


def _family_prefix(name: str, family: str) -> str:
    """`marginal` for the natural family, `marginal/induced` for another."""
    return name if family == "natural" else f"{name}/{family}"


def _frame_text(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)"
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _rate_text(k: int, n: int, rate: dict[str, float]) -> str:
    if n == 0:
        return "n/a (no decided runs)"
    return f"{k}/{n} = {rate['rate']:.1%} [{rate['ci_low']:.1%}, {rate['ci_high']:.1%}]"


def _tally(part: pd.DataFrame) -> dict[str, int]:
    counts = label_counts(part["label"])
    return {k: counts[k] for k in ("n", "reversed", "normal", "undecided", "failed", "decided")}


def incidence_report(
    df: pd.DataFrame, factors: Sequence[str], baseline_cell: str | None = None
) -> IncidenceReport:
    """All incidence statistics of a trials frame, by the rule of `sweep.kinds`.

    `baseline_cell` is the design's baseline (`sweep.design`): the cells of its family are compared with it
    (Fisher tests) and its levels are that family's regression references; every other family is compared
    with its own baseline (`sweep.kinds.family_baselines`). None: no comparisons, and each factor's first
    level as reference.
    """
    factors = list(factors)
    trials = prepare(df, factors)
    notes: list[str] = []
    cells = cell_table(trials, factors)
    compared = cells.loc[~cells["control"]]
    if baseline_cell is not None and baseline_cell not in compared["cell"].tolist():
        # The end of a long sweep is the wrong moment to crash: say so, and compare with nothing.
        note = f"baseline cell {baseline_cell!r} has no runs in this sweep; no comparisons with it"
        warnings.warn(note, RuntimeWarning, stacklevel=2)
        notes.append(note)
        baseline_cell = None
    baselines = (
        family_baselines(zip(compared["cell"], compared["kind"], strict=True), baseline_cell)
        if baseline_cell
        else {}
    )
    fishers = [fisher_vs_baseline(trials, cell) for cell in baselines.values()]
    fisher = pd.concat(fishers, ignore_index=True) if fishers else pd.DataFrame(columns=FISHER_COLUMNS)

    # Each family's regression, treatment-coded against its baseline cell's levels ("vs baseline").
    kind_counts = {
        kind: _tally(kind_runs(trials, kind)) for kind in RATE_KINDS if len(kind_runs(trials, kind))
    }
    families = families_present(trials) or ["natural"]
    regressions, summaries = [], []
    for family in families:
        reference = {}
        if family in baselines:
            base = cells.loc[cells["cell"] == baselines[family]].iloc[0]
            reference = {f: base[f] for f in factors}
        table, summary = logistic_regression(trials, factors, reference, family=family)
        regressions.append(table.assign(family=family)[["family", *REGRESSION_COLUMNS]])
        summaries.append(summary)
    regression = (
        pd.concat(regressions, ignore_index=True)
        if any(len(r) for r in regressions)
        else (pd.DataFrame(columns=["family", *REGRESSION_COLUMNS]))
    )

    # One time-to-flip curve per kind over all its runs, plus one set per factor that varies within a family,
    # unless it has so many levels (a sampled continuous factor) that every curve would follow a run or two.
    curves = []
    for kind in kind_counts:
        curves.append(time_to_flip_curve(trials, kinds=(kind,)).assign(runs=kind))
    for family in families_present(trials):
        runs = family_runs(trials, family)
        by = [f for f in varying_factors(runs, factors) if runs[f].nunique() <= MAX_CURVES]
        curves += [
            time_to_flip_curve(trials, by=f, kinds=FAMILIES[family]).assign(runs=FAMILY_TEXT[family])
            for f in by
        ]
    curves = [c for c in curves if len(c)]
    columns = ["runs", *CURVE_COLUMNS]
    curve = pd.concat(curves, ignore_index=True)[columns] if curves else pd.DataFrame(columns=columns)

    return IncidenceReport(
        factors=factors,
        baseline_cell=baseline_cell,
        cells=cells,
        marginals=marginal_rates(trials, factors),
        fisher=fisher,
        regression=regression,
        regression_summary="\n\n".join(summaries),
        time_to_flip=curve,
        counts=kind_counts.get("natural", dict(_NO_RUNS)),
        control_counts=_tally(trials[trials["control"]]),
        trials=trials,
        notes=notes,
        baselines=baselines,
        kind_counts=kind_counts,
    )


def _interval_text(rate: float, low: float, high: float) -> str:
    return "-" if math.isnan(rate) else f"{rate:4.0%} [{low:.0%}, {high:.0%}]"


def incidence_table(report: IncidenceReport) -> Table:
    """The incidence per cell as a rich table: its kind, label counts (why the undecided ones are), and the
    rate among decided runs with its Wilson 95 % interval; each family's baseline marked, and the runs of
    each kind pooled in the last rows (never two kinds in one row)."""
    table = Table(title="Incidence (rate = reversed / decided, Wilson 95 % CI)", title_justify="left")
    table.add_column("cell", overflow="fold")
    table.add_column("kind")
    for name in ("n", "rev", "norm", "und", "fail"):
        table.add_column(name, justify="right")
    table.add_column("rate [95% CI]")
    why = [reasons_text(row) for row in report.cells.to_dict("records")]
    if any(why):
        table.add_column("undecided: why", overflow="fold")
    baselines = set(report.baselines.values())
    for row, reasons in zip(report.cells.itertuples(index=False), why, strict=True):
        cell = row.cell + (" (baseline)" if row.cell in baselines else "")
        counts = (row.n, row.reversed, row.normal, row.undecided, row.failed)
        interval = _interval_text(row.rate, row.ci_low, row.ci_high)
        table.add_row(cell, row.kind, *map(str, counts), interval, *([reasons] if any(why) else []))
    table.add_section()
    for kind in report.kind_counts or {"natural": _NO_RUNS}:
        c = report.kind_counts.get(kind, _NO_RUNS)
        pooled = (c["n"], c["reversed"], c["normal"], c["undecided"], c["failed"])
        reasons = [reasons_text(reason_counts(kind_runs(report.trials, kind)))] if any(why) else []
        interval = _interval_text(*report.rate_of(kind).values())
        table.add_row(f"all {kind} runs", kind, *map(str, pooled), interval, *reasons, style="bold")
    return table


def format_table(report: IncidenceReport, width: int = 120) -> str:
    """`incidence_table` as plain text (for logs and notebooks)."""
    # force_jupyter=False: in a notebook, rich would otherwise display the table instead of writing it
    console = Console(
        file=io.StringIO(), width=width, color_system=None, highlight=False, force_jupyter=False
    )
    console.print(incidence_table(report))
    return console.file.getvalue().rstrip() + "\n"

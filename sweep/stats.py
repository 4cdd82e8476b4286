"""Incidence statistics of a sweep: how often does a run learn to reverse time, and what changes that?

The input is the trials frame of `sweep.results.trials_frame`, one row per trial. Every statistic here follows
the same rules, so that the numbers in the CSV files, the MLflow metrics and the plots agree:

* A trial's outcome is its detector label. Only **decided** trials (`reversed` or `normal`) enter a rate; the
  rate is reversed / decided with a Wilson 95 % interval. `undecided` and `failed` trials are counted and
  reported but are neither successes nor failures of the "reverses time" experiment.
* **Control** cells reverse time by construction to calibrate the detector. Their reversed / decided
  fraction is the detector's *sensitivity*; they are never pooled with natural runs (no overall rate,
  marginals, regression or time-to-flip curve includes them).
* Factor values are grouped as they appear in the config, with lists (and other unhashable values) turned
  into their string form and a missing value shown as `(unset)`.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact, norm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

LABELS = ("reversed", "normal", "undecided", "failed")
UNSET = "(unset)"
REQUIRED = ("trial_key", "cell", "control", "label", "steps", "time_to_flip", "attention_direction")

CELL_COUNTS = ["n", "reversed", "normal", "undecided", "failed", "decided", "rate", "ci_low", "ci_high"]
MARGINAL_COLUMNS = ["factor", "level", "n", "decided", "reversed", "normal", "undecided", "failed"]
MARGINAL_COLUMNS += ["rate", "ci_low", "ci_high"]
FISHER_COLUMNS = ["cell", "reversed", "normal", "rate", "baseline", "baseline_reversed", "baseline_normal"]
FISHER_COLUMNS += ["baseline_rate", "odds_ratio", "p_value", "p_holm"]
REGRESSION_COLUMNS = ["term", "odds_ratio", "ci_low", "ci_high", "p_value"]
CURVE_COLUMNS = ["factor", "group", "step", "at_risk", "events", "survival", "ci_low", "ci_high"]
CURVE_COLUMNS += ["median_time_to_flip"]
MAX_CURVES = 8  # most time-to-flip curves per factor in a report


# ------------------------------------------------------------------------------------------------------------
# Proportions


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (nan, nan when n = 0).

    Wilson rather than the normal approximation because our counts are small and often 0 of n, where the
    normal interval collapses to [0, 0].
    """
    if n <= 0:
        return math.nan, math.nan
    low, high = proportion_confint(int(k), int(n), alpha=1.0 - level, method="wilson")
    # Remove rounding noise so that 0/n starts at exactly 0 and n/n ends at exactly 1.
    return (0.0 if k == 0 else float(low)), (1.0 if k == n else float(high))


def _rate(reversed_: int, decided: int) -> tuple[float, float, float]:
    """Reversal rate over decided runs with its Wilson 95 % interval (all nan without decided runs)."""
    if decided == 0:
        return math.nan, math.nan, math.nan
    low, high = wilson_interval(reversed_, decided)
    return reversed_ / decided, low, high


def _counts(labels: pd.Series) -> dict[str, Any]:
    """Label counts, decided runs and the reversal rate of one group of trials."""
    tally = labels.value_counts()
    counts = {label: int(tally.get(label, 0)) for label in LABELS}
    decided = counts["reversed"] + counts["normal"]
    rate, low, high = _rate(counts["reversed"], decided)
    # Labels outside LABELS (e.g. a run still `incomplete`) count in n only: they are no outcome yet.
    return {"n": int(len(labels)), **counts, "decided": decided, "rate": rate, "ci_low": low, "ci_high": high}


# ------------------------------------------------------------------------------------------------------------
# The trials frame


def _as_level(value: Any) -> Hashable:
    """A factor value as a grouping key: lists and dicts become their string form, missing becomes UNSET."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNSET
    if isinstance(value, list | tuple | dict | set | np.ndarray):
        return str(list(value) if isinstance(value, tuple | np.ndarray) else value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _as_bool(value: Any) -> bool:
    """`control` as a bool, also when it arrives as the string "True"/"False" (e.g. from a CSV)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) if value is not None and value == value else False


def level_order(values: Iterable[Hashable]) -> list[Hashable]:
    """Distinct levels in reading order: numbers ascending, then everything else by its text."""
    distinct = list(dict.fromkeys(values))

    def key(value: Hashable) -> tuple[int, float, str]:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (0, float(value), "")
        return (1, 0.0, str(value))

    return sorted(distinct, key=key)


def prepare(df: pd.DataFrame, factors: Sequence[str] = ()) -> pd.DataFrame:
    """A checked copy of the trials frame with normalised labels, `control` flags and factor levels."""
    missing = [c for c in (*REQUIRED, *factors) if c not in df.columns]
    if missing:
        raise ValueError(f"trials frame lacks column(s) {missing}")
    out = df.copy()
    out["cell"] = out["cell"].astype(str)
    out["label"] = out["label"].astype(str).str.strip().str.lower()
    out["control"] = out["control"].map(_as_bool).astype(bool)
    for column in ("steps", "time_to_flip", "attention_direction"):
        out[column] = pd.to_numeric(out[column], errors="coerce")
    for factor in factors:
        out[factor] = out[factor].map(_as_level).astype(object)
    return out


def natural_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The trials outside control cells (a prepared frame)."""
    return df[~df["control"]]


def decided_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The trials labelled reversed or normal (a prepared frame)."""
    return df[df["label"].isin(("reversed", "normal"))]


def varying_factors(df: pd.DataFrame, factors: Sequence[str]) -> list[str]:
    """The factors that take more than one level in `df`."""
    return [f for f in factors if df[f].nunique(dropna=False) > 1]


# ------------------------------------------------------------------------------------------------------------
# Tables


def cell_table(df: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    """One row per cell (natural cells first, then controls, each in order of first appearance).

    `median_time_to_flip` is the median flip step among the cell's reversed runs, i.e. *when* runs flip given
    that they do; the censoring-aware answer over all runs is the Kaplan-Meier median of `time_to_flip_curve`.
    """
    factors = list(factors)
    df = prepare(df, factors)
    rows = []
    for control in (False, True):
        part = df[df["control"] == control]
        for cell, group in part.groupby("cell", sort=False):
            flips = group.loc[group["label"] == "reversed", "time_to_flip"].dropna()
            rows.append(
                {
                    "cell": cell,
                    "control": control,
                    # A cell has one configuration; the first value stands for it.
                    **{f: group[f].iloc[0] for f in factors},
                    **_counts(group["label"]),
                    "median_time_to_flip": float(flips.median()) if len(flips) else math.nan,
                }
            )
    columns = ["cell", "control", *factors, *CELL_COUNTS, "median_time_to_flip"]
    return pd.DataFrame(rows, columns=columns)


def marginal_rates(df: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    """Natural runs pooled over everything but one factor: one row per factor and level."""
    df = natural_runs(prepare(df, factors))
    rows = []
    for factor in factors:
        for level in level_order(df[factor]):
            rows.append({"factor": factor, "level": level, **_counts(df.loc[df[factor] == level, "label"])})
    out = pd.DataFrame(rows, columns=MARGINAL_COLUMNS)
    # Levels of different factors share a column; keep each one's own type (no 4 -> 4.0).
    out["level"] = pd.Series([row["level"] for row in rows], dtype=object)
    return out


def fisher_vs_baseline(df: pd.DataFrame, baseline_cell: str) -> pd.DataFrame:
    """Each natural cell against the baseline cell: two-sided Fisher exact test on reversed vs normal.

    The odds ratio is the sample one, (a d) / (b c) for [[reversed, normal] cell, [reversed, normal] baseline]
    (inf or nan when a count is 0). `p_holm` adjusts the p-values for testing every cell against one baseline.
    """
    table = cell_table(df, [])
    natural = table[~table["control"]].set_index("cell")
    if baseline_cell not in natural.index:
        raise ValueError(
            f"baseline cell {baseline_cell!r} is not a natural cell; cells: {list(natural.index)}"
        )
    base = natural.loc[baseline_cell]
    rows = []
    for cell, row in natural.drop(index=baseline_cell).iterrows():
        result = fisher_exact([[row["reversed"], row["normal"]], [base["reversed"], base["normal"]]])
        rows.append(
            {
                "cell": cell,
                "reversed": row["reversed"],
                "normal": row["normal"],
                "rate": row["rate"],
                "baseline": baseline_cell,
                "baseline_reversed": base["reversed"],
                "baseline_normal": base["normal"],
                "baseline_rate": base["rate"],
                "odds_ratio": float(result.statistic),
                "p_value": float(result.pvalue),
            }
        )
    out = pd.DataFrame(rows, columns=FISHER_COLUMNS)
    if len(out):
        out["p_holm"] = multipletests(out["p_value"].to_numpy(), method="holm")[1]
    return out


# ------------------------------------------------------------------------------------------------------------
# Logistic regression


class NotEstimable(Exception):
    """The logistic regression has no finite maximum-likelihood estimate; the message says why."""


def _design(
    decided: pd.DataFrame, factors: Sequence[str], reference: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Hashable]]:
    """Treatment-coded design matrix (intercept + one column per non-reference level) and the references."""
    columns = {"Intercept": np.ones(len(decided))}
    references = {}
    for factor in factors:
        levels = level_order(decided[factor])
        wanted = _as_level(reference.get(factor, levels[0]))
        base = wanted if wanted in levels else levels[0]
        references[factor] = base
        for level in levels:
            if level != base:
                columns[f"{factor}[T.{level}]"] = (decided[factor] == level).to_numpy(dtype=float)
    return pd.DataFrame(columns, index=decided.index), references


def _separated_levels(decided: pd.DataFrame, y: pd.Series, factors: Sequence[str]) -> list[str]:
    """Factor levels whose decided runs all share one outcome.

    With treatment coding and main effects only, such a level makes the likelihood increase without bound
    along its coefficient (quasi-complete separation): no finite odds ratio exists.
    """
    found = []
    for factor in factors:
        for level in level_order(decided[factor]):
            k = int(y[decided[factor] == level].sum())
            n = int((decided[factor] == level).sum())
            if k in (0, n):
                found.append(f"{factor}={level} ({k}/{n} reversed)")
    return found


def _fit_logit(y: pd.Series, design: pd.DataFrame):
    """Fit the logit model, turning every sign of a non-existent MLE into NotEstimable."""
    from statsmodels.discrete.discrete_model import Logit
    from statsmodels.tools.sm_exceptions import PerfectSeparationError, PerfectSeparationWarning

    # Convergence and separation warnings are expected on small, lopsided tables; we catch them here and
    # report them in the summary text instead of letting them scroll past on the terminal.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = Logit(y.astype(float).rename("reversed"), design).fit(
                method="newton", maxiter=100, disp=False
            )
        except (PerfectSeparationError, np.linalg.LinAlgError, ValueError) as exc:
            raise NotEstimable(f"the fit failed ({type(exc).__name__}: {exc})") from None
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    separated = any(issubclass(w.category, PerfectSeparationWarning) for w in caught)
    converged = bool(result.mle_retvals.get("converged", False))
    # Diverging coefficients (|log OR| > 15, i.e. an odds ratio beyond 3e6) or infinite standard errors are
    # the numerical face of separation even when the optimiser stops politely.
    diverged = not np.all(np.isfinite(result.bse)) or np.any(np.abs(result.params) > 15)
    if separated or not converged or diverged:
        detail = "; ".join(messages) if messages else "coefficients diverge"
        raise NotEstimable(
            "the maximum-likelihood fit does not converge, which on categorical factors means some"
            f" combination of levels separates reversed from normal runs (statsmodels said: {detail})"
        )
    return result, messages


def logistic_regression(
    df: pd.DataFrame, factors: Sequence[str], reference: dict[str, Any] | None = None
) -> tuple[pd.DataFrame, str]:
    """Odds of reversing (vs normal) per factor level: a main-effects logit model on natural decided runs.

    Factors are treatment-coded against `reference[factor]` (default: the first level in `level_order`);
    factors with a single level among decided runs are left out. Odds ratios come with Wald 95 % intervals
    and p-values. When the model has no finite estimate (no decided runs, one outcome class, separation, a
    singular design) the table is empty and the text says why.
    """
    factors = list(factors)
    decided = decided_runs(natural_runs(prepare(df, factors)))
    empty = pd.DataFrame(columns=REGRESSION_COLUMNS)
    y = (decided["label"] == "reversed").astype(int)
    k, n = int(y.sum()), len(y)
    varying = varying_factors(decided, factors)
    head = [
        "Logistic regression: P(reversed) vs P(normal), natural decided runs, treatment-coded factors.",
        f"Decided runs: {n} ({k} reversed, {n - k} normal).",
    ]

    def not_estimable(reason: str) -> tuple[pd.DataFrame, str]:
        return empty, "\n".join([*head, f"Not estimable: {reason}."])

    if n == 0:
        return not_estimable("there are no decided runs, so there is no outcome to model")
    if k in (0, n):
        outcome = "normal" if k == 0 else "reversed"
        low, high = wilson_interval(k, n)
        return not_estimable(
            f"all {n} decided runs are {outcome}, so no factor can change the odds and every odds ratio is"
            f" undefined; the overall rate is {k}/{n} (Wilson 95 % CI {low:.3f}-{high:.3f})"
        )
    if not varying:
        return not_estimable(
            f"no factor takes more than one level among the decided runs (factors: {factors or 'none'});"
            " compare cells with the Fisher tests instead"
        )
    design, references = _design(decided, varying, reference or {})
    head.append("Reference levels: " + ", ".join(f"{f}={v}" for f, v in references.items()) + ".")
    rank = int(np.linalg.matrix_rank(design.to_numpy()))
    if rank < design.shape[1]:
        return not_estimable(
            f"the design is singular (rank {rank} < {design.shape[1]} parameters): some factor levels always"
            " occur together, or there are fewer decided runs than parameters, so their effects cannot be"
            " told apart"
        )
    separated = _separated_levels(decided, y, varying)
    if separated:
        return not_estimable(
            "perfect separation: every decided run at "
            + "; ".join(separated)
            + " has the same outcome, so the maximum-likelihood odds ratio is 0 or infinite"
        )
    try:
        result, messages = _fit_logit(y, design)
    except NotEstimable as exc:
        return not_estimable(str(exc))

    ci = np.exp(result.conf_int())
    terms = [c for c in design.columns if c != "Intercept"]
    table = pd.DataFrame(
        {
            "term": terms,
            "odds_ratio": np.exp(result.params[terms]).to_numpy(),
            "ci_low": ci.loc[terms, 0].to_numpy(),
            "ci_high": ci.loc[terms, 1].to_numpy(),
            "p_value": result.pvalues[terms].to_numpy(),
        },
        columns=REGRESSION_COLUMNS,
    )
    lines = [
        *head,
        f"Odds of reversing at the reference levels: {math.exp(result.params['Intercept']):.3g}.",
        "Odds ratios (Wald 95 % intervals):",
        table.to_string(index=False, float_format=lambda v: f"{v:.4g}"),
    ]
    if messages:
        lines.append("statsmodels warnings during the fit: " + "; ".join(messages))
    lines += ["", result.summary().as_text()]
    return table, "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# Time to flip


def _km_rows(times: np.ndarray, events: np.ndarray) -> pd.DataFrame:
    """Kaplan-Meier rows for one group: step 0, every event step, and the last censoring step.

    Pointwise 95 % intervals use the log(-log) transform, which keeps them inside [0, 1].
    """
    from statsmodels.duration.survfunc import SurvfuncRight

    fit = SurvfuncRight(times, events)
    z = norm.ppf(0.975)
    rows = [{"step": 0.0, "at_risk": len(times), "events": 0, "survival": 1.0, "ci_low": 1.0, "ci_high": 1.0}]
    for t, s, se, r, d in zip(
        fit.surv_times, fit.surv_prob, fit.surv_prob_se, fit.n_risk, fit.n_events, strict=True
    ):
        if 0.0 < s < 1.0:
            spread = z * se / (s * abs(math.log(s)))
            low, high = s ** math.exp(spread), s ** math.exp(-spread)
        else:
            low = high = math.nan
        rows.append({"step": t, "at_risk": r, "events": d, "survival": s, "ci_low": low, "ci_high": high})
    end = float(times.max())
    if end > rows[-1]["step"]:
        # Extend the curve to the longest follow-up so that a plot shows how long runs were watched.
        last = rows[-1]
        at_risk = int((times >= end).sum())
        rows.append({**last, "step": end, "at_risk": at_risk, "events": 0})
    out = pd.DataFrame(rows)
    # Median: the first step at which at most half of the runs have not yet flipped (with a tolerance, as
    # products such as 3/4 * 2/3 land a rounding error above 0.5).
    below = out.loc[out["survival"] <= 0.5 + 1e-9, "step"]
    out["median_time_to_flip"] = float(below.iloc[0]) if len(below) else math.nan
    return out


def time_to_flip_curve(df: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Kaplan-Meier estimate of P(not yet flipped) against training step, for natural runs.

    Event: a `reversed` run with a `time_to_flip`. Every other run (normal, undecided, or reversed without
    a recorded flip step) is censored at its `steps`; failed runs are left out. With `by`, one curve per
    level of that factor. Columns: factor (`by` or "all"), group, step, at_risk, events, survival, ci_low,
    ci_high (log-log 95 %), median_time_to_flip (nan when the curve never reaches 0.5).
    """
    df = natural_runs(prepare(df, [by] if by else []))
    df = df[df["label"] != "failed"]
    event = (df["label"] == "reversed") & df["time_to_flip"].notna()
    time = df["time_to_flip"].where(event, df["steps"])
    keep = time.notna()
    df, event, time = df[keep], event[keep], time[keep]
    groups = level_order(df[by]) if by else ["all"]
    parts = []
    for group in groups:
        mask = (df[by] == group) if by else pd.Series(True, index=df.index)
        if not mask.any():
            continue
        part = _km_rows(time[mask].to_numpy(dtype=float), event[mask].to_numpy(dtype=int))
        part.insert(0, "group", group)
        part.insert(0, "factor", by or "all")
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.concat(parts, ignore_index=True)[CURVE_COLUMNS]


def median_times(curve: pd.DataFrame) -> pd.DataFrame:
    """One row per curve of `time_to_flip_curve`: factor, group, median_time_to_flip."""
    columns = ["factor", "group", "median_time_to_flip"]
    return curve[columns].drop_duplicates(subset=["factor", "group"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------------------
# The report


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
        rate, low, high = _rate(self.counts["reversed"], self.counts["decided"])
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

    def write(self, directory: str | Path) -> list[Path]:
        """Write the tables, model_summary.txt and the four plots (under plots/); return the paths."""
        from sweep import plots

        directory = Path(directory)
        plot_dir = directory / "plots"
        plot_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, table in [
            ("incidence.csv", self.cells),
            ("marginals.csv", self.marginals),
            ("fisher.csv", self.fisher),
            ("regression.csv", self.regression),
            ("time_to_flip.csv", self.time_to_flip),
        ]:
            table.to_csv(directory / name, index=False)
            written.append(directory / name)
        for name, draw, source in [
            ("rate_by_factor.png", plots.plot_rate_by_factor, self),
            ("heatmap.png", plots.plot_heatmap, self),
            ("direction_distribution.png", plots.plot_direction_distribution, self.trials),
            ("time_to_flip.png", plots.plot_time_to_flip, self.time_to_flip),
        ]:
            # A broken plot must not cost the sweep its statistics: warn, note it, and go on.
            try:
                draw(source, plot_dir / name)
                written.append(plot_dir / name)
            except Exception as exc:  # noqa: BLE001 - reported, not hidden
                message = f"plot {name} failed: {type(exc).__name__}: {exc}"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                self.notes.append(message)
        (directory / "model_summary.txt").write_text(self.summary_text())
        written.append(directory / "model_summary.txt")
        return written


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
    """All incidence statistics of a trials frame; the baseline defaults to the first natural cell."""
    factors = list(factors)
    trials = prepare(df, factors)
    notes: list[str] = []
    cells = cell_table(trials, factors)
    natural_cells = cells.loc[~cells["control"], "cell"].tolist()
    if baseline_cell is not None and baseline_cell not in natural_cells:
        # The end of a long sweep is the wrong moment to crash over a typo: compare with the default instead.
        note = f"baseline cell {baseline_cell!r} is not a natural cell of this sweep; using the first cell"
        warnings.warn(note, RuntimeWarning, stacklevel=2)
        notes.append(note)
        baseline_cell = None
    if baseline_cell is None and natural_cells:
        baseline_cell = natural_cells[0]
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
        counts = _counts(part["label"])
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


def format_table(report: IncidenceReport) -> str:
    """A compact incidence table for the terminal: cell, n, rev, norm, und, fail, rate [95 % CI]."""

    def rate_text(rate: float, low: float, high: float) -> str:
        return "-" if math.isnan(rate) else f"{rate:4.0%} [{low:.0%}, {high:.0%}]"

    rows = [
        [
            row.cell + (" (control)" if row.control else ""),
            row.n,
            row.reversed,
            row.normal,
            row.undecided,
            row.failed,
            rate_text(row.rate, row.ci_low, row.ci_high),
        ]
        for row in report.cells.itertuples(index=False)
    ]
    c, overall = report.counts, report.overall
    rows.append(
        ["all natural runs", c["n"], c["reversed"], c["normal"], c["undecided"], c["failed"]]
        + [rate_text(overall["rate"], overall["ci_low"], overall["ci_high"])]
    )
    header = ["cell", "n", "rev", "norm", "und", "fail", "rate [95% CI]"]
    text = [[str(v) for v in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in text) for i in range(len(header))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join(
            [first, *(v.rjust(w) for v, w in zip(row[1:-1], widths[1:-1], strict=True)), row[-1]]
        )

    rule = "-" * len(line(text[0]))
    return "\n".join([line(text[0]), rule, *(line(r) for r in text[1:-1]), rule, line(text[-1])])

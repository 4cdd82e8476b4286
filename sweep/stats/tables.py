"""Counts, rates and the tables of a sweep: per cell, per factor level, and each cell against its baseline.

Which runs pool into a rate and which cells compare with which follows the one rule of `sweep.kinds`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from sweep.kinds import FAMILIES, KINDS, family_of
from trainers.detector.verdict import UNDECIDED_REASONS
from trainers.outcome import DECIDED, ENDED_LABELS

UNSET = "(unset)"
REQUIRED = ("trial_key", "cell", "control", "label", "steps", "time_to_flip", "attention_direction")

CELL_COUNTS = ["n", "reversed", "normal", "undecided", "failed", "unfinished", "decided"]
CELL_COUNTS += ["rate", "ci_low", "ci_high"]
# Why a cell's undecided runs are undecided: one count per reason (runs recorded before reasons have none).
REASON_COUNTS = [f"undecided_{reason}" for reason in UNDECIDED_REASONS]
MARGINAL_COLUMNS = ["family", "factor", "level", "n", "decided", "reversed", "normal", "undecided", "failed"]
MARGINAL_COLUMNS += ["unfinished", "rate", "ci_low", "ci_high"]
FISHER_COLUMNS = ["cell", "kind", "reversed", "normal", "rate", "baseline", "baseline_reversed"]
FISHER_COLUMNS += ["baseline_normal", "baseline_rate", "odds_ratio", "p_value", "p_holm"]


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


def reversal_rate(reversed_: int, decided: int) -> tuple[float, float, float]:
    """Reversal rate over decided runs with its Wilson 95 % interval (all nan without decided runs)."""
    if decided == 0:
        return math.nan, math.nan, math.nan
    low, high = wilson_interval(reversed_, decided)
    return reversed_ / decided, low, high


def label_counts(labels: pd.Series) -> dict[str, Any]:
    """Label counts, decided runs and the reversal rate of one group of trials.

    Labels outside ENDED_LABELS (a run of an interrupted sweep, still `incomplete`) are no outcome yet: they
    count in n and as `unfinished`, never in a rate.
    """
    tally = labels.value_counts()
    counts = {label: int(tally.get(label, 0)) for label in ENDED_LABELS}
    counts["unfinished"] = int(len(labels)) - sum(counts.values())
    decided = counts["reversed"] + counts["normal"]
    rate, low, high = reversal_rate(counts["reversed"], decided)
    return {"n": int(len(labels)), **counts, "decided": decided, "rate": rate, "ci_low": low, "ci_high": high}


# ------------------------------------------------------------------------------------------------------------
# The trials frame


def as_level(value: Any) -> Hashable:
    """A factor value as a grouping key: lists and dicts become their string form, missing becomes UNSET."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNSET
    if isinstance(value, list | tuple | dict | set | np.ndarray):
        return str(list(value) if isinstance(value, tuple | np.ndarray) else value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def as_bool(value: Any) -> bool:
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
    """A checked copy of the trials frame with normalised labels, run kinds, `control` flags, undecided
    reasons and factor levels. A frame without a `kind` (or a row without one) reads a control as `control`
    and anything else as `natural`; `control` then follows the kind."""
    missing = [c for c in (*REQUIRED, *factors) if c not in df.columns]
    if missing:
        raise ValueError(f"trials frame lacks column(s) {missing}")
    out = df.copy()
    out["cell"] = out["cell"].astype(str)
    out["label"] = out["label"].astype(str).str.strip().str.lower()
    control = out["control"].map(as_bool).astype(bool)
    given = out["kind"] if "kind" in out.columns else pd.Series(None, index=out.index, dtype=object)
    known = given.where(given.isin(KINDS))
    out["kind"] = known.fillna(control.map({True: "control", False: "natural"})).astype(str)
    out["control"] = out["kind"] == "control"
    reason = out["reason"] if "reason" in out.columns else pd.Series(None, index=out.index, dtype=object)
    out["reason"] = reason.where(reason.isin(UNDECIDED_REASONS) & (out["label"] == "undecided"))
    for column in ("steps", "time_to_flip", "attention_direction"):
        out[column] = pd.to_numeric(out[column], errors="coerce")
    for factor in factors:
        out[factor] = out[factor].map(as_level).astype(object)
    return out


def natural_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The natural runs: no intervention, no control (a prepared frame)."""
    return kind_runs(df, "natural")


def kind_runs(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The runs of one kind (a prepared frame): what one pooled rate counts."""
    return df[df["kind"] == kind]


def family_runs(df: pd.DataFrame, family: str) -> pd.DataFrame:
    """The runs of one family of kinds (a prepared frame): what one comparison may hold (`sweep.kinds`)."""
    return df[df["kind"].isin(FAMILIES[family])]


def families_present(df: pd.DataFrame) -> list[str]:
    """The families with runs in a prepared frame, in `FAMILIES` order."""
    return [family for family in FAMILIES if len(family_runs(df, family))]


def reason_counts(df: pd.DataFrame) -> dict[str, int]:
    """One count per undecided reason (`REASON_COUNTS` names) of a prepared frame."""
    tally = df["reason"].value_counts()
    return {f"undecided_{reason}": int(tally.get(reason, 0)) for reason in UNDECIDED_REASONS}


def decided_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The trials labelled reversed or normal (a prepared frame)."""
    return df[df["label"].isin(DECIDED)]


def varying_factors(df: pd.DataFrame, factors: Sequence[str]) -> list[str]:
    """The factors that take more than one level in `df`."""
    return [f for f in factors if df[f].nunique(dropna=False) > 1]


# ------------------------------------------------------------------------------------------------------------
# Tables


def cell_table(df: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    """One row per cell (cells that are no control first, then controls, each in order of first appearance)
    with its run kind, label counts, rate and one count per undecided reason.

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
                    "kind": group["kind"].iloc[0],
                    **{f: group[f].iloc[0] for f in factors},
                    **label_counts(group["label"]),
                    "median_time_to_flip": float(flips.median()) if len(flips) else math.nan,
                    **reason_counts(group),
                }
            )
    columns = ["cell", "control", "kind", *factors, *CELL_COUNTS, "median_time_to_flip", *REASON_COUNTS]
    return pd.DataFrame(rows, columns=columns)


def marginal_rates(df: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    """The runs of one family pooled over everything but one factor: one row per family, factor and level
    (within a family only, as the regression compares them: `sweep.kinds`)."""
    df = prepare(df, factors)
    rows = []
    for family in families_present(df):
        runs = family_runs(df, family)
        for factor in factors:
            for level in level_order(runs[factor]):
                counts = label_counts(runs.loc[runs[factor] == level, "label"])
                rows.append({"family": family, "factor": factor, "level": level, **counts})
    out = pd.DataFrame(rows, columns=MARGINAL_COLUMNS)
    # Levels of different factors share a column; keep each one's own type (no 4 -> 4.0).
    out["level"] = pd.Series([row["level"] for row in rows], dtype=object)
    return out


def fisher_vs_baseline(df: pd.DataFrame, baseline_cell: str) -> pd.DataFrame:
    """Each cell of the baseline's family against the baseline cell: two-sided Fisher exact test on reversed
    vs normal (a natural baseline meets the mitigation cells, an induced one the induced cells: see
    `sweep.kinds`).

    The odds ratio is the sample one, (a d) / (b c) for [[reversed, normal] cell, [reversed, normal] baseline]
    (inf or nan when a count is 0). `p_holm` adjusts the p-values for testing every cell against one baseline.
    """
    table = cell_table(df, [])
    compared = table[~table["control"]].set_index("cell")
    if baseline_cell not in compared.index:
        raise ValueError(
            f"baseline cell {baseline_cell!r} is not a cell that is no control; cells: {list(compared.index)}"
        )
    family = family_of(compared.loc[baseline_cell, "kind"])
    compared = compared[compared["kind"].isin(FAMILIES[family])]
    base = compared.loc[baseline_cell]
    rows = []
    for cell, row in compared.drop(index=baseline_cell).iterrows():
        result = fisher_exact([[row["reversed"], row["normal"]], [base["reversed"], base["normal"]]])
        rows.append(
            {
                "cell": cell,
                "kind": row["kind"],
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

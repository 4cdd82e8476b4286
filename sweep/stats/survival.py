"""Time to flip: Kaplan-Meier curves of P(not yet reversed) over training steps, for runs of given kinds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from sweep.stats.tables import level_order, prepare

CURVE_COLUMNS = ["factor", "group", "step", "at_risk", "events", "survival", "ci_low", "ci_high"]
CURVE_COLUMNS += ["median_time_to_flip"]


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


def time_to_flip_curve(
    df: pd.DataFrame, by: str | None = None, *, kinds: Sequence[str] = ("natural",)
) -> pd.DataFrame:
    """Kaplan-Meier estimate of P(not yet flipped) against training step, for the runs of `kinds` (natural
    runs unless told; `sweep.kinds` says which kinds may share a curve).

    Event: a `reversed` run with a `time_to_flip`. Every other run (normal, undecided, or reversed without
    a recorded flip step) is censored at its `steps`; failed runs are left out. With `by`, one curve per
    level of that factor. Columns: factor (`by` or "all"), group, step, at_risk, events, survival, ci_low,
    ci_high (log-log 95 %), median_time_to_flip (nan when the curve never reaches 0.5).
    """
    df = prepare(df, [by] if by else [])
    df = df[df["kind"].isin(kinds)]
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

"""Logistic regression of reversing on a sweep's factors, honest about when no estimate exists."""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from sweep.kinds import FAMILY_TEXT
from sweep.stats.tables import (
    as_level,
    decided_runs,
    family_runs,
    level_order,
    prepare,
    varying_factors,
    wilson_interval,
)

REGRESSION_COLUMNS = ["term", "odds_ratio", "ci_low", "ci_high", "p_value"]


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
        wanted = as_level(reference.get(factor, levels[0]))
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
    df: pd.DataFrame,
    factors: Sequence[str],
    reference: dict[str, Any] | None = None,
    *,
    family: str = "natural",
) -> tuple[pd.DataFrame, str]:
    """Odds of reversing (vs normal) per factor level: a main-effects logit model on the decided runs of one
    family of kinds (`sweep.kinds`: natural and mitigation runs, or induced runs; never both).

    Factors are treatment-coded against `reference[factor]` (default: the first level in `level_order`);
    factors with a single level among decided runs are left out. Odds ratios come with Wald 95 % intervals
    and p-values. When the model has no finite estimate (no decided runs, one outcome class, separation, a
    singular design) the table is empty and the text says why.
    """
    factors = list(factors)
    decided = decided_runs(family_runs(prepare(df, factors), family))
    empty = pd.DataFrame(columns=REGRESSION_COLUMNS)
    y = (decided["label"] == "reversed").astype(int)
    k, n = int(y.sum()), len(y)
    varying = varying_factors(decided, factors)
    head = [
        f"Logistic regression: P(reversed) vs P(normal), {FAMILY_TEXT[family]} decided runs, treatment-coded"
        " factors.",
        f"Decided runs: {n} ({k} reversed, {n - k} normal).",
    ]
    if reference:  # the baseline cell's levels, so that every reader sees what "vs baseline" means here
        head.append("Baseline levels: " + ", ".join(f"{f}={as_level(v)}" for f, v in reference.items()) + ".")

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

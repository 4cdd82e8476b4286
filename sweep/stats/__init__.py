"""Incidence statistics of a sweep: how often does a run learn to reverse time, and what changes that?

The input is the trials frame of `sweep.results.trials_frame`, one row per trial. Every statistic here follows
the same rules, so that the numbers in the CSV files, the MLflow metrics and the plots agree:

* A trial's outcome is its detector label. Only **decided** trials (`reversed` or `normal`) enter a rate; the
  rate is reversed / decided with a Wilson 95 % interval. `undecided` and `failed` trials are counted and
  reported but are neither successes nor failures of the "reverses time" experiment.
* **Run kinds** (natural, mitigation, induced, control) are never pooled in a rate, and comparisons stay
  within a family of kinds, each against its own baseline: the one rule of `sweep.kinds`. **Control** cells
  reverse time by construction to calibrate the detector: their reversed / decided fraction is the
  detector's *sensitivity*, and no rate, marginal, regression or time-to-flip curve includes them.
* An `undecided` run says why (`trainers.detector.verdict.UNDECIDED_REASONS`): each cell counts its reasons.
* Factor values are grouped as they appear in the config, with lists (and other unhashable values) turned
  into their string form and a missing value shown as `(unset)`.
"""

from sweep.stats.incidence import (
    IncidenceReport,
    format_table,
    incidence_report,
    incidence_table,
    metric_segment,
)
from sweep.stats.regression import REGRESSION_COLUMNS, NotEstimable, logistic_regression
from sweep.stats.survival import CURVE_COLUMNS, median_times, time_to_flip_curve
from sweep.stats.tables import (
    REASON_COUNTS,
    cell_table,
    decided_runs,
    family_runs,
    fisher_vs_baseline,
    kind_runs,
    level_order,
    marginal_rates,
    natural_runs,
    prepare,
    varying_factors,
    wilson_interval,
)

__all__ = [
    "CURVE_COLUMNS",
    "REASON_COUNTS",
    "REGRESSION_COLUMNS",
    "IncidenceReport",
    "NotEstimable",
    "cell_table",
    "decided_runs",
    "family_runs",
    "fisher_vs_baseline",
    "format_table",
    "incidence_report",
    "incidence_table",
    "level_order",
    "logistic_regression",
    "marginal_rates",
    "median_times",
    "metric_segment",
    "kind_runs",
    "natural_runs",
    "prepare",
    "time_to_flip_curve",
    "varying_factors",
    "wilson_interval",
]

"""Incidence statistics on hand-made trial tables whose answers are known."""

from __future__ import annotations

import math
import posixpath
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from sweep.outputs import write_incidence_files
from sweep.stats import (
    REGRESSION_COLUMNS,
    cell_table,
    fisher_vs_baseline,
    format_table,
    incidence_report,
    logistic_regression,
    marginal_rates,
    time_to_flip_curve,
    wilson_interval,
)

POS = "model.pos_enc"
WARMUP = "train.lr_warmup"


def trials(*rows: dict) -> pd.DataFrame:
    """A trials frame from short row dicts; unspecified columns get the values of an ordinary finished run."""
    full = []
    for i, row in enumerate(rows):
        label = row.get("label", "normal")
        full.append(
            {
                "trial_key": f"t{i:03d}",
                "cell": row.get("cell", "a"),
                "control": row.get("control", False),
                "label": label,
                "seed": i,
                "steps": 300,
                "time_to_flip": row.get("time_to_flip", 150.0 if label == "reversed" else math.nan),
                "attention_direction": {"reversed": -0.8, "normal": 0.9, "undecided": 0.1}.get(
                    label, math.nan
                ),
                "reversal_score": math.nan,
                **{k: v for k, v in row.items() if "." in k},
            }
        )
    return pd.DataFrame(full)


def many(count: int, **row) -> list[dict]:
    return [dict(row) for _ in range(count)]


def runs(cell: str, reversed_: int, normal: int, **factors) -> list[dict]:
    """`reversed_` reversed and `normal` normal runs of one cell."""
    return many(reversed_, cell=cell, label="reversed", **factors) + many(
        normal, cell=cell, label="normal", **factors
    )


# ------------------------------------------------------------------------------------------------------------


def test_wilson_interval_matches_known_values():
    assert wilson_interval(3, 10) == pytest.approx((0.1078, 0.6032), abs=1e-3)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-3)
    assert wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_fisher_exact_on_a_hand_made_table():
    df = trials(
        *runs("base", 1, 3),
        *runs("treated", 3, 1),
        # Neither undecided nor failed runs belong in the 2x2 table.
        {"cell": "treated", "label": "undecided"},
        {"cell": "treated", "label": "failed"},
        *runs("control", 4, 0, control=True),
    )
    table = fisher_vs_baseline(df, "base")
    assert table["cell"].tolist() == ["treated"]  # controls are never compared
    row = table.iloc[0]
    assert (row["reversed"], row["normal"], row["baseline_reversed"], row["baseline_normal"]) == (3, 1, 1, 3)
    assert row["odds_ratio"] == pytest.approx(9.0)
    assert row["p_value"] == pytest.approx(0.4857, abs=1e-4)
    with pytest.raises(ValueError, match="baseline"):
        fisher_vs_baseline(df, "control")


def _mixed_frame() -> pd.DataFrame:
    """Two natural cells with every label, plus a control cell that must stay apart."""
    abs_ = {POS: "abs", "model.ctc_layers": [2, 4]}
    rel = {POS: "rel_shaw", "model.ctc_layers": []}
    return trials(
        *runs("abs", 2, 1, **abs_),
        {"cell": "abs", "label": "undecided", **abs_},
        {"cell": "abs", "label": "failed", **abs_},
        *runs("rel", 0, 3, **rel),
        {"cell": "rel", "label": "failed", **rel},
        *runs("control-reversed", 3, 1, control=True, **rel),
    )


def test_runs_without_an_outcome_count_as_unfinished_in_n_and_in_no_rate():
    # An interrupted sweep's runs are still `incomplete`: they belong to n, not to any label or rate.
    df = trials(*runs("a", 1, 2), {"cell": "a", "label": "incomplete"}, {"cell": "b", "label": "incomplete"})
    table = cell_table(df, []).set_index("cell")
    assert table.loc["a", ["n", "unfinished", "decided"]].tolist() == [4, 1, 3]
    assert table.loc["a", "rate"] == pytest.approx(1 / 3)
    assert table.loc["b", ["n", "unfinished", "decided"]].tolist() == [1, 1, 0]
    assert math.isnan(table.loc["b", "rate"])
    finished = cell_table(trials(*runs("a", 1, 2)), []).set_index("cell")
    assert finished.loc["a", "unfinished"] == 0


def test_cell_table_counts_and_control_separation():
    df = _mixed_frame()
    factors = [POS, "model.ctc_layers"]
    table = cell_table(df, factors).set_index("cell")
    assert table.index.tolist() == ["abs", "rel", "control-reversed"]
    abs_ = table.loc["abs"]
    assert (abs_["n"], abs_["reversed"], abs_["normal"], abs_["undecided"], abs_["failed"]) == (5, 2, 1, 1, 1)
    assert abs_["decided"] == 3 and abs_["rate"] == pytest.approx(2 / 3)  # failed and undecided excluded
    assert (abs_["ci_low"], abs_["ci_high"]) == pytest.approx(wilson_interval(2, 3))
    assert abs_["median_time_to_flip"] == 150.0 and abs_["model.ctc_layers"] == "[2, 4]"
    assert table.loc["rel", "rate"] == 0.0 and table.loc["rel", "failed"] == 1
    assert bool(table.loc["control-reversed", "control"]) and not bool(abs_["control"])

    marginals = marginal_rates(df, factors).set_index(["factor", "level"])
    assert marginals.loc[(POS, "rel_shaw"), "n"] == 4  # the control's 4 runs share the level but stay out
    assert marginals.loc[(POS, "abs"), ["decided", "reversed"]].tolist() == [3, 2]

    report = incidence_report(df, factors, "rel")  # a declared baseline that is not the first cell
    assert report.baseline_cell == "rel"
    assert report.fisher["cell"].tolist() == ["abs"] and set(report.fisher["baseline"]) == {"rel"}
    assert "Baseline levels: model.pos_enc=rel_shaw, model.ctc_layers=[]." in report.regression_summary
    assert incidence_report(df, factors).fisher.empty  # no baseline, no comparisons
    assert report.counts == {"n": 9, "reversed": 2, "normal": 4, "undecided": 1, "failed": 2, "decided": 6}
    assert report.overall["rate"] == pytest.approx(2 / 6)
    assert "Decided runs: 6 (2 reversed, 4 normal)" in report.regression_summary
    metrics = report.metrics()
    assert metrics["control/control-reversed/sensitivity"] == pytest.approx(0.75)
    assert metrics["overall/n_failed"] == 2 and metrics["control/n"] == 4


def test_regression_finds_a_clear_effect():
    rows = []
    for pos, k in (("abs", 9), ("rel_shaw", 2)):
        for i in range(12):
            warmup = 0.05 if i % 2 else 0.45
            rows.append(
                {
                    "cell": f"{pos}-{warmup}",
                    "label": "reversed" if i < k else "normal",
                    POS: pos,
                    WARMUP: warmup,
                }
            )
    df = trials(*rows)
    table, summary = logistic_regression(df, [POS, WARMUP], reference={POS: "rel_shaw"})
    row = table.set_index("term").loc[f"{POS}[T.abs]"]
    assert row["odds_ratio"] > 1 and row["ci_low"] > 1 and row["p_value"] < 0.05
    assert f"{WARMUP}[T.0.45]" in table["term"].tolist() and "Odds ratios" in summary
    # With the default reference (the first level, "abs") the same effect reads the other way round.
    default, _ = logistic_regression(df, [POS, WARMUP])
    assert default.set_index("term").loc[f"{POS}[T.rel_shaw]", "odds_ratio"] < 1


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        (runs("a", 0, 6, **{POS: "abs"}) + runs("b", 0, 6, **{POS: "rel"}), "all 12 decided runs are normal"),
        (
            many(4, label="undecided", **{POS: "abs"}) + many(2, label="failed", **{POS: "rel"}),
            "no decided runs",
        ),
        (runs("a", 5, 0, **{POS: "abs"}) + runs("b", 0, 5, **{POS: "rel"}), "perfect separation"),
        (
            runs("a", 2, 3, **{POS: "abs", WARMUP: 0.05}) + runs("b", 3, 2, **{POS: "rel", WARMUP: 0.45}),
            "singular",
        ),
        (
            # Every level is mixed, yet abs+0.05 is all reversed and rel+0.45 all normal: only the fit sees.
            runs("a", 3, 0, **{POS: "abs", WARMUP: 0.05})
            + runs("b", 2, 2, **{POS: "abs", WARMUP: 0.45})
            + runs("c", 2, 2, **{POS: "rel", WARMUP: 0.05})
            + runs("d", 0, 3, **{POS: "rel", WARMUP: 0.45}),
            "does not converge",
        ),
    ],
    ids=["all-normal", "no-decided", "separation", "confounded", "separation-by-combination"],
)
def test_regression_says_why_it_is_not_estimable(rows, reason):
    df = trials(*rows)
    factors = [f for f in (POS, WARMUP) if f in df.columns]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak to the terminal either
        table, summary = logistic_regression(df, factors)
    assert table.empty and table.columns.tolist() == REGRESSION_COLUMNS
    assert "not estimable" in summary.lower() and reason in summary


def test_kaplan_meier_on_hand_made_times():
    df = trials(
        {"label": "reversed", "time_to_flip": 100.0},
        {"label": "reversed", "time_to_flip": 200.0},
        {"label": "normal"},
        {"label": "undecided"},
        {"label": "failed"},  # left out
        {"cell": "ctl", "control": True, "label": "reversed", "time_to_flip": 50.0},  # left out
    )
    curve = time_to_flip_curve(df)
    survival = dict(zip(curve["step"], curve["survival"], strict=True))
    assert survival == pytest.approx({0.0: 1.0, 100.0: 0.75, 200.0: 0.5, 300.0: 0.5})
    assert curve["at_risk"].iloc[0] == 4
    assert curve["median_time_to_flip"].iloc[0] == 200.0

    df[POS] = ["abs", "rel", "rel", "rel", "rel", "abs"]
    by = time_to_flip_curve(df, by=POS)
    medians = by.drop_duplicates("group").set_index("group")["median_time_to_flip"]
    assert medians["abs"] == 100.0 and math.isnan(medians["rel"])  # rel: 1 of 3 flips, never reaches 0.5


def _factorial_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for pos in ("rel_shaw", "abs", "none"):
        for warmup in (0.05, 0.45):
            for _ in range(4):
                label = rng.choice(["reversed", "normal", "normal", "undecided"])
                rows.append(
                    {"cell": f"{WARMUP}={warmup},{POS}={pos}", "label": label, POS: pos, WARMUP: warmup}
                )
    rows += runs("control/reversed (block 3)", 3, 1, control=True)
    return trials(*rows)


def test_write_creates_every_file(tmp_path):
    report = incidence_report(_factorial_frame(), [POS, WARMUP])
    paths = write_incidence_files(report, tmp_path / "out")
    names = {p.relative_to(tmp_path / "out").as_posix() for p in paths}
    assert names == {
        "incidence.csv",
        "marginals.csv",
        "fisher.csv",
        "regression.csv",
        "model_summary.txt",
        "time_to_flip.csv",
        "plots/rate_by_factor.png",
        "plots/heatmap.png",
        "plots/direction_distribution.png",
        "plots/time_to_flip.png",
    }
    for path in paths:
        assert path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "out" / "model_summary.txt").read_text()
    assert "Logistic regression" in summary and "control/reversed (block 3)" in summary
    assert len(pd.read_csv(tmp_path / "out" / "incidence.csv")) == 7
    assert "all natural runs" in format_table(report)


def test_write_survives_a_sweep_without_decided_runs(tmp_path):
    df = trials(*many(3, label="undecided", **{POS: "abs"}), *many(2, label="failed", **{POS: "rel"}))
    report = incidence_report(df, [POS])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = write_incidence_files(report, tmp_path)
    assert sum(p.suffix == ".png" for p in paths) == 4 and not report.notes
    assert math.isnan(report.metrics()["overall/rate"])


def test_metric_names_are_mlflow_safe():
    df = _factorial_frame()
    df.loc[df["cell"].str.startswith(f"{WARMUP}=0.05,{POS}=abs"), "cell"] = "../odd name: ü/.."
    # An Optuna cell names every sampled value; two such names may share a long prefix.
    long_names = [",".join(f"model.knob_{i}={i}.{j}" for i in range(20)) for j in (1, 2)]
    df.loc[df["cell"].str.startswith(f"{WARMUP}=0.05,{POS}=rel"), "cell"] = long_names[0]
    df.loc[df["cell"].str.startswith(f"{WARMUP}=0.45,{POS}=rel"), "cell"] = long_names[1]
    metrics = incidence_report(df, [POS, WARMUP]).metrics()
    assert {"overall/rate", "overall/ci_low", "overall/ci_high", "overall/n_failed"} <= set(metrics)
    assert "control/control_reversed__block_3_/sensitivity" in metrics
    assert sum(k.startswith("cell/") and k.endswith("/rate") for k in metrics) == 6
    for key, value in metrics.items():
        assert re.fullmatch(r"[A-Za-z0-9_\-./]+", key), key
        assert posixpath.normpath(key) == key and ".." not in key.split("/"), key
        assert isinstance(value, float)
        assert len(key) <= 250, key  # MLflow's limit
    try:
        from mlflow.utils.validation import _validate_metric_name
    except ImportError:  # private helper; the checks above stand on their own
        return
    for key in metrics:
        _validate_metric_name(key)

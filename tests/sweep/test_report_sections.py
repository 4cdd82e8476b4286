"""`sweep.report`, section by section, on a hand-made record (no MLflow): each section a function of what the
sweep recorded; the kinds and the undecided reasons shown; comparisons within a family."""

from __future__ import annotations

import math

import pandas as pd

from sweep import report
from sweep.design import CellDesign, SweepDesign
from sweep.kept import KeptRuns
from sweep.report import analyses, reader, sections
from sweep.results import SweepRecord
from tests.sweep.test_kinds import KINDS, hand_made

FIGURES = {"g0_direction": 0.9, "encoder_direction": -0.9, "min_direction": 0.5, "layers": 2, "run_id": "r"}
FIGURES |= {"mhsa_ffn_ratio_before": 1.0, "mhsa_ffn_ratio_after": 3.0, "min_attention_direction": 0.5}
FIGURES |= {"backward_evaluations": 0, "backward_first_step": None, "backward_last_step": None}
FIGURES |= {"reversed_encoder_evaluations": 0}


class Curves:
    """The one curve a report section reads from MLflow for runs that did not flip, constant at 1.5."""

    kept = KeptRuns()

    def __call__(self, run_id: str, key: str) -> pd.Series:
        return pd.Series({50: 1.5, 100: 1.5}, dtype=float)

    def param(self, run_id: str, key: str, default: float) -> float:
        return default


def record() -> SweepRecord:
    cells = [
        CellDesign(name=name, values={}, settings={}, control=kind == "control", kind=kind)
        for name, kind in KINDS.items()
    ]
    design = SweepDesign(
        sweep_id="kinds-1", space="kinds", trainer="conformer_aed", search="grid", factors=[], cells=cells
    )
    design = design.model_copy(update={"baseline": "baseline", "seeds": [0, 1]})
    return SweepRecord([], design, hand_made())


def finished(stats) -> pd.DataFrame:
    """The finished runs as `reader.finished_runs` gives them, with the figures a reversed run carries."""
    done = stats.trials[stats.trials["label"] != "failed"]
    return done.assign(**FIGURES, flip_block=[2 if label == "reversed" else None for label in done["label"]])


def test_the_design_section_names_the_kinds_and_each_familys_baseline():
    lines = "\n".join(sections.design_lines(record()))
    assert "baseline cell: `baseline` (the first natural cell); induced baseline: `first-20`" in lines
    assert "cells by kind: 1 natural, 1 mitigation, 2 induced, 1 control" in lines
    assert "each cell is compared with the baseline of its family" in lines


def test_the_incidence_section_shows_each_cells_kind_why_runs_are_undecided_and_each_kinds_rate():
    stats = record().incidence()
    text = "\n".join(sections.incidence_lines(stats))
    header = text.split("\n")[2]
    assert [c.strip() for c in header.strip("|").split("|")][:3] == ["cell", "kind", "n"]
    assert "undecided: why" in header
    row = next(line for line in text.splitlines() if line.startswith("| first-20-ctc"))
    assert "| induced" in row and "focus 1, sink 1" in row
    assert "- Natural runs: 4 (0 reversed, 4 normal, 0 undecided, 0 failed); reversal rate" in text
    assert "- Induced runs: 8 (1 reversed, 5 normal, 2 undecided (focus 1, sink 1), 0 failed)" in text


def test_the_comparison_section_tests_each_family_against_its_own_baseline():
    text = "\n".join(sections.comparison_lines(record().incidence()))
    natural = text.split("### Fisher exact tests against `baseline`")[1].split("###")[0]
    induced = text.split("### Fisher exact tests against `first-20`")[1].split("###")[0]
    assert "| ctc" in natural and "first-20-ctc" not in natural
    assert "| first-20-ctc" in induced and "| ctc " not in induced
    assert "### Logistic regression" in text and "induced decided runs" in text


def test_the_reversed_and_mechanism_sections_keep_families_apart():
    stats = record().incidence()
    runs = finished(stats)
    verified = "\n".join(sections.reversed_lines(runs))
    rows = [line.split("|")[2:4] for line in verified.splitlines() if line.startswith(("| t0", "| t1"))]
    assert sorted((cell.strip(), kind.strip()) for cell, kind in rows) == [
        ("control", "control"),
        ("control", "control"),
        ("first-20", "induced"),
    ]
    assert "3 of 3 reversed runs pass every check." in verified
    mechanism = "\n".join(sections.mechanism_lines(Curves(), runs))
    assert "No natural and mitigation run reversed" in mechanism  # the induced flip is not theirs
    assert "### Mechanism, induced runs" in mechanism
    assert "control" not in mechanism  # constructed flips say nothing about the mechanism


def test_the_report_is_its_sections_in_order(monkeypatch):
    monkeypatch.setattr(report, "load_sweeps", lambda client, experiment, ids: record())
    monkeypatch.setattr(reader.RunReader, "of", classmethod(lambda cls, client, record: Curves()))
    monkeypatch.setattr(report, "finished_runs", lambda history, trials: finished(record().incidence()))
    text = report.report(client=None, experiment="kinds")
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings[:4] == ["## ", "### Design", "### Incidence", "### Fisher exact tests against `baseline`"]
    assert headings.index("### Logistic regression") < headings.index("### Reversed runs, verified")
    assert headings[-2] == "### Mechanism, induced runs: MHSA/FFN norm ratio of the flipping block (medians)"
    assert headings[-1] == "### Each run: its label, when it settled, and its last readings"


def test_a_run_settles_from_the_first_step_after_its_last_other_label():
    labels = pd.Series({50: 0.0, 100: 1.0, 150: 0.0, 200: 1.0, 250: 1.0}, dtype=float)  # undecided, normal...
    assert analyses.settled_from(labels, "normal") == 200
    assert analyses.settled_from(pd.Series({50: 1.0, 100: 1.0}, dtype=float), "normal") == 50  # from start
    assert math.isnan(analyses.settled_from(labels, "reversed"))  # its last evaluation says otherwise
    assert math.isnan(analyses.settled_from(labels, "undecided"))  # an undecided run never settles
    assert math.isnan(analyses.settled_from(pd.Series(dtype=float), "normal"))  # no curve


def test_undecided_evaluations_are_counted_by_reason_in_the_reasons_order():
    codes = pd.Series({50: 3.0, 100: 1.0, 150: 1.0, 200: 0.0, 250: 3.0, 300: 3.0}, dtype=float)
    assert analyses.undecided_evaluations(codes) == "accuracy 2, sink 3"
    assert analyses.undecided_evaluations(pd.Series({50: 0.0}, dtype=float)) == ""


class LabelCurves:
    """Every run normal from step 100 after undecided (accuracy) at 50; the figures a report reads at 1.5."""

    def __call__(self, run_id: str, key: str) -> pd.Series:
        curves = {"label_code": {50: 0.0, 100: 1.0, 150: 1.0}, "reason_code": {50: 1.0, 100: 0.0, 150: 0.0}}
        return pd.Series(curves.get(key, {50: 1.5, 100: 1.5}), dtype=float)


def test_the_runs_section_has_a_row_per_finished_run_and_writes_its_table(tmp_path):
    runs = finished(record().incidence())
    text = "\n".join(sections.runs_lines(LabelCurves(), runs, tmp_path))
    table = pd.read_csv(tmp_path / sections.RUNS_TABLE)
    assert len(table) == len(runs) and table["trial_key"].tolist() == runs["trial_key"].tolist()
    normal = table[table["label"] == "normal"]
    assert (normal["settled_from"] == 100).all()  # settled where its label stopped changing
    assert table.loc[table["label"] != "normal", "settled_from"].isna().all()  # the curves say normal
    assert (table["undecided_evaluations"] == "accuracy 1").all()
    assert {"g0_direction", "encoder_direction", "min_attention_direction"} <= set(table.columns)
    rows = [line for line in text.splitlines() if line.startswith("| t") and "trial_key" not in line]
    assert len(rows) == len(runs)


def test_a_sinks_fate_is_the_papers_picture_first_then_none_gone_or_stays():
    lift = pd.Series({50: 1.0, 100: 5.0, 150: 4.0}, dtype=float)
    assert analyses.sink_fate(lift, 3.0, 0.9, -0.9, 0.5) == "paper"  # G_0 forwards, last block backwards
    assert analyses.sink_fate(lift, 3.0, 0.9, 0.9, 0.5) == "stays"
    assert analyses.sink_fate(lift.replace(4.0, 2.0), 3.0, 0.9, 0.9, 0.5) == "gone"
    assert analyses.sink_fate(lift.clip(upper=2.9), 3.0, 0.9, 0.9, 0.5) == "none"
    assert analyses.sink_fate(lift, 3.0, 0.4, -0.9, 0.5) == "stays"  # G_0 not forwards: not the paper's
    assert list(analyses.SINK_FATES) == ["paper", "none", "gone", "stays"]  # the order they are checked in


class SinkCurves:
    """Two-block runs whose sink forms at step 100 and stays; block 2's self-attention reaches furthest."""

    def __call__(self, run_id: str, key: str) -> pd.Series:
        curves = {
            "cross_initial_lift": {50: 1.0, 100: 4.0, 150: 6.0, 200: 5.0},
            "outside_sink_direction": {50: 0.1, 200: 0.8},
            "block_direction_0": {200: 0.9},
            "block_direction_1": {200: 0.7},
            "block_direction_2": {200: -0.2},
            "self_initial_reach_1": {50: 0.5, 200: 0.55},
            "self_initial_reach_2": {50: 0.5, 200: 0.81},
        }
        return pd.Series(curves.get(key, {}), dtype=float)

    def param(self, run_id: str, key: str, default: float) -> float:
        return default


def test_the_sink_section_reads_when_a_sink_formed_how_it_ended_and_where_the_reach_is():
    runs = finished(record().incidence())
    table = analyses.sinks(SinkCurves(), runs)
    assert len(table) == len(runs) and table["trial_key"].tolist() == runs["trial_key"].tolist()
    first = table.iloc[0]
    assert (first["sink_from"], first["sink_evaluations"], first["evaluations"]) == (100, 3, 4)
    assert (first["lift_end"], first["lift_max"], first["outside_sink_end"]) == (5.0, 6.0, 0.8)
    assert first["gradient_maps_end"] == "+0.90 +0.70 -0.20"
    assert (first["reach_max"], first["reach_block"], first["fate"]) == (0.81, 2, "stays")
    text = "\n".join(sections.sink_lines(SinkCurves(), runs))
    assert "### The start-edge sink over training" in text and f"Fates: stays {len(runs)}." in text
    assert sections.sink_lines(LabelCurves(), runs[:0]) == []  # no runs, no section


class ForcedLinks(SinkCurves):
    """SinkCurves' runs, their cross-attention forced until step 100 (`forced`, else never forced), with the
    initial frames' pull and entropy beside the reach."""

    def __init__(self, forced: float = 100.0):
        self.forced = forced

    def __call__(self, run_id: str, key: str) -> pd.Series:
        curves = {
            "self_initial_pull_2": {50: 1.0, 100: 1.4, 200: 2.0},
            "self_initial_entropy_2": {50: 0.99, 100: 0.9, 200: 0.6},
        }
        return pd.Series(curves[key], dtype=float) if key in curves else super().__call__(run_id, key)

    def param(self, run_id: str, key: str, default: float) -> float:
        return self.forced if key == "model.forced_attention_steps" else default


def test_the_initial_frames_section_reads_the_farthest_block_at_the_start_the_release_and_the_end():
    runs = finished(record().incidence())
    table = analyses.initial_links(ForcedLinks(), runs)
    assert table["trial_key"].tolist() == runs["trial_key"].tolist()
    first = table.iloc[0]
    assert (first["block"], first["forced_until"]) == (2, 100.0)  # block 2 reached furthest (0.81)
    assert (first["reach_first"], first["reach_forced"], first["reach_end"]) == (0.5, 0.5, 0.81)
    assert (first["pull_first"], first["pull_forced"], first["pull_end"]) == (1.0, 1.4, 2.0)
    assert (first["entropy_first"], first["entropy_forced"], first["entropy_end"]) == (0.99, 0.9, 0.6)
    text = "\n".join(sections.initial_links_lines(ForcedLinks(), runs))
    assert "### The initial frames' self-attention" in text and "entropy_forced" in text
    never = "\n".join(sections.initial_links_lines(ForcedLinks(forced=0.0), runs))
    assert "entropy_end" in never and "_forced" not in never  # runs never forced: no release columns
    assert sections.initial_links_lines(ForcedLinks(), runs[:0]) == []  # no runs, no section


class NoReach(SinkCurves):
    """SinkCurves' runs recorded before the initial frames' self-attention reach (no reach curves)."""

    def __call__(self, run_id: str, key: str) -> pd.Series:
        return pd.Series(dtype=float) if key.startswith("self_initial_") else super().__call__(run_id, key)


def test_a_run_without_reach_curves_has_no_farthest_block():
    runs = finished(record().incidence())
    run = next(runs.itertuples(index=False))
    assert analyses.farthest_reach(SinkCurves(), run) == (2, 0.81)
    block, reach = analyses.farthest_reach(NoReach(), run)
    assert block is None and math.isnan(reach)
    first = analyses.sinks(NoReach(), runs).iloc[0]
    assert first["reach_block"] is None and math.isnan(first["reach_max"])  # not block 1, as if it were read
    assert analyses.initial_links(NoReach(), runs).empty  # nothing to read the initial frames from


class Imposed(SinkCurves):
    """Two-block runs. Those in `imposed` had the MHSA scale grow 1 -> 3 by step 150 and their cross-attention
    forced until step 100, released by 150; their attention and last block read backwards (G_0 forwards) at
    steps 100-200, forwards at 250. Those in `old` were recorded before the intervention curves; the rest
    recorded them with nothing imposed."""

    def __init__(self, imposed: set[str], old: set[str] = frozenset()):
        self.imposed, self.old = imposed, old

    def __call__(self, run_id: str, key: str) -> pd.Series:
        if key in analyses.INTERVENTION_CURVES and run_id in self.old:
            return pd.Series(dtype=float)
        if key in analyses.INTERVENTION_CURVES and run_id not in self.imposed:
            return pd.Series({50: 1.0, 250: 1.0}, dtype=float)
        curves = {
            "mhsa_scale": {50: 1.0, 100: 2.0, 150: 3.0, 200: 3.0, 250: 3.0},
            "learned_attention_share": {50: 0.0, 100: 0.0, 150: 1.0, 200: 1.0, 250: 1.0},
            "outside_sink_direction": {50: 0.1, 100: -0.8, 150: -0.7, 200: -0.6, 250: 0.9},
            "block_direction_0": {50: 0.9, 100: 0.9, 150: 0.9, 200: 0.9, 250: 0.9},
            "block_direction_2": {50: 0.1, 100: -0.9, 150: -0.8, 200: -0.7, 250: 0.8},
        }
        return pd.Series(curves[key], dtype=float) if key in curves else super().__call__(run_id, key)


def test_an_intervention_settles_when_its_scale_and_share_stop_changing():
    scale = pd.Series({50: 1.0, 100: 3.0, 150: 3.0}, dtype=float)
    share = pd.Series({50: 0.0, 100: 0.5, 150: 1.0}, dtype=float)
    assert analyses.settled_at([scale, share]) == 150  # the share still moved at 100
    assert analyses.settled_at([scale]) == 100
    assert analyses.settled_at([pd.Series({50: 1.0, 100: 1.0}, dtype=float)]) == 50  # never changed
    assert math.isnan(analyses.settled_at([pd.Series(dtype=float)]))  # not recorded


def test_the_interventions_section_reads_each_imposed_run_after_it_settled_and_names_the_cells_to_follow():
    runs = finished(record().incidence())
    runs = runs.assign(run_id=runs["trial_key"])
    induced = runs[runs["kind"] == "induced"]
    first = induced[induced["cell"] == "first-20"]["trial_key"].tolist()
    ctc = runs[runs["cell"] == "ctc"]["trial_key"].tolist()[0]  # a mitigation with forcing (a centre control)
    old = induced["trial_key"].tolist()[-1]
    curves = Imposed(imposed=set(induced["trial_key"]) - {old} | {ctc}, old={old})
    table = analyses.interventions(curves, runs).set_index("trial_key")
    # every induced run, and the mitigation run with something imposed; nothing else
    assert sorted(table.index) == sorted([*induced["trial_key"], ctc])
    row = table.loc[first[0]]
    assert (row["settled_at"], row["scale_end"]) == (150, 3.0)
    assert (row["direction_settled"], row["lowest_after"], row["direction_end"]) == (-0.7, -0.7, 0.9)
    assert (row["reversed_encoder_before"], row["reversed_encoder_after"]) == (1, 2)  # steps 100 | 150, 200
    assert math.isnan(table.loc[old, "settled_at"]) and math.isnan(table.loc[old, "reversed_encoder_after"])

    runs.loc[runs["trial_key"].isin(first), "reversed_encoder_evaluations"] = [5, 0, 2]
    runs.loc[runs["cell"] == "first-20-ctc", "reversed_encoder_evaluations"] = 1
    text = "\n".join(sections.intervention_lines(curves, runs, record().incidence()))
    assert "### The interventions: what training did once they held still" in text
    assert "re-run with more seeds: `first-20` (5 evaluations), `first-20-ctc` (1 evaluations)." in text
    assert "`first-20` flipped in 1 of 3 decided runs (33% [6%, 79%])" in text  # in FLIP_RANGE
    assert "`first-20-ctc` flipped" not in text  # 0 of 3
    # how sure each null is: over every finished run, its undecided ones too (0 of 3 decided would say 0-56 %)
    assert "  - `first-20-ctc`: 0 of 5 [0%, 43%] (3 normal, 2 undecided; 0 of 5 ended with" in text
    # an undecided run whose attention, G_0 and last block all end reading a flip: a reversed encoder unread
    unread = runs["trial_key"] == runs[runs["cell"] == "first-20-ctc"]["trial_key"].iloc[-1]
    runs["outside_sink_direction"] = runs["attention_direction"].where(~unread, -0.8)
    text = "\n".join(sections.follow_up_lines(record().incidence(), runs))
    assert "(3 normal, 2 undecided; 1 of 5 ended with the encoder reading reversed [4%, 62%])" in text
    weak = runs.assign(g0_direction=runs["g0_direction"].where(~unread, 0.4))  # the input not forwards
    assert "undecided; 0 of 5 ended" in "\n".join(sections.follow_up_lines(record().incidence(), weak))
    assert "  - `first-20`:" not in text and "  - `ctc`:" not in text  # it flipped; a mitigation
    nothing = runs.assign(reversed_encoder_evaluations=0)
    assert "No induced cell's encoder read reversed" in "\n".join(
        sections.follow_up_lines(record().incidence(), nothing)
    )
    assert sections.intervention_lines(curves, runs[runs["kind"] == "natural"], record().incidence()) == []


class NoCurves(SinkCurves):
    """Runs recorded without any curve."""

    def __call__(self, run_id: str, key: str) -> pd.Series:
        return pd.Series(dtype=float)


def test_each_run_gets_its_gradient_maps_over_training_with_the_intervention_marked(tmp_path):
    runs = finished(record().incidence())
    runs = runs.assign(run_id=runs["trial_key"])
    induced = runs[runs["kind"] == "induced"]
    natural = runs[runs["kind"] == "natural"].iloc[0]
    curves = Imposed(imposed=set(induced["trial_key"]), old={natural["trial_key"]})
    blocks = analyses.block_directions(curves, induced.iloc[0])
    assert blocks.columns.tolist() == [0, 1, 2]  # G_0 and both blocks, as recorded
    assert blocks.index.tolist() == [50, 100, 150, 200, 250]
    assert (blocks.loc[100, 0], blocks.loc[100, 2], blocks.loc[200, 1]) == (0.9, -0.9, 0.7)
    assert math.isnan(blocks.loc[100, 1])  # block 1 was read at step 200 only

    assert analyses.imposed(curves, induced.iloc[0]).all()  # forced to 100, scaled from 100
    assert not analyses.imposed(curves, runs[runs["cell"] == "baseline"].iloc[1]).any()  # x1, all learnt
    assert analyses.imposed(curves, natural).empty  # recorded before the intervention curves

    drawn = sections.write_block_maps(curves, runs, tmp_path, "t")
    assert [run.trial_key for run, _ in drawn] == runs["trial_key"].tolist()
    cell, seed = induced.iloc[0]["cell"], induced.iloc[0]["seed"]
    assert (tmp_path / f"t_{cell}_seed{seed}_blocks.png").stat().st_size > 1000
    assert sections.write_block_maps(NoCurves(), runs, tmp_path / "none", "t") == []


def test_sweep_figures_are_named_by_the_sweeps_so_parts_of_one_space_file_keep_their_own():
    from sweep.kept import SweepSource

    def named(*ids):
        return SweepRecord([SweepSource(i, 1.0) for i in ids], record().design, hand_made()).figure_name

    # one space file run a few cells at a time: two sweeps, two names
    first, second = named("pilot-20261206-062034"), named("pilot-20261206-180736")
    assert first == "pilot-20261206-062034" and first != second
    assert named("a-20261206-062034", "b-20261206-180736") == "a-20261206-062034+b-20261206-180736"
    many = [f"induced-step2-lr-after-seeds-{i}-20261206-0{i}0000" for i in range(8)]
    long, other = named(*many), named(*many[:-1], "induced-step2-lr-after-seeds-7-20261207-000000")
    assert len(long) <= 89 and long != other and long.startswith("induced-step2-lr-after-seeds-0+")
    assert record().figure_name == "kinds-1"  # a record read from nowhere: its design's id


def test_the_attention_outside_the_sink_falls_back_to_the_whole_attention_run_by_run():
    whole = pd.Series([-0.9, -0.8, 0.7])
    # pooled sweeps: the first run recorded before the sink was read apart, the last read one
    outside = pd.Series([math.nan, -0.6, 0.9])
    assert analyses.outside_sink(outside, whole).tolist() == [-0.9, -0.6, 0.9]
    assert analyses.outside_sink(None, whole).tolist() == whole.tolist()  # no such column at all
    curve = pd.Series({50: 0.2, 100: -0.7})  # one run's curve, recorded before: an empty one
    assert analyses.outside_sink(pd.Series(dtype=float), curve).tolist() == [0.2, -0.7]

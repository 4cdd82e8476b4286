"""Sweeps that continue one study, read as one (`sweep.results.pool_designs` / `pool_trials`), on hand-made
designs and trial tables; the real two-sweep report is in tests/e2e/test_sweep.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sweep.design import CellDesign, SweepDesign
from sweep.results import PoolError, pool_designs, pool_trials
from sweep.space import load_space
from sweep.stats.tables import label_counts

ROOT = Path(__file__).resolve().parents[2]

BASE = {"model.layers": 6, "model.ctc_layers": []}
CTC = {**BASE, "model.ctc_layers": [2, 4]}


def cell(name: str, settings: dict, **values) -> CellDesign:
    return CellDesign(name=name, values=values, settings=settings, control=False)


def design(sweep_id: str, *cells: CellDesign, baseline: str | None = None, **fields) -> SweepDesign:
    natural = [c.name for c in cells]
    return SweepDesign(
        sweep_id=sweep_id,
        space=sweep_id.rsplit("-", 1)[0],
        trainer="conformer_aed",
        search=fields.pop("search", "grid"),
        factors=fields.pop("factors", []),
        cells=list(cells),
        baseline=baseline or natural[0],
        baseline_declared=baseline is not None,
        **fields,
    )


def test_a_study_continued_by_more_seeds_and_new_cells_reads_as_one_design():
    first = design("study-1", cell("baseline", BASE), baseline="baseline", seeds=[0, 1])
    more_seeds = design("seeds-2", cell("baseline", BASE), seeds=[2, 3])  # its baseline is not declared
    beside = design(
        "ctc-3", cell("ctc-aux", CTC, **{"model.ctc_layers": [2, 4]}), factors=["model.ctc_layers"]
    )
    pooled = pool_designs([first, more_seeds, beside])
    assert [c.name for c in pooled.cells] == ["baseline", "ctc-aux"]
    assert (pooled.baseline, pooled.baseline_declared) == ("baseline", True)
    assert pooled.factors == ["model.ctc_layers"] and pooled.seeds == [0, 1, 2, 3]
    assert pooled.sweep_id == "study-1 + seeds-2 + ctc-3"


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (
            design("other-2", cell("baseline", {**BASE, "model.layers": 4})),
            "'baseline' differs between sweeps",
        ),
        (design("other-2", cell("ctc-aux", CTC), baseline="ctc-aux"), "different baselines"),
        (design("other-2", cell("baseline", BASE), search="random"), "only grid sweeps"),
        (design("other-2", cell("baseline", BASE), legacy=True), "predates recorded designs"),
    ],
)
def test_sweeps_that_are_not_one_study_are_refused_with_the_reason(second, message):
    first = design("study-1", cell("baseline", BASE), cell("ctc-aux", CTC), baseline="baseline")
    with pytest.raises(PoolError, match=message) as refused:
        pool_designs([first, second])
    if "differs" in message:  # the setting that differs, with both values
        assert "model.layers = 6 vs 4" in str(refused.value) and "study-1 and other-2" in str(refused.value)


def frame(*rows: tuple[str, int, str | None]) -> pd.DataFrame:
    """A trials frame of (cell, seed, label) rows (label None: a run an interrupted sweep left unfinished)."""
    keys = [f"c000-r{seed:02d}" for _, seed, _ in rows]
    cells, seeds, labels = zip(*rows, strict=True)
    return pd.DataFrame({"trial_key": keys, "cell": cells, "seed": seeds, "label": labels})


def test_pooled_trials_keep_every_outcome_once_and_drop_runs_another_sweep_finished():
    # The first sweep was interrupted with seed 2 running and seed 3 not started; the second ran both.
    first = frame(("baseline", 0, "normal"), ("baseline", 1, "reversed"), ("baseline", 2, None))
    second = frame(("baseline", 2, "normal"), ("baseline", 3, "undecided"), ("baseline", 4, None))
    pooled = pool_trials([first, second], ["study-1", "seeds-2"])
    assert pooled["trial_key"].tolist() == [
        "seeds-2/c000-r02",
        "seeds-2/c000-r03",
        "seeds-2/c000-r04",
        "study-1/c000-r00",
        "study-1/c000-r01",
    ]
    assert pooled.set_index("seed")["sweep"].to_dict() == {
        0: "study-1",
        1: "study-1",
        2: "seeds-2",
        3: "seeds-2",
        4: "seeds-2",
    }
    counts = label_counts(pooled["label"])
    assert (counts["n"], counts["decided"], counts["reversed"], counts["undecided"]) == (5, 3, 1, 1)
    assert counts["unfinished"] == 1  # seed 4: unfinished everywhere, so still counted as such


def test_a_seed_with_an_outcome_in_two_sweeps_is_refused():
    first = frame(("baseline", 0, "normal"), ("baseline", 1, "normal"))
    second = frame(("baseline", 1, "failed"))
    with pytest.raises(
        PoolError, match="cell 'baseline' seed 1 has an outcome in sweeps study-1 and seeds-2"
    ):
        pool_trials([first, second], ["study-1", "seeds-2"])
    other_cell = frame(("ctc-aux", 1, "normal"))  # the same seed in another cell is another trial
    assert len(pool_trials([first, other_cell], ["study-1", "ctc-2"])) == 3


def test_c6s_mitigation_cells_pool_with_its_baseline_sweeps():
    """`studies/c6_mitigations.yaml` (and its chunks of seeds, `c6_mitigations_seeds_*.yaml` and
    `c6_self_attention_off_seeds_*.yaml`) runs c6's two mitigation cells beside the baseline that ran as
    `c6_paper_like.yaml` and `c6_baseline_seeds.yaml`: their cells must be the same cells, so that the sweeps
    read as one study, and the chunks together must cover its seeds."""
    studies = ROOT / "search_spaces" / "studies"
    spaces = (
        "c6_paper_like",
        "c6_baseline_seeds",
        "c6_mitigations",
        "c6_mitigations_seeds_0_3",
        "c6_mitigations_seeds_4_9",
        "c6_mitigations_seeds_10_13",
        "c6_mitigations_seeds_14_15",
        "c6_self_attention_off_seeds_4_9",
        "c6_self_attention_off_seeds_8_9",
    )
    designs = [SweepDesign.from_space(load_space(studies / f"{name}.yaml"), name) for name in spaces]
    pooled = pool_designs(designs)
    whole = designs[0]  # c6_paper_like.yaml: all three cells
    assert pooled.cells == whole.cells and pooled.baseline == "baseline" and pooled.factors == whole.factors
    for mitigations in designs[2:-2]:
        assert [c.name for c in mitigations.cells] == ["ctc-aux", "self-attention-off-early"]
    for self_attention_off in designs[-2:]:
        assert [c.name for c in self_attention_off.cells] == ["self-attention-off-early"]
    for cell in ("ctc-aux", "self-attention-off-early"):  # the chunks cover c6_mitigations.yaml's seeds
        chunks = [d for d in designs[3:] if cell in {c.name for c in d.cells}]
        assert sorted({seed for d in chunks for seed in d.seeds}) == designs[2].seeds == list(range(16))


@pytest.mark.parametrize(
    ("spaces", "baseline"),
    [
        (("c1_long", "c1_long_seeds_4_7"), "long"),
        (("c4_schedule", "c4_schedule_seeds_2_3"), "whole-schedule"),
        (("speech_rendered_seeds_0_3", "speech_rendered_seeds_4_5", "speech_rendered_seeds_6_7"), "baseline"),
        (("speech_long", "speech_long_seeds_2_3"), "long"),
    ],
    ids=["c1", "c4", "speech-rendered", "speech-long"],
)
def test_a_studys_missing_seeds_pool_with_it(spaces, baseline):
    """A study's missing seeds run as a file of their own (`base_from` the study, `replicates: [...]`), or the
    study runs in parts from the start: each part's cell must be the study's cell, setting for setting, and
    the seeds the study's (each once), so that the sweeps read as one study."""
    studies = ROOT / "search_spaces" / "studies"
    whole, *parts = (SweepDesign.from_space(load_space(studies / f"{name}.yaml"), name) for name in spaces)
    pooled = pool_designs([whole, *parts])
    assert pooled.cells == whole.cells and pooled.baseline == baseline and pooled.factors == whole.factors
    if all(set(part.seeds) < set(whole.seeds) for part in parts):  # the study's file names every seed
        assert pooled.seeds == whole.seeds
    else:  # the study runs in parts, no seed twice: together they are seeds 0 .. n-1
        seeds = [seed for design in (whole, *parts) for seed in design.seeds]
        assert len(seeds) == len(set(seeds)) and pooled.seeds == list(range(len(seeds)))

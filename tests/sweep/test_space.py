"""The space file: malformed files are refused with the right key and line; good ones expand correctly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from sweep.registry import TRAINERS, get_trainer
from sweep.space import (
    SpaceError,
    base_overrides,
    expand,
    factor_names,
    load_space,
    sample_random,
    trial_table,
)
from trainers.train import ANNEAL_START

ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((ROOT / "tests" / "sweep" / "bad_spaces").glob("*.yaml"))
EXPECT = re.compile(r"# expect: key=(?P<key>\S*) line=(?P<line>\d+|None)$")


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text.strip() + "\n")
    return path


def expectation(path: Path) -> tuple[str, int | None]:
    match = EXPECT.match(path.read_text().splitlines()[0])
    assert match, f"{path.name}: first line must be `# expect: key=<dotted key> line=<n>`"
    return match["key"], None if match["line"] == "None" else int(match["line"])


# -- malformed files ----------------------------------------------------------------------------------------
def test_corpus_is_large_enough():
    assert len(BAD) >= 24


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_space_is_refused_at_key_and_line(path: Path):
    key, line = expectation(path)
    with pytest.raises(SpaceError) as caught:
        load_space(path, confirm=False)
    error = caught.value
    assert (error.key, error.line) == (key, line), str(error)
    text = str(error)
    assert "\n" not in text
    assert text.startswith(f"{path}:{line}: " if line is not None else f"{path}: ")
    if key:
        assert f": {key}: " in text


def test_missing_file(tmp_path: Path):
    with pytest.raises(SpaceError, match="cannot read"):
        load_space(tmp_path / "nope.yaml")


def test_python_tag_never_runs(tmp_path: Path):
    marker = tmp_path / "ran"
    path = write(
        tmp_path,
        f"""
name: x
trainer: conformer_aed
base: !!python/object/apply:os.system ["touch {marker}"]
""",
    )
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    assert (caught.value.key, caught.value.line) == ("base", 3)
    assert not marker.exists()


def test_a_combination_of_base_and_cell_blames_the_cell(tmp_path: Path):
    path = write(
        tmp_path,
        """
name: x
trainer: conformer_aed
base: {model.ctc_layers: [5]}
cells:
  - {name: deep}
  - {name: shallow, model.layers: 4}
""",
    )
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    assert (caught.value.key, caught.value.line) == ("cells[1].model.layers", 6)
    assert "ctc_layers [5] outside 1..4" in caught.value.message


# -- good files ---------------------------------------------------------------------------------------------
GRID = """
name: grid-test
description: two factors, an extra cell and a control
trainer: conformer_aed
base: {train.steps: 300, model.layers: 4, train.lr_peak: 1e-3}
factors:
  train.lr_warmup: [0.05, 0.45]
  model.pos_enc: [rel_shaw, abs, none]
cells:
  - {name: ctc-aux, model.ctc_layers: [2, 4]}
  - {name: control-reversed, model.control: reverse_encoder, model.control_block: 3}
replicates: 3
seed: 10
baseline: train.lr_warmup=0.45,model.pos_enc=rel_shaw
resources: {cpus_per_trial: 0.5, gpus_per_trial: 0.125}
"""


@pytest.fixture
def grid(tmp_path: Path):
    return load_space(write(tmp_path, GRID))


def test_grid_expands_cells_times_replicates(grid):
    specs = expand(grid)
    assert len(specs) == (2 * 3 + 2) * 3 == grid.n_trials
    assert [s.trial_key for s in specs[:4]] == ["c000-r00", "c000-r01", "c000-r02", "c001-r00"]
    assert len({s.trial_key for s in specs}) == len(specs)
    assert [s.seed for s in specs[:6]] == [10, 11, 12, 10, 11, 12]
    assert [s.replicate for s in specs[:3]] == [0, 1, 2]
    cells = list(dict.fromkeys(s.cell for s in specs))
    assert cells[:2] == [
        "train.lr_warmup=0.05,model.pos_enc=rel_shaw",
        "train.lr_warmup=0.05,model.pos_enc=abs",
    ]
    assert cells[-2:] == ["ctc-aux", "control-reversed"]
    assert [s.cell_index for s in specs[::3]] == list(range(8))


def test_grid_keys_are_stable(grid, tmp_path: Path):
    again = load_space(write(tmp_path, GRID, "again.yaml"))
    assert [asdict(s) for s in expand(grid)] == [asdict(s) for s in expand(again)]


def test_grid_overrides_merge_base_cell_and_seed(grid):
    specs = {(s.cell, s.replicate): s for s in expand(grid)}
    factorial = specs[("train.lr_warmup=0.45,model.pos_enc=abs", 1)]
    assert factorial.overrides == {
        "train.steps": 300,
        "model.layers": 4,
        "train.lr_peak": 1e-3,  # `1e-3` is a float, not YAML 1.1's string
        "train.lr_warmup": 0.45,
        "model.pos_enc": "abs",
        "seed": 11,
    }
    extra = specs[("ctc-aux", 0)]
    assert extra.overrides["model.ctc_layers"] == [2, 4]
    assert extra.overrides["seed"] == 10
    assert "train.lr_warmup" not in extra.overrides  # extra cells are base + their own keys only
    json.dumps([asdict(s) for s in specs.values()])  # Ray's grid_search carries them as plain data


def test_control_flags(grid):
    controls = {s.cell for s in expand(grid) if s.control}
    assert controls == {"control-reversed"}


def test_space_fields_are_readable(grid):
    assert grid.name == "grid-test"
    assert grid.search == "grid"
    assert grid.resources.gpus_per_trial == 0.125
    assert grid.resources.cpus_per_trial == 0.5
    assert grid.mlflow.experiment == "grid-test"  # defaults to the space's name
    assert grid.ranges == {}
    assert grid.trainer_spec is get_trainer("conformer_aed")
    assert "factors:" in grid.text


def test_factor_names(grid):
    # the control's keys vary only among controls; ctc_layers differs between natural cells
    assert factor_names(grid) == ["train.lr_warmup", "model.pos_enc", "model.ctc_layers"]


def test_trial_table(grid):
    table = trial_table(expand(grid))
    lines = table.splitlines()
    assert lines[0].split() == ["trial", "cell", "seed", "kind"]
    assert len(lines) == 1 + 24 + 1
    assert lines[-1] == "24 trials in 8 cells (6 natural, 1 mitigation, 1 control)"
    assert re.match(r"c006-r02\s+ctc-aux\s+12\s+mitigation$", lines[-5])
    assert re.match(r"c007-r02\s+control-reversed\s+12\s+control$", lines[-2])


def test_replicate_list_and_single_base_cell(tmp_path: Path):
    space = load_space(write(tmp_path, "name: one\ntrainer: conformer_aed\nreplicates: [7, 3, 42]"))
    specs = expand(space)
    assert [(s.cell, s.seed, s.trial_key) for s in specs] == [
        ("base", 7, "c000-r00"),
        ("base", 3, "c000-r01"),
        ("base", 42, "c000-r02"),
    ]
    assert specs[0].overrides == {"seed": 7}


def test_cells_without_factors(tmp_path: Path):
    path = write(
        tmp_path,
        """
name: mitigations
trainer: conformer_aed
cells:
  - {name: baseline}
  - {model.self_attention_off_steps: 100}
replicates: 2
""",
    )
    specs = expand(load_space(path))
    assert [s.cell for s in specs] == ["baseline"] * 2 + ["model.self_attention_off_steps=100"] * 2


def test_large_grid_needs_confirm(tmp_path: Path):
    text = """
name: big
trainer: conformer_aed
factors:
  train.lr_warmup: [0.05, 0.15, 0.25, 0.35, 0.45]
  model.ffn_scale: [0.25, 0.5, 1.0]
replicates: 10
max_trials: 100
"""
    path = write(tmp_path, text)
    with pytest.raises(SpaceError, match="150 trials"):
        load_space(path)
    assert len(expand(load_space(path, confirm=True))) == 150


def test_shipped_spaces_load():
    counts = {}
    for path in sorted((ROOT / "search_spaces").rglob("*.yaml")):
        space = load_space(path)
        counts[path.stem] = len(expand(space)) or space.samples
    assert counts["paper_factors"] == 96
    assert counts["quick"] == 6
    assert counts["reproduction"] == counts["reproduction_gpu"] == 48  # 16 seeds x 3 cells
    assert {"s1_leads", "s2_transient", "s3_hunt"} <= set(counts)


def test_reproduction_cells_share_seeds_and_differ_only_by_the_mitigation():
    for name in ("reproduction", "reproduction_gpu"):
        trials = expand(load_space(ROOT / "search_spaces" / f"{name}.yaml"))
        by_cell = {}
        for trial in trials:
            by_cell.setdefault(trial.cell, []).append(trial)
        assert list(by_cell) == ["baseline", "ctc-aux", "self-attention-off-early"]
        seeds = [sorted(t.seed for t in cell) for cell in by_cell.values()]
        assert seeds[0] == seeds[1] == seeds[2] and len(seeds[0]) == 16
        base = by_cell["baseline"][0].overrides
        for cell, key in [
            ("ctc-aux", "model.ctc_layers"),
            ("self-attention-off-early", "model.self_attention_off_steps"),
        ]:
            other = by_cell[cell][0].overrides
            assert {k for k in base.keys() | other.keys() if base.get(k) != other.get(k)} == {key}


def changed_keys(overrides: dict, twin: dict) -> set[str]:
    """The override keys whose values differ between two trials (a key set in one only counts)."""
    return {k for k in overrides.keys() | twin.keys() if overrides.get(k) != twin.get(k)}


INTERVENTION_KEYS = {
    "model.forced_attention_at",
    "model.forced_attention_steps",
    "model.forced_attention_blend_steps",
    "model.mhsa_scale_schedule",
}


@pytest.mark.parametrize(
    ("name", "kinds"),
    [
        ("induced_speech_step2", {"dominance-after-sink": "induced"}),
        (
            "induced_speech_pilot",
            {
                "first-1000-1000": "induced",
                "first-1000-1000-then-dominance": "induced",
                "dominance-1500-release-2000": "induced",
                "centre-1000-1000": "mitigation",
                "centre-1000-1000-then-dominance": "induced",
            },
        ),
    ],
)
def test_speech_interventions_differ_from_study_7s_natural_seeds_only_by_the_intervention(name, kinds):
    """The induced speech studies pair with study 7's natural seeds at 4000 steps: the same settings and
    seeds but for the keys that impose a step of the paper's mechanism, and a kind that never pools with
    them."""
    natural = {
        t.seed: t for t in expand(load_space(ROOT / "search_spaces/studies/speech_rendered_seeds_0_3.yaml"))
    }
    trials = expand(load_space(ROOT / "search_spaces" / "studies" / f"{name}.yaml"))
    assert {t.cell: t.kind for t in trials} == kinds
    for trial in trials:
        twin = natural[trial.seed]
        assert twin.kind == "natural"
        changed = changed_keys(trial.overrides, twin.overrides)
        assert changed and changed <= INTERVENTION_KEYS, (trial.cell, changed)


@pytest.mark.parametrize(
    ("name", "natural_file", "seeds"),
    [
        ("induced_speech_seeds_2_3", "speech_rendered_seeds_0_3", {2, 3}),
        ("induced_speech_seeds_4_5", "speech_rendered_seeds_4_5", {4, 5}),
        ("induced_speech_seeds_6_7", "speech_rendered_seeds_6_7", {6, 7}),
    ],
)
def test_speech_seed_files_are_the_pilots_cells_on_study_7s_other_seeds(name, natural_file, seeds):
    """The speech seed files give two pilot cells their 8 seeds: each trial is its cell's pilot trial with
    only the seed changed, and study 7's natural run of that seed but for the intervention keys."""
    pilot = {
        t.cell: t
        for t in expand(load_space(ROOT / "search_spaces/studies/induced_speech_pilot.yaml"))
        if t.seed == 0
    }
    natural = {
        t.seed: t for t in expand(load_space(ROOT / "search_spaces" / "studies" / f"{natural_file}.yaml"))
    }
    trials = expand(load_space(ROOT / "search_spaces" / "studies" / f"{name}.yaml"))
    assert {(t.cell, t.seed) for t in trials} == {
        (cell, seed) for cell in ("first-1000-1000", "dominance-1500-release-2000") for seed in seeds
    }
    for trial in trials:
        assert trial.kind == "induced"
        assert changed_keys(trial.overrides, {**pilot[trial.cell].overrides, "seed": trial.seed}) == set()
        changed = changed_keys(trial.overrides, natural[trial.seed].overrides)
        assert changed and changed <= INTERVENTION_KEYS, (trial.cell, changed)


@pytest.mark.parametrize(
    ("name", "seeds", "changed_keys_expected"),
    [
        ("induced_step2_seeds_2_5", {2, 3, 4, 5}, set()),
        ("induced_step2_seeds_6_7", {6, 7}, set()),
        ("induced_step2_lr_after_release", {0, 1}, {"train.steps", "train.lr_warmup"}),
        ("induced_step2_lr_after_seeds_2_3", {2, 3}, {"train.steps", "train.lr_warmup"}),
        ("induced_step2_lr_after_seeds_4_5", {4, 5}, {"train.steps", "train.lr_warmup"}),
        ("induced_step2_lr_after_seeds_6_7", {6, 7}, {"train.steps", "train.lr_warmup"}),
        ("induced_step2_lr_held_longer", {0, 1}, {"train.steps", "train.lr_warmup"}),
    ],
)
def test_step2_follow_ups_are_the_pilot_cell_with_more_seeds_or_more_learning_rate(
    name, seeds, changed_keys_expected
):
    """The follow-ups of the step-2 pilot pool with its cell `dominance-900-release-2000`: the same settings,
    only new seeds, or the LR schedule stretched past the release and nothing else, its peak at the pilot's
    step, so that up to the peak each run is the pilot's run of its seed."""
    (pilot,) = [
        t
        for t in expand(load_space(ROOT / "search_spaces/studies/induced_pilot_step2.yaml"))
        if t.cell == "dominance-900-release-2000" and t.seed == 0
    ]
    trials = expand(load_space(ROOT / "search_spaces" / "studies" / f"{name}.yaml"))
    assert {t.seed for t in trials} == seeds
    for trial in trials:
        assert trial.kind == "induced"
        changed = changed_keys(trial.overrides, {**pilot.overrides, "seed": trial.seed})
        assert changed == changed_keys_expected, (name, changed)
        peak = trial.overrides["train.steps"] * trial.overrides["train.lr_warmup"]
        assert peak == pytest.approx(pilot.overrides["train.steps"] * pilot.overrides["train.lr_warmup"])


def test_the_released_both_in_order_cell_is_the_pilots_cell_with_its_dominance_then_released():
    """`induced_both_release` pools with nothing, but reads against the pilot cell
    `first-300-300-then-dominance`: the same run up to the LR peak (the same forcing, the same growth of the
    MHSA scale, the peak at the pilot's step), then x3 brought back to x1 with LR left after it."""
    pilot = {
        t.seed: t
        for t in expand(load_space(ROOT / "search_spaces/studies/induced_pilot_both.yaml"))
        if t.cell == "first-300-300-then-dominance"
    }
    trials = expand(load_space(ROOT / "search_spaces/studies/induced_both_release.yaml"))
    assert {t.seed for t in trials} == set(pilot) == {0, 1}
    for trial in trials:
        twin = pilot[trial.seed].overrides
        assert trial.kind == "induced"
        changed = changed_keys(trial.overrides, twin)
        assert changed == {"train.steps", "train.lr_warmup", "model.mhsa_scale_schedule"}
        peak = trial.overrides["train.steps"] * trial.overrides["train.lr_warmup"]
        assert peak == pytest.approx(twin["train.steps"] * twin["train.lr_warmup"])
        schedule, grown = trial.overrides["model.mhsa_scale_schedule"], twin["model.mhsa_scale_schedule"]
        assert schedule[: len(grown)] == grown  # the pilot's growth, step for step
        last_step, last_scale = schedule[-1]
        assert last_scale == 1.0 and last_step < trial.overrides["train.steps"] * ANNEAL_START  # LR left


# -- base_from: a space that starts from another file's base ------------------------------------------------
def _space(tmp_path: Path, name: str, *lines: str) -> Path:
    return write(tmp_path, "\n".join([f"name: {name}", "trainer: conformer_aed", *lines]), f"{name}.yaml")


def test_base_from_inherits_the_base_and_its_own_keys_win(tmp_path: Path):
    _space(tmp_path, "first", "base: {train.steps: 300, model.layers: 4, model.rel_clip: 8}")
    _space(tmp_path, "second", "base_from: first.yaml", "base: {model.layers: 6}", "replicates: 3")
    (tmp_path / "sub").mkdir()
    third = _space(tmp_path / "sub", "third", "base_from: ../second.yaml", "base: {model.rel_clip: 16}")
    space = load_space(third)
    # a chain of two: steps from the first file, layers from the second, rel_clip from its own
    assert space.base == {"train.steps": 300, "model.layers": 6, "model.rel_clip": 16}
    assert [path.name for path, _ in space.base_files] == ["second.yaml", "first.yaml"]
    assert space.replicates == 1  # nothing but the base is inherited: the design is each file's own
    assert expand(space)[0].overrides == {
        "train.steps": 300,
        "model.layers": 6,
        "model.rel_clip": 16,
        "seed": 0,
    }


@pytest.mark.parametrize(
    ("child", "where", "key", "message"),
    [
        (["base_from: missing.yaml"], ("child", 3), "base_from", "no space file"),
        (
            ["base_from: child.yaml"],
            ("child", 3),
            "base_from",
            "a cycle of base_from (child.yaml -> child.yaml)",
        ),
        (["base_from: bad_parent.yaml"], ("bad_parent", 4), "base.model.layres", "unknown trial-config key"),
        (["base_from: parent.yaml", "base: {model.heads: 3}"], ("child", 4), "base.model.heads", "divisible"),
        (["base_from: parent.yaml", "base: {model.layres: 3}"], ("child", 4), "base.model.layres", "unknown"),
        (["base_from: [parent.yaml]"], ("child", 3), "base_from", "valid string"),
        # the combination is blamed on the inherited key (without it, heads 4 divide the default width 64),
        # and that key is named where it is written: in the other file
        (
            ["base_from: narrow.yaml", "base: {model.heads: 4}"],
            ("narrow", 5),
            "base.model.d_model",
            "divisible",
        ),
    ],
    ids=[
        "missing",
        "cycle",
        "bad-parent",
        "breaks-inherited",
        "unknown-own-key",
        "not-a-path",
        "inherited-broken",
    ],
)
def test_base_from_errors_name_the_file_and_line_of_the_key(tmp_path, child, where, key, message):
    _space(tmp_path, "parent", "base:", "  model.d_model: 32", "  model.heads: 4")
    _space(tmp_path, "bad_parent", "base:", "  model.layres: 4")
    _space(tmp_path, "narrow", "base:", "  model.heads: 3", "  model.d_model: 30")
    path = _space(tmp_path, "child", *child)
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    error = caught.value
    assert (Path(error.source).stem, error.line, error.key) == (*where, key), str(error)
    assert message in error.message and "\n" not in str(error)


def test_base_from_refuses_another_trainer(tmp_path: Path):
    _space(tmp_path, "parent", "base: {train.steps: 300}")
    path = write(tmp_path, "name: child\ntrainer: another\nbase_from: parent.yaml", "child.yaml")
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    assert (caught.value.key, caught.value.line) == ("trainer", 2)


def test_conditions_studies_are_c1_plus_their_condition():
    """The conditions studies take c1's base (c5: c2's) and add only their own keys: the design says one
    condition at a time, and `base_from` makes the file say it too."""
    studies = ROOT / "search_spaces" / "studies"
    c1 = load_space(studies / "c1_long.yaml").base
    c2 = load_space(studies / "c2_edges.yaml").base
    assert {k: v for k, v in c2.items() if c1.get(k) != v} == {
        "data.features": "log_mel",
        "data.bucket_batches": 8,
        "detector.batches": 4,
    }
    c5 = load_space(studies / "c5_specaug.yaml")
    assert [path.name for path, _ in c5.base_files] == ["c2_edges.yaml", "c1_long.yaml"]
    assert c2.keys() <= c5.base.keys()
    assert {k for k, v in c5.base.items() if c2.get(k) != v} == {
        "detector.min_steps",
        "train.specaug",
        "train.specaug_steps",
        "train.specaug_time_width",
        "train.specaug_feature_width",
    }


# -- random and optuna --------------------------------------------------------------------------------------
RANDOM = """
name: rand
trainer: conformer_aed
base: {train.steps: 200}
search: random
samples: 12
seed: 5
ranges:
  train.lr_peak: {low: 1e-4, high: 3.0e-3, log: true}
  model.layers: {low: 2, high: 8, integer: true}
  model.pos_enc: {choices: [rel_shaw, abs]}
"""


def test_sample_random_is_deterministic(tmp_path: Path):
    space = load_space(write(tmp_path, RANDOM))
    assert expand(space) == []
    first, again, other = sample_random(space, 1), sample_random(space, 1), sample_random(space, 2)
    assert first == again
    assert first != other
    assert len(first) == 12 == space.n_trials
    assert [s.seed for s in first] == list(range(5, 17))
    assert [s.trial_key for s in first][:2] == ["s000", "s001"]
    for spec in first:
        assert 1e-4 <= spec.overrides["train.lr_peak"] <= 3e-3
        assert isinstance(spec.overrides["model.layers"], int) and 2 <= spec.overrides["model.layers"] <= 8
        assert spec.overrides["model.pos_enc"] in ("rel_shaw", "abs")
        assert spec.overrides["train.steps"] == 200
        assert spec.cell.startswith("train.lr_peak=") and not spec.control
    assert len({s.cell for s in first}) == 12
    assert factor_names(space) == ["train.lr_peak", "model.layers", "model.pos_enc"]


def test_optuna_exposes_ranges(tmp_path: Path):
    space = load_space(ROOT / "search_spaces" / "hunt.yaml")
    assert space.search == "optuna"
    assert expand(space) == [] and sample_random(space, 0) == []  # optuna proposes its own points
    assert space.objective.metric == "reversal_score" and space.objective.mode == "max"
    lr = space.ranges["train.lr_peak"]
    assert (lr.low, lr.high, lr.log, lr.choices) == (3.0e-4, 5.0e-3, True, None)
    assert space.ranges["model.pos_enc"].choices == ["rel_shaw", "abs", "abs+rel_shaw", "none"]


# -- registry and imports -----------------------------------------------------------------------------------
def test_registry():
    spec = get_trainer("conformer_aed")
    assert spec.run == "trainers.train:run_trial"
    assert "model.pos_enc" in spec.known_keys()
    with pytest.raises(KeyError, match="conformer_aed"):
        get_trainer("nope")
    assert set(TRAINERS) == {"conformer_aed"}


def test_validation_imports_nothing_heavy():
    code = (
        "import sys; from sweep.space import load_space, expand; "
        "expand(load_space('search_spaces/paper_factors.yaml')); "
        "print(sorted(m for m in ('ray', 'torch', 'mlflow', 'optuna', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_optuna_trials_get_the_corpus_path_absolute(tmp_path: Path, monkeypatch):
    # Ray starts each trial in its own folder: a relative speech.root must reach it resolved from where the
    # driver ran, as grid and random trials get it.
    monkeypatch.chdir(tmp_path)
    text = """
name: hunt-speech
trainer: conformer_aed
base: {data.source: audio, speech.root: data/spoken, train.steps: 10}
search: optuna
samples: 2
objective: {metric: max_cross_initial_lift, mode: max}
ranges:
  train.lr_peak: {low: 1e-4, high: 3.0e-3, log: true}
"""
    space = load_space(write(tmp_path, text))
    base = base_overrides(space)
    assert base["speech.root"] == str(tmp_path.resolve() / "data" / "spoken")
    assert base["train.steps"] == 10 and set(base) == {"data.source", "speech.root", "train.steps"}

    from sweep.tuner import tuner_parts

    param_space, _ = tuner_parts(space, [], "hunt-speech-1", f"sqlite:///{tmp_path / 'optuna.db'}")
    assert param_space["spec"]["overrides"] == base


# -- a study a few cells at a time (--cells) ----------------------------------------------------------------
def test_selected_cells_keep_their_trial_keys_and_their_parts_pool_to_the_whole_design():
    from sweep.design import SweepDesign
    from sweep.results import pool_designs
    from sweep.space import select_cells, trial_specs

    whole = load_space(ROOT / "search_spaces" / "mitigations.yaml")  # a declared baseline: `baseline`
    names = [cell.name for cell in whole.grid_cells]
    first, rest = [names[1]], [names[0], *names[2:]]  # the part without the baseline first
    parts = [select_cells(whole, part) for part in (first, rest)]
    full_keys = {(s.trial_key, s.cell, s.seed) for s in trial_specs(whole)}
    part_keys = [{(s.trial_key, s.cell, s.seed) for s in trial_specs(part)} for part in parts]
    assert part_keys[0] | part_keys[1] == full_keys and not part_keys[0] & part_keys[1]
    assert [c.name for c in parts[1].grid_cells] == rest  # file order
    designs = [SweepDesign.from_space(part, f"part{i}") for i, part in enumerate(parts)]
    assert designs[0].baseline == names[1] and not designs[0].baseline_declared  # its own default
    assert (designs[1].baseline, designs[1].baseline_declared) == (whole.baseline, True)
    pooled, design = pool_designs(designs), SweepDesign.from_space(whole, "whole")
    assert {c.name: c for c in pooled.cells} == {c.name: c for c in design.cells}
    assert (pooled.baseline, pooled.baseline_declared, pooled.seeds) == (design.baseline, True, design.seeds)


def test_an_unknown_selected_cell_is_refused_in_one_line_naming_it(capsys):
    from sweep.run import main

    space = ROOT / "search_spaces" / "mitigations.yaml"
    assert main([str(space), "--cells", "baseline,ctc-au", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {space}: --cells: no cell named 'ctc-au' (did you mean 'ctc-aux'?)"
    assert main([str(space), "--cells", "ctc-aux", "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert "ctc-aux" in table and "baseline " not in table and "in 1 cells" in table

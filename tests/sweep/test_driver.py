"""The driver without Ray: the design it records, its state file, its progress view and its exit codes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from sweep import driver
from sweep.design import SweepDesign
from sweep.exit_codes import Exit, for_labels
from sweep.progress import SweepProgress
from sweep.space import load_space
from sweep.state import STATE_FILE, StateError, find_resumable, new_state, read_state, write_state

ROOT = Path(__file__).resolve().parents[2]
SPACES = ROOT / "search_spaces"


# -- the design recorded on the parent run ------------------------------------------------------------------
def test_design_keeps_the_declared_baseline_of_a_factorial_space():
    space = load_space(SPACES / "paper_factors.yaml")
    design = SweepDesign.from_space(space, "paper-factors-1")
    assert design.baseline == "train.lr_warmup=0.45,model.ffn_scale=0.5,model.pos_enc=rel_shaw"
    assert design.baseline != design.cells[0].name and design.baseline_declared
    assert design.factors == ["train.lr_warmup", "model.ffn_scale", "model.pos_enc"]
    assert design.seeds == list(range(8)) and design.n_trials == 96 and design.control_cells == []
    assert SweepDesign.from_json(design.to_json()) == design


def test_design_of_a_cells_only_space_names_the_keys_its_cells_vary():
    design = SweepDesign.from_space(load_space(SPACES / "mitigations.yaml"), "mitigations-1")
    assert design.factors == [
        "model.ctc_layers",
        "model.self_attention_off_steps",
        "model.forced_attention_steps",
        "model.forced_attention_blend_steps",
    ]
    assert design.baseline == "baseline" and design.control_cells == ["control-reversed"]
    ctc = next(cell for cell in design.cells if cell.name == "ctc-aux")
    assert ctc.values == {"model.ctc_layers": [2, 4]} and ctc.settings["model.layers"] == 6


def test_design_without_a_declared_baseline_compares_with_the_first_natural_cell():
    design = SweepDesign.from_space(load_space(SPACES / "quick.yaml"), "quick-1")
    assert (design.baseline, design.baseline_declared) == ("model.pos_enc=rel_shaw", False)
    assert design.control_cells == ["control-reversed"]
    changed = design.model_copy(update={"seeds": [0, 1, 2]})
    assert design.same_experiment(design.model_copy(update={"sweep_id": "other"}))
    assert not design.same_experiment(changed)


def test_a_design_read_back_from_its_json_is_the_same_experiment():
    # c6 sets train.specaug_steps, a list that validation turns into a tuple; design.json gives back a list
    space = load_space(SPACES / "studies" / "c6_paper_like.yaml")
    design = SweepDesign.from_space(space, "c6-1")
    assert isinstance(design.cells[0].settings["train.specaug_steps"], tuple)
    assert SweepDesign.from_json(design.to_json()).same_experiment(design)


def test_a_legacy_parent_run_gives_its_factors_and_no_baseline():
    legacy = SweepDesign.from_legacy_params(
        "old", {"search": "grid", "factor.model.pos_enc": "['abs', 'none']"}
    )
    assert (legacy.factors, legacy.baseline, legacy.legacy) == (["model.pos_enc"], None, True)


# -- the state file -----------------------------------------------------------------------------------------
def _state(tmp_path: Path, name: str = "quick", sweep_id: str = "quick-1") -> Path:
    sweep_dir = tmp_path / sweep_id
    write_state(sweep_dir, new_state(sweep_dir, name, "sqlite:////x.db", "e", SPACES / "quick.yaml"))
    return sweep_dir


def test_state_round_trips_and_a_broken_one_is_named(tmp_path):
    sweep_dir = _state(tmp_path)
    assert read_state(sweep_dir).sweep_id == "quick-1" and read_state(sweep_dir).status == "starting"
    (sweep_dir / STATE_FILE).write_text('{"name": "quick", "sweep_id": "qu')  # what a killed writer leaves
    with pytest.raises(StateError) as caught:
        read_state(sweep_dir)
    assert str(sweep_dir / STATE_FILE) in str(caught.value) and "\n" not in str(caught.value)


def test_resume_skips_and_names_an_unreadable_state_file(tmp_path):
    good = _state(tmp_path, sweep_id="quick-2")
    broken = _state(tmp_path, sweep_id="quick-3")
    (broken / STATE_FILE).write_text("{")
    found, state, skipped = find_resumable(tmp_path, "quick", "latest")
    assert (found, state.sweep_id) == (good, "quick-2")
    assert len(skipped) == 1 and str(broken / STATE_FILE) in str(skipped[0])
    with pytest.raises(StateError, match="unreadable"):
        find_resumable(tmp_path, "quick", "quick-3")  # named explicitly: refuse, do not guess
    write_state(good, read_state(good).model_copy(update={"status": "complete"}))
    with pytest.raises(StateError) as caught:
        find_resumable(tmp_path, "quick", "latest")
    assert "no unfinished sweep" in str(caught.value) and str(broken / STATE_FILE) in str(caught.value)


KILLED_WRITER = """
import sys
from pathlib import Path
from sweep.state import new_state, write_state
sweep_dir = Path(sys.argv[1])
state = new_state(sweep_dir, "quick", "sqlite:////x.db", "e", Path(sys.argv[2]))
print("writing", flush=True)
for i in range(10**9):  # a large state, rewritten as fast as possible, until killed
    write_state(sweep_dir, state.model_copy(update={"space_file": "x" * 200_000, "created": float(i)}))
"""


def test_a_writer_killed_mid_write_leaves_a_whole_state(tmp_path):
    sweep_dir = _state(tmp_path)
    for kill in range(4):
        writer = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, str(sweep_dir), str(SPACES / "quick.yaml")],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout.readline().strip() == "writing"
        time.sleep(0.2 + 0.1 * kill)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        state = read_state(sweep_dir)  # the old state or a new one, never half of one
        assert state.name == "quick" and state.space_file in (
            str((SPACES / "quick.yaml").resolve()),
            "x" * 200_000,
        )


def test_the_heartbeat_keeps_the_wall_time_of_all_parts(tmp_path, monkeypatch):
    """While trials run, the state file's wall time keeps up with all the parts (a driver killed outright
    loses at most one beat); a resumed sweep starts from it."""
    monkeypatch.setattr(driver, "HEARTBEAT_SECONDS", 0.01)
    space = load_space(SPACES / "quick.yaml")
    args = SimpleNamespace(storage=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path}/m.db", resume=None)
    args.space = str(SPACES / "quick.yaml")
    first = driver.resolve(args, space)
    first.earlier_wall_seconds = 100.0  # as if an earlier part had run for 100 s
    write_state(first.sweep_dir, first.state)
    with driver.heartbeat(first):
        deadline = time.monotonic() + 30
        while (beat := read_state(first.sweep_dir).wall_seconds) is None:  # until the heartbeat writes
            assert time.monotonic() < deadline, "the heartbeat wrote no wall time within 30 s"
            time.sleep(0.01)
    ended = read_state(first.sweep_dir)  # written once more as the part ends
    assert 100.0 <= beat <= ended.wall_seconds and ended.parts == 1
    second = driver.resolve(SimpleNamespace(**{**vars(args), "resume": "latest"}), space)
    assert second.state.parts == 2 and second.sweep_dir == first.sweep_dir
    assert second.earlier_wall_seconds == ended.wall_seconds  # this part adds its own time to it


# -- exit codes ---------------------------------------------------------------------------------------------
def test_exit_code_says_whether_trials_failed():
    assert for_labels(["normal", "undecided", "reversed"]) == Exit.OK == 0
    assert for_labels(["normal", "failed"]) == Exit.SOME_FAILED == 4
    assert for_labels(["failed", "failed"]) == Exit.ALL_FAILED == 5


# -- the progress view --------------------------------------------------------------------------------------
def _trial(trial_id: str, cell: str, seed: int, status: str, step: int = 0, label: str | None = None):
    config = {"spec": {"trial_key": trial_id, "cell": cell, "overrides": {"seed": seed, "train.steps": 400}}}
    result = {"step": step, "trial_seconds": 12.0}
    if label:
        result["outcome"] = {"label": label}
    return SimpleNamespace(trial_id=trial_id, config=config, status=status, last_result=result)


def test_progress_counts_each_cell_and_the_work_done():
    out = io.StringIO()
    console = Console(file=out, width=150, color_system=None)
    trials = [
        _trial("c000-r00", "abs", 0, "TERMINATED", 400, "normal"),
        _trial("c000-r01", "abs", 1, "RUNNING", 200),
        _trial("c001-r00", "control", 0, "ERROR", 50),
        _trial("c001-r01", "control", 1, "PENDING"),
    ]
    with SweepProgress(4, "conformer_aed", console=console) as view:
        view.update(trials)
        view.finished(trials[0], "normal")
        task = view._progress.tasks[0]
        assert task.completed == pytest.approx(2.5)  # two ended, one half way (step 200 of 400)
        assert (task.fields["done"], task.fields["running"]) == (2, 1)
        rows = {row[0]: row[1:] for row in _cells(view)}
    assert rows["abs"] == ["1/2", "1", "1", "0", "0", "0"]
    assert rows["control"] == ["1/2", "0", "0", "0", "0", "1"]
    assert "abs seed 0 (c000-r00) -> normal (12 s)" in out.getvalue()


def _cells(view: SweepProgress) -> list[list[str]]:
    columns = [list(column.cells) for column in view._cells.columns]
    return [list(row) for row in zip(*columns, strict=True)]

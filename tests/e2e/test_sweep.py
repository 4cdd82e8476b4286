"""Real sweeps through Ray Tune into a temporary sqlite MLflow store: runs, nesting, the recorded design that
the driver, `sweep.report` and the notebook share, resume, failures and exit codes."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweep.outputs import TABLES, TRIALS
from sweep.state import STATE_FILE, read_state, write_state
from tests.conftest import TINY
from trainers.detector.verdict import LABELS

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e-sweep")]  # its module sweep: one worker
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
BASELINE = "model.ffn_scale=1.0"  # declared, and not the first cell
STATISTICS = (*TABLES, "model_summary.txt")  # what the driver, the report and the notebook must agree on


def write_space(path: Path, **fields) -> Path:
    space = {
        "name": "t",
        "trainer": "conformer_aed",
        "base": dict(TINY),
        "factors": {"model.ffn_scale": [0.5, 1.0]},
        "replicates": 1,
        "resources": {"cpus_per_trial": 1},
        "max_failures": 0,
        "mlflow": {"experiment": "test"},
    }
    space.update(fields)
    space = {key: value for key, value in space.items() if value is not None}  # None: leave the key out
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def sweep(tmp_path: Path, space: Path, *extra: str, wait: bool = True, env: dict | None = None, **kwargs):
    """Run the driver on `space` in `tmp_path`; `env` overrides (a RAY_ADDRESS: a cluster, no local Ray)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "", **(env or {})}
    local = ["--num-cpus", "2"] if not env["RAY_ADDRESS"] else []
    command = [
        sys.executable,
        "-m",
        "sweep.run",
        str(space),
        "--storage",
        str(tmp_path / "results"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        *local,
        *extra,
    ]
    if not wait:
        return subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True, **kwargs)
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def runs(store: Path | str, experiment: str = "test"):
    """(client, parents, children) of an experiment: a sweep folder's sqlite store, or a tracking URI."""
    client = MlflowClient(store if isinstance(store, str) else f"sqlite:///{store / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    all_runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get("flipsweep.role") == "parent"]
    children = [r for r in all_runs if r.data.tags.get("flipsweep.role") == "trial"]
    return client, parents, children


def kill_driver(driver: subprocess.Popen) -> None:
    """SIGKILL a driver and every process it started (its local Ray), by id: a killed driver's Ray lingers for
    seconds otherwise. Nothing else on the machine is touched (no `ray stop`)."""
    try:
        family = psutil.Process(driver.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(family, timeout=30)


def the_sweep_dir(tmp_path: Path) -> Path:
    """The folder of the one sweep under `tmp_path`: its state file, Tune's files, the trials'."""
    (state_file,) = (tmp_path / "results").glob(f"*/{STATE_FILE}")
    return state_file.parent


def wait_for_a_heartbeat(tmp_path: Path, driver: subprocess.Popen) -> float:
    """The wall time the running sweep's state file records, once its heartbeat has written one."""
    deadline = time.time() + 60
    while True:
        wall = read_state(the_sweep_dir(tmp_path)).wall_seconds
        if wall is not None:
            return wall
        assert time.time() < deadline, "the state file recorded no wall time within 60 s"
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(1)


def wait_for_a_checkpoint(tmp_path: Path, driver: subprocess.Popen) -> None:
    """Return once a trial has saved a checkpoint, i.e. mid-sweep, with trials both started and pending.
    (Poll the files, not MLflow: a second client could race the driver's creation of the database.)"""
    deadline = time.time() + 300
    while not list((tmp_path / "results").glob("*/*/checkpoint_*")):
        assert time.time() < deadline, "no trial saved a checkpoint within 300 s"
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(1)


# -- the three readers of a sweep ---------------------------------------------------------------------------
def driver_statistics(client: MlflowClient, parent_run_id: str, into: Path) -> Path:
    into.mkdir()
    for name in STATISTICS:
        client.download_artifacts(parent_run_id, name, str(into))
    return into


def run_report(tmp_path: Path, *args: str, experiment: str = "test") -> subprocess.CompletedProcess:
    """`python -m sweep.report --experiment <experiment>` on the sweep's store in `tmp_path`, with `args`."""
    command = [sys.executable, "-m", "sweep.report", "--experiment", experiment]
    command += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


def report_statistics(tmp_path: Path, into: Path) -> str:
    """`sweep.report` on the sweep's store, its statistics written into `into`; returns its Markdown."""
    done = run_report(tmp_path, "--tables", str(into), "--plots", str(tmp_path / "img"))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def notebook_statistics(tmp_path: Path, monkeypatch, saved_as: str):
    """Execute notebooks/analysis.ipynb on the sweep's store and save it (test-artifacts/); returns the saved
    notebook and the folder its own `write_incidence_files` cell wrote the statistics into."""
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    monkeypatch.setenv("FLIPSWEEP_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("FLIPSWEEP_EXPERIMENT", "test")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    notebook = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    probe = nbformat.v4.new_code_cell("print('STATISTICS IN', out)")  # the notebook's own output folder
    notebook.cells.append(probe)
    client = nbclient.NotebookClient(
        notebook, timeout=300, resources={"metadata": {"path": str(ROOT / "notebooks")}}
    )
    client.execute()
    folder = Path(notebook.cells.pop()["outputs"][0]["text"].split("STATISTICS IN", 1)[1].strip())
    ARTIFACTS.mkdir(exist_ok=True)
    nbformat.write(notebook, ARTIFACTS / saved_as)
    return nbformat.read(ARTIFACTS / saved_as, as_version=4), folder


def outputs(notebook) -> list:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def assert_same_statistics(*folders: Path) -> None:
    for name in STATISTICS:
        texts = {folder: (folder / name).read_text() for folder in folders}
        assert len(set(texts.values())) == 1, (name, texts)


# -- a factorial sweep with a declared baseline that is not the first cell ----------------------------------
@pytest.fixture(scope="module")
def two_trial_sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    # its base comes from another file (`base_from`), as the conditions studies' do, with one key changed
    write_space(tmp_path / "tiny.yaml", name="tiny", base={**TINY, "model.layers": 3})
    space = write_space(
        tmp_path / "space.yaml", baseline=BASELINE, base={"model.layers": 2}, base_from="tiny.yaml"
    )
    done = sweep(tmp_path, space)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path, done


def test_two_trial_sweep_records_parent_and_nested_children(two_trial_sweep):
    tmp_path, done = two_trial_sweep
    client, parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    experiment = client.get_experiment(parent.info.experiment_id)
    assert (
        experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    )  # a model-training experiment
    assert parent.data.params["factor.model.ffn_scale"] == "[0.5, 1.0]"
    assert (parent.data.params["baseline"], parent.data.params["baseline_declared"]) == (BASELINE, "True")
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    in_git = (ROOT / ".git").exists()
    for run in (parent, *children):
        assert run.data.tags["mlflow.source.type"] == "LOCAL"
        assert not in_git or re.fullmatch(r"[0-9a-f]{40}", run.data.tags["mlflow.source.git.commit"])
    assert parent.data.tags["mlflow.source.name"].endswith("sweep/run.py")
    for child in children:
        tags, metrics = child.data.tags, child.data.metrics
        assert tags["label"] in {"normal", "reversed", "undecided"}
        assert tags["mlflow.source.name"].endswith("trainers/train.py")
        assert re.fullmatch(r"model\.ffn_scale=(0\.5|1\.0) seed 0 \(c00[01]-r00\)", tags["mlflow.runName"])
        assert child.data.params["model.layers"] == "2"
        # The outcome as numbers the UI can chart: decided 0/1 always, reversed 0/1 for decided runs only.
        decided = tags["label"] != "undecided"
        assert metrics["verdict/decided"] == float(decided)
        assert ("verdict/reversed" in metrics) == decided
        assert -1.0 <= metrics["verdict/attention_direction"] <= 1.0
        assert metrics["verdict/backward_evaluations"] in (0.0, 1.0, 2.0)
        assert metrics["trial/steps_done"] == 40.0
        assert len(client.get_metric_history(child.info.run_id, "attention_direction")) == 2
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"result.json", "attention.png", "gradients.png", "metrics.jsonl", "images"} <= names
        images = [Path(a.path).name for a in client.list_artifacts(child.info.run_id, "images")]
        steps = sorted({int(name.split("+")[2]) for name in images if name.endswith(".png")})
        assert steps == [20, 40]  # one cross-attention image per evaluation, keyed by step
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    expected = {"design.json", "incidence.csv", "model_summary.txt", "plots", "space", "trials.csv"}
    assert expected <= parent_artifacts
    spaces = {a.path for a in client.list_artifacts(parent.info.run_id, "space/base_from")}
    assert spaces == {"space/base_from/tiny.yaml"}  # the file the base came from is recorded with the space
    assert parent.data.params["base.train.steps"] == str(TINY["train.steps"])  # inherited from tiny.yaml
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert any("rate" in p for p in plots)
    assert "overall/n" in parent.data.metrics
    assert "model.ffn_scale=1.0 (baseline)" in done.stdout  # the incidence table printed at the end
    assert "workflowType=machine_learning" in done.stdout  # where to look in the MLflow UI


def test_declared_baseline_driver_report_and_notebook_agree(two_trial_sweep, monkeypatch):
    tmp_path, _ = two_trial_sweep
    client, parents, _ = runs(tmp_path)
    driver = driver_statistics(client, parents[0].info.run_id, tmp_path / "driver")
    markdown = report_statistics(tmp_path, tmp_path / "report")
    notebook, from_notebook = notebook_statistics(tmp_path, monkeypatch, "analysis_factorial.ipynb")
    assert_same_statistics(driver, tmp_path / "report", from_notebook)
    # The per-trial table too, so that a study's record can be kept beside its report (docs/results/).
    client.download_artifacts(parents[0].info.run_id, TRIALS, str(driver))
    assert (driver / TRIALS).read_text() == (tmp_path / "report" / TRIALS).read_text()

    fisher = pd.read_csv(driver / "fisher.csv")
    assert fisher["cell"].tolist() == ["model.ffn_scale=0.5"] and set(fisher["baseline"]) == {BASELINE}
    summary = (driver / "model_summary.txt").read_text()
    assert f"Baseline cell: {BASELINE}." in summary and "Baseline levels: model.ffn_scale=1.0." in summary
    assert f"baseline cell: `{BASELINE}` (declared)" in markdown
    assert f"### Fisher exact tests against `{BASELINE}`" in markdown
    incidence = markdown.split("### Incidence")[1].split("###")[0]
    assert incidence.count("model.ffn_scale=") == 2  # one row per cell
    assert "### Backward phase" in markdown and "### Reversed runs, verified" in markdown
    first_step = markdown.split("### The paper's first step")[1].split("###")[0]
    assert first_step.count("model.ffn_scale=") == 2  # the initial-frame figures, one row per cell
    sweep_id = parents[0].info.run_name  # t-<date>-<time>
    for figure in ("attention_direction", "mhsa_residual", "cross_initial_lift"):  # <sweep id>_<figure>
        plot = tmp_path / "img" / f"{sweep_id}_{figure}.png"
        assert plot.stat().st_size > 1000 and f"{plot.stem}]" in markdown
    # Each run: its row (also runs.csv) and its last attention map, fetched from its run by cell and seed.
    each = pd.read_csv(tmp_path / "report" / "runs.csv")
    trials = pd.read_csv(tmp_path / "report" / TRIALS)
    assert sorted(each["trial_key"]) == sorted(trials["trial_key"]) and each["label"].isin(LABELS).all()
    assert each.loc[each["label"] != "undecided", "settled_from"].notna().all()
    for run in each.itertuples():
        attention_map = tmp_path / "img" / f"t_{run.cell}_seed{run.seed}_attention.png"
        assert attention_map.stat().st_size > 1000
        assert f"![{run.cell}, seed {run.seed}: {run.label}" in markdown
        gradient_maps = tmp_path / "img" / f"t_{run.cell}_seed{run.seed}_blocks.png"  # drawn from its curves
        assert gradient_maps.stat().st_size > 1000
        caption = f"![{run.cell}, seed {run.seed}: gradient maps over training]"
        assert f"{caption}({gradient_maps.as_posix()})" in markdown

    assert not [o for o in outputs(notebook) if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs(notebook) if o.output_type == "stream")
    assert "2 trials" in text and f"baseline cell: {BASELINE} (declared)" in text
    images = [o for o in outputs(notebook) if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # the four incidence plots and the attention-direction curves, saved in the file


def test_a_kept_sweep_reads_back_without_mlflow_as_it_read_from_mlflow(
    two_trial_sweep, tmp_path, monkeypatch
):
    # A later checkout may not keep mlflow.db: the folder `--tables` wrote is then the sweep.
    store, _ = two_trial_sweep
    kept = tmp_path / "kept"
    from_mlflow = run_report(store, "--tables", str(kept), "--plots", str(tmp_path / "img"))
    assert from_mlflow.returncode == 0, from_mlflow.stderr[-2000:]
    curves = pd.read_csv(kept / "curves.csv")
    assert {
        "label_code",
        "reason_code",
        "attention_direction",
        "accuracy",
        "attention_peak",
        "mhsa_ffn_ratio_2",
    } <= set(curves["key"])
    assert len(list((kept / "maps").glob("*.png"))) == 2

    gone = tmp_path / "gone.db"
    command = [
        sys.executable,
        "-m",
        "sweep.report",
        "--tracking-uri",
        f"sqlite:///{gone}",
        "--sweep",
        str(kept),
    ]
    command += ["--plots", str(tmp_path / "img-kept"), "--tables", str(tmp_path / "kept-again")]
    from_folder = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert from_folder.returncode == 0, from_folder.stderr[-2000:]
    assert not gone.exists()  # no store was opened, let alone created
    assert from_folder.stdout.replace("img-kept", "img") == from_mlflow.stdout  # line for line
    for name in ("design.json", "sweep.json", TRIALS, "curves.csv", "params.csv", "runs.csv", *TABLES):
        assert (tmp_path / "kept-again" / name).read_text() == (kept / name).read_text(), name
    for image in (tmp_path / "img").glob("*_attention.png"):
        assert (tmp_path / "img-kept" / image.name).read_bytes() == image.read_bytes()

    # The notebook reads the folder too: the same statistics, and the curves from curves.csv.
    monkeypatch.setenv("FLIPSWEEP_SWEEP_ID", str(kept))
    notebook, from_notebook = notebook_statistics(tmp_path, monkeypatch, "analysis_kept.ipynb")
    assert_same_statistics(kept, from_notebook)
    assert not (tmp_path / "mlflow.db").exists()
    errors = [o for o in outputs(notebook) if o.output_type == "error"]
    assert not errors and len([o for o in outputs(notebook) if "image/png" in o.get("data", {})]) >= 5

    (kept / "design.json").unlink()  # not a kept sweep any more: one line naming the folder and the file
    broken = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert broken.returncode == 2 and f"{kept} is not a kept sweep: it has no design.json" in broken.stderr


def test_report_names_a_missing_experiment(two_trial_sweep, capsys):
    from sweep.report import main

    tmp_path, _ = two_trial_sweep
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["--experiment", "nope", "--tracking-uri", uri]) == 2  # in this process: one interpreter less
    assert "nope" in capsys.readouterr().err


def test_report_reads_a_study_continued_by_another_sweep_as_one(two_trial_sweep, tmp_path):
    # The baseline cell again with a new seed, as a sweep of its own (as c6_baseline_seeds.yaml continues c6),
    # into a copy of the fixture's store (its first sweep must stay the newest for the other tests).
    first, _ = two_trial_sweep
    shutil.copy(first / "mlflow.db", tmp_path / "mlflow.db")
    shutil.copy(first / "tiny.yaml", tmp_path / "tiny.yaml")
    # Its one cell written as a cell, not a factor level: its own design varies nothing (no factors).
    more = write_space(
        tmp_path / "more.yaml",
        name="more",
        base={"model.layers": 2},
        base_from="tiny.yaml",
        factors=None,
        cells=[{"name": BASELINE, "model.ffn_scale": 1.0}],
        replicates=[1],
    )
    done = sweep(tmp_path, more)
    assert done.returncode == 0, done.stderr[-3000:]
    _, parents, _ = runs(tmp_path)
    ids = [p.data.tags["flipsweep.sweep_id"] for p in sorted(parents, key=lambda p: p.info.start_time)]

    def read(*sweep_ids: str) -> subprocess.CompletedProcess:
        chosen = [arg for sweep_id in sweep_ids for arg in ("--sweep", sweep_id)]
        return run_report(tmp_path, "--tables", str(tmp_path / "t"), *chosen)

    pooled = read(*ids)
    assert pooled.returncode == 0, pooled.stderr[-2000:]
    cells = pd.read_csv(tmp_path / "t" / "incidence.csv").set_index("cell")
    assert cells.loc[BASELINE, "n"] == 2 and cells.loc["model.ffn_scale=0.5", "n"] == 1
    trials = pd.read_csv(tmp_path / "t" / TRIALS)
    assert sorted(zip(trials["cell"], trials["seed"], strict=True)) == [
        ("model.ffn_scale=0.5", 0),
        (BASELINE, 0),
        (BASELINE, 1),
    ]
    assert {key.split("/")[0] for key in trials["trial_key"]} == set(ids)
    assert f"baseline cell: `{BASELINE}` (declared)" in pooled.stdout  # the first sweep's declaration
    assert "(2 sweeps, summed)" in pooled.stdout
    # The second sweep kept as a folder (its store gone) pools with the first as it did from MLflow: the
    # factor its own design lacks is read off its cell, as MLflow's params gave it.
    kept = run_report(tmp_path, "--sweep", ids[1], "--tables", str(tmp_path / "kept"))
    assert kept.returncode == 0, kept.stderr[-2000:]
    mixed = run_report(tmp_path, "--sweep", ids[0], "--sweep", str(tmp_path / "kept"))
    assert mixed.returncode == 0, mixed.stderr[-2000:]
    assert mixed.stdout == read(*ids).stdout
    twice = read(ids[0], ids[0])  # the same outcomes twice are not a study: one line, exit 2
    assert twice.returncode == 2 and "has an outcome in sweeps" in twice.stderr


# -- a cells-only sweep: a declared baseline, a control, a failing trial -------------------------------------
def test_cells_only_sweep_with_a_failure_agrees_everywhere_and_exits_4(tmp_path, monkeypatch):
    # An absurd learning rate turns the loss into NaN: that trial fails, the others finish.
    nan = {"train.lr_peak": 1e30, "train.lr_start": 1e30, "train.grad_clip": 1e30}
    cells = [
        {"name": "plain"},
        {"name": "ctc", "model.ctc_layers": [1]},
        {"name": "nan-loss", **nan},
        {"name": "control", "model.control": "reverse_encoder", "model.control_block": 2},
    ]
    space = write_space(tmp_path / "space.yaml", factors=None, cells=cells, baseline="ctc")
    done = sweep(tmp_path, space)
    assert done.returncode == 4, (done.returncode, done.stderr[-3000:])  # finished, but a trial failed
    assert "1 of 4 trials failed" in done.stderr
    client, parents, children = runs(tmp_path)
    by_cell = {c.data.tags["cell"]: c for c in children}
    assert by_cell["nan-loss"].info.status == "FAILED"
    assert by_cell["nan-loss"].data.tags["label"] == "failed"
    assert "loss became" in by_cell["nan-loss"].data.tags["error"]
    assert by_cell["nan-loss"].data.metrics["verdict/decided"] == 0.0
    # Recorded once: the driver's last look at the results keeps an ended run ended, and does not redo it.
    assert len(client.get_metric_history(by_cell["nan-loss"].info.run_id, "verdict/decided")) == 1
    assert {by_cell[c].info.status for c in ("plain", "ctc", "control")} == {"FINISHED"}
    parent = parents[0]
    assert parent.data.metrics["overall/n_failed"] == 1 and parent.data.metrics["control/n"] == 1

    driver = driver_statistics(client, parent.info.run_id, tmp_path / "driver")
    report_statistics(tmp_path, tmp_path / "report")
    _, from_notebook = notebook_statistics(tmp_path, monkeypatch, "analysis_cells_only.ipynb")
    assert_same_statistics(driver, tmp_path / "report", from_notebook)
    fisher = pd.read_csv(driver / "fisher.csv")
    assert fisher["cell"].tolist() == ["plain", "nan-loss"] and set(fisher["baseline"]) == {"ctc"}
    cells_table = pd.read_csv(driver / "incidence.csv")
    assert "model.ctc_layers" in cells_table.columns  # the key the cells vary is a factor
    summary = (driver / "model_summary.txt").read_text()
    assert "Baseline cell: ctc." in summary and "Factors: model.ctc_layers" in summary


# -- interruptions ------------------------------------------------------------------------------------------
def test_killed_sweep_resumes_without_duplicates(two_trial_sweep, tmp_path):
    # The fixture's sweep, one trial at a time (one running at the kill, one not started); the fixture ran it
    # uninterrupted, which the resumed sweep must match.
    straight_dir, _ = two_trial_sweep
    shutil.copy(straight_dir / "tiny.yaml", tmp_path / "tiny.yaml")
    space = write_space(
        tmp_path / "space.yaml",
        baseline=BASELINE,
        base={"model.layers": 2},
        base_from="tiny.yaml",
        resources={"cpus_per_trial": 1, "max_concurrent": 1},
    )
    driver = sweep(tmp_path, space, wait=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_a_checkpoint(tmp_path, driver)
    killed_wall = wait_for_a_heartbeat(tmp_path, driver)
    kill_driver(driver)
    # Read back now, the report counts the runs the kill left without an outcome as unfinished, not as data.
    interrupted = report_statistics(tmp_path, tmp_path / "interrupted")
    incidence = interrupted.split("### Incidence")[1].split("###")[0]
    header, _, row = incidence.strip().splitlines()[:3]
    cells = dict(
        zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")], strict=True)
    )
    assert int(cells["unfinished"]) >= 1
    assert int(cells["n"]) == sum(
        int(cells[k]) for k in ("reversed", "normal", "undecided", "failed", "unfinished")
    )
    # The killed part's wall time is in the state file. Make it an hour longer, so that the resumed sweep's
    # total is told apart from its own part's: the total must be the earlier parts' plus this part's.
    killed = read_state(the_sweep_dir(tmp_path))
    assert killed.wall_seconds >= killed_wall and killed.parts == 1
    earlier = killed.wall_seconds + 3600
    write_state(the_sweep_dir(tmp_path), killed.model_copy(update={"wall_seconds": earlier}))
    started = time.perf_counter()
    resumed = sweep(tmp_path, space, "--resume")
    resume_seconds = time.perf_counter() - started
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # One line says what is resumed; Ray's complaints about trials that had not started stay out of view.
    first = resumed.stdout.splitlines()[0]
    assert re.fullmatch(r"resuming t-\S+: [01] of 2 trials done, [0-2] to continue, [0-2] not started", first)
    assert "Failed to fetch metrics" not in resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert "efficiency n/a (resumed)" in resumed.stdout  # its trials' time repeats the steps the kill lost
    assert " in 2 parts" in resumed.stdout
    _, parents, children = runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    metrics = parents[0].data.metrics
    assert "sweep/efficiency" not in metrics and metrics["sweep/parts"] == 2
    assert earlier < metrics["sweep/wall_seconds"] < earlier + resume_seconds
    keys = [c.data.tags["flipsweep.trial_key"] for c in children]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 2
    assert {c.info.status for c in children} == {"FINISHED"}
    # The same sweep, uninterrupted, in the fixture's store: the same labels and figures, trial by trial.
    _, _, uninterrupted = runs(straight_dir)

    def table(found):
        return {
            c.data.tags["flipsweep.trial_key"]: (
                c.data.tags["label"],
                c.data.metrics["verdict/attention_direction"],
            )
            for c in found
        }

    assert table(children) == table(uninterrupted)
    for client_dir, into in ((tmp_path, tmp_path / "resumed"), (straight_dir, tmp_path / "straight")):
        client, parents, _ = runs(client_dir)
        into.mkdir()
        client.download_artifacts(parents[0].info.run_id, "incidence.csv", str(into))
    assert (tmp_path / "resumed" / "incidence.csv").read_text() == (
        tmp_path / "straight" / "incidence.csv"
    ).read_text()


def test_resume_when_the_kill_cut_tunes_own_state_short(tmp_path):
    """Tune rewrites its experiment state in place; a driver killed mid-write leaves it empty (seen on a busy
    machine), and Tune's restore would then quietly start every trial again. The resume sets the file aside,
    keeps the trials that had ended and runs the rest afresh, each still with one MLflow run."""
    space = write_space(
        tmp_path / "space.yaml",
        base={**TINY, "train.steps": 60},
        resources={"cpus_per_trial": 1, "max_concurrent": 1},  # one trial ends, then the kill
    )
    driver = sweep(tmp_path, space, wait=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_a_checkpoint(tmp_path, driver)
    deadline = time.time() + 300
    while not [c for c in runs(tmp_path)[2] if c.info.status == "FINISHED"]:  # one trial has ended
        assert time.time() < deadline and driver.poll() is None, "no trial ended within 300 s"
        time.sleep(0.5)
    kill_driver(driver)
    ended = {c.data.tags["flipsweep.trial_key"] for c in runs(tmp_path)[2] if c.info.status == "FINISHED"}
    state = sorted((tmp_path / "results").glob("*/experiment_state-*.json"))[-1]
    state.write_text("")  # what a kill during Tune's write leaves
    resumed = sweep(tmp_path, space, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    warnings = [line for line in resumed.stderr.splitlines() if line.startswith("warning: Ray Tune's state")]
    assert len(warnings) == 1 and state.name in warnings[0], resumed.stderr[-3000:]
    assert state.with_name(state.name + ".unreadable").exists()
    _, parents, children = runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keys = [c.data.tags["flipsweep.trial_key"] for c in children]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 2
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["label"] for c in children} <= {"normal", "reversed", "undecided"}
    # the trials that had ended were not run again: each still has its one trial folder
    for key in ended:
        assert len(list((tmp_path / "results").glob(f"*/{key}_*"))) == 1, key


def test_ctrl_c_stops_with_exit_130_marks_the_runs_interrupted_and_resumes(tmp_path):
    space = write_space(
        tmp_path / "space.yaml",
        base={**TINY, "train.steps": 200},
        replicates=2,
        resources={"cpus_per_trial": 1, "max_concurrent": 2},  # trials running and not started at the stop
    )
    driver = sweep(tmp_path, space, wait=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_a_checkpoint(tmp_path, driver)
    family = psutil.Process(driver.pid).children(recursive=True)  # its local Ray, stopped below if left
    driver.send_signal(signal.SIGINT)  # what Ctrl-C sends the driver
    try:
        out, err = driver.communicate(timeout=300)
    finally:
        for process in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    assert driver.returncode == 130, err[-3000:]
    assert "interrupted: " in err and "trials unfinished; continue with --resume" in err
    # Ray's notes on trials that had not started, and its own resume advice, stay out of the user's view.
    assert "Failed to fetch metrics" not in out + err and "Tuner.restore" not in out + err
    assert "Traceback" not in err
    # Nothing in MLflow still reads as running: the parent and the unfinished trials are KILLED.
    _, parents, children = runs(tmp_path)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert children and "KILLED" in {c.info.status for c in children}
    assert {c.info.status for c in children} <= {"KILLED", "FINISHED"}
    assert read_state(the_sweep_dir(tmp_path)).status == "interrupted"

    # --resume continues the KILLED runs in the same runs, starts the rest, and finishes all 4 trials.
    resumed = sweep(tmp_path, space, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, parents, again = runs(tmp_path)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert {c.info.run_id for c in children} <= {c.info.run_id for c in again}  # continued, not replaced
    keys = [c.data.tags["flipsweep.trial_key"] for c in again]
    assert len(keys) == len(set(keys)) == 4 and {c.info.status for c in again} == {"FINISHED"}


def test_driver_killed_while_writing_its_state_resumes_and_names_a_broken_state(
    tmp_path, capsys, monkeypatch
):
    from sweep.run import main

    space = write_space(tmp_path / "space.yaml")
    # A sweep of the same space whose state an older, non-atomic writer left half-written. Naming it to
    # --resume is refused before Ray or MLflow start, so the driver's entry point runs in this process.
    broken = tmp_path / "results" / "t-20000101-000000"
    broken.mkdir(parents=True)
    (broken / STATE_FILE).write_text('{"name": "t", "sweep_id": "t-2000')
    monkeypatch.chdir(tmp_path)
    store = ["--storage", str(tmp_path / "results"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert main([str(space), *store, "--resume", broken.name]) == 2
    refused = capsys.readouterr().err
    assert len(refused.strip().splitlines()) == 1 and str(broken / STATE_FILE) in refused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "space.yaml"]  # no mlflow.db

    # Kill the driver the moment its own state appears: it writes the state before anything else.
    driver = sweep(tmp_path, space, wait=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not [p for p in (tmp_path / "results").glob(f"*/{STATE_FILE}") if p.parent != broken]:
        assert time.time() < deadline and driver.poll() is None, "the driver never wrote its state"
        time.sleep(0.02)
    kill_driver(driver)
    resumed = sweep(tmp_path, space, "--resume")
    assert "Traceback" not in resumed.stderr
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    skipped = [line for line in resumed.stderr.splitlines() if line.startswith("warning: skipping")]
    assert len(skipped) == 1 and str(broken / STATE_FILE) in skipped[0]
    assert resumed.stdout.startswith("resuming t-")
    _, parents, children = runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}


def test_optuna_search_runs_and_persists_its_study(tmp_path):
    optuna = pytest.importorskip("optuna")
    space = write_space(
        tmp_path / "space.yaml",
        factors=None,
        replicates=None,
        search="optuna",
        ranges={"model.ffn_scale": {"low": 0.25, "high": 1.0}},
        samples=2,
        objective={"metric": "backward_evaluations", "mode": "max"},  # a running figure, as the hunt uses
    )
    done = sweep(tmp_path, space)
    assert done.returncode == 0, done.stderr[-3000:]
    _, parents, children = runs(tmp_path)
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    scales = {float(c.data.params["model.ffn_scale"]) for c in children}
    assert len(scales) == 2 and all(0.25 <= s <= 1.0 for s in scales)
    assert all(" seed " in c.data.tags["mlflow.runName"] for c in children)
    studies = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(studies) == 1 and studies[0].n_trials == 2
    study = optuna.load_study(study_name=studies[0].study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert all(t.value is not None and t.value >= 0 for t in study.trials)  # the objective reached Optuna

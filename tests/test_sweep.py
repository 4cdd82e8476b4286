"""Real sweeps through Ray Tune into a temporary sqlite MLflow store: runs, nesting, resume, failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


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


def runs(store: Path | str):
    """(client, parents, children) of experiment "test": a sweep folder's sqlite store, or a tracking URI."""
    client = MlflowClient(store if isinstance(store, str) else f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test")
    all_runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get("flipsweep.role") == "parent"]
    children = [r for r in all_runs if r.data.tags.get("flipsweep.role") == "trial"]
    return client, parents, children


@pytest.fixture(scope="module")
def two_trial_sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    done = sweep(tmp_path, write_space(tmp_path / "space.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path, done


def test_two_trial_sweep_records_parent_and_nested_children(two_trial_sweep):
    tmp_path, done = two_trial_sweep
    client, parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["factor.model.ffn_scale"] == "[0.5, 1.0]"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        assert child.data.tags["label"] in {"normal", "reversed", "undecided"}
        assert child.data.params["model.layers"] == "2"
        assert len(client.get_metric_history(child.info.run_id, "attention_direction")) == 2
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"result.json", "attention.png", "gradients.png", "metrics.jsonl"} <= names
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"incidence.csv", "model_summary.txt", "plots", "space", "trials.csv"} <= parent_artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert any("rate" in p for p in plots)
    assert "overall/rate" in parent.data.metrics or "overall/n" in parent.data.metrics
    assert "model.ffn_scale" in done.stdout  # the incidence table printed at the end


def test_report_reads_the_sweep_back(two_trial_sweep):
    tmp_path, _ = two_trial_sweep
    client, parents, children = runs(tmp_path)
    for child in children:  # the run summary the report and the docs lean on
        metrics = child.data.metrics
        assert -1.0 <= metrics["verdict/min_attention_direction"] <= 1.0
        assert metrics["verdict/backward_evaluations"] in (0.0, 1.0, 2.0)
    out = tmp_path / "report.md"
    done = subprocess.run(
        [sys.executable, "-m", "sweep.report", "--experiment", "test", "--out", str(out)]
        + ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--plots", str(tmp_path / "img")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert text.startswith(f"## {parents[0].data.tags['mlflow.runName']}")
    incidence = text.split("### Incidence")[1].split("###")[0]
    assert incidence.count("model.ffn_scale=") == 2  # one row per cell
    assert "### Backward phase" in text and "### Reversed runs, verified" in text
    for plot in ("t_attention_direction.png", "t_mhsa_residual.png"):  # <space name>_<figure>
        assert (tmp_path / "img" / plot).stat().st_size > 1000 and f"{plot[:-4]}]" in text
    missing = subprocess.run(
        [sys.executable, "-m", "sweep.report", "--experiment", "nope"]
        + ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_notebook_runs_top_to_bottom(two_trial_sweep, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    tmp_path, _ = two_trial_sweep
    monkeypatch.setenv("FLIPSWEEP_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("FLIPSWEEP_EXPERIMENT", "test")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    notebook = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=300, resources={"metadata": {"path": str(ROOT / "notebooks")}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "2 trials" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_failing_trial_is_recorded_and_sweep_completes(tmp_path):
    # An absurd learning rate turns the loss into NaN: the trial fails, the other one finishes.
    space = write_space(
        tmp_path / "space.yaml",
        factors={},
        cells=[
            {"name": "ok"},
            {"name": "nan", "train.lr_peak": 1e30, "train.lr_start": 1e30, "train.grad_clip": 1e30},
        ],
    )
    done = sweep(tmp_path, space)
    assert done.returncode == 0, done.stderr[-3000:]
    client, parents, children = runs(tmp_path)
    by_cell = {c.data.tags["cell"]: c for c in children}
    assert by_cell["nan"].info.status == "FAILED"
    assert by_cell["nan"].data.tags["label"] == "failed"
    assert "loss became" in by_cell["nan"].data.tags["error"]
    assert by_cell["ok"].info.status == "FINISHED"
    assert parents[0].data.metrics["overall/n_failed"] == 1


def test_killed_sweep_resumes_without_duplicates(tmp_path):
    space = write_space(
        tmp_path / "space.yaml",
        base={**TINY, "train.steps": 120},
        replicates=2,
        resources={"cpus_per_trial": 1, "max_concurrent": 1},
    )
    driver = sweep(tmp_path, space, wait=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # Kill once a trial has saved a checkpoint, i.e. mid-sweep, with trials both started and pending.
    # (Poll the files, not MLflow: a second client could race the driver's creation of the database.)
    while time.time() < deadline:
        if list((tmp_path / "results").glob("*/*/checkpoint_*")):
            break
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(1)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    resumed = sweep(tmp_path, space, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "efficiency n/a (resumed)" in resumed.stdout  # its wall time covers only the second part
    _, parents, children = runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert (
        "sweep/efficiency" not in parents[0].data.metrics and "sweep/wall_seconds" in parents[0].data.metrics
    )
    keys = [c.data.tags["flipsweep.trial_key"] for c in children]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    # The same sweep, uninterrupted, in a store of its own: the same labels and figures, trial by trial.
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    straight = sweep(straight_dir, space)
    assert straight.returncode == 0, straight.stderr[-3000:]
    _, _, uninterrupted = runs(straight_dir)

    def table(found):
        return {
            c.data.tags["flipsweep.trial_key"]: (
                c.data.tags["label"],
                c.data.metrics["final/attention_direction"],
            )
            for c in found
        }

    assert table(children) == table(uninterrupted)
    for client_dir in (tmp_path, straight_dir):
        client, parents, _ = runs(client_dir)
        client.download_artifacts(parents[0].info.run_id, "incidence.csv", str(client_dir))
    assert (tmp_path / "incidence.csv").read_text() == (straight_dir / "incidence.csv").read_text()


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
    studies = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(studies) == 1 and studies[0].n_trials == 2
    study = optuna.load_study(study_name=studies[0].study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert all(t.value is not None and t.value >= 0 for t in study.trials)  # the objective reached Optuna

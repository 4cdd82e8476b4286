"""`sweep.tracking` against a temporary sqlite MLflow store, without Ray: the experiment, the parent and child
runs found again after a resume, what a write keeps and drops, and the end of a run."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from sweep import tracking
from sweep.tracking import (
    BATCH_LIMIT,
    EXPERIMENT_KIND_TAG,
    MAX_PARAM_LENGTH,
    MODEL_TRAINING,
    PARENT_TAG,
    ROLE_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    Tracker,
    TrackingUnavailable,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tracker(tracking_uri, experiment) -> Tracker:
    return Tracker(tracking_uri, experiment, "t-1", trial_tags={"mlflow.source.name": "trainers/train.py"})


def test_the_experiment_is_created_once_and_marked_model_training(tracking_uri):
    client = MlflowClient(tracking_uri)
    first = tracking.get_or_create_experiment(client, "made-here")
    assert tracking.get_or_create_experiment(client, "made-here") == first
    assert client.get_experiment(first).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    older = client.create_experiment("made-elsewhere")  # an experiment some other tool created
    assert tracking.get_or_create_experiment(client, "made-elsewhere") == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING


def test_the_parent_run_is_found_again_and_runs_again(tracker):
    parent = tracker.start_parent({"name": "t"}, description="what the sweep compares", tags={"x": "1"})
    run = tracker.client.get_run(parent)
    assert run.data.tags[SWEEP_TAG] == "t-1" and run.data.tags[ROLE_TAG] == "parent"
    assert run.data.tags["mlflow.note.content"] == "what the sweep compares" and run.data.tags["x"] == "1"
    assert run.data.params == {"name": "t"} and run.info.run_name == "t-1"
    tracker.finish(parent, tracking.INTERRUPTED)
    assert tracker.start_parent({"name": "t"}) == parent  # a resumed sweep keeps its parent run
    assert tracker.status(parent) == "RUNNING"
    other = Tracker(tracker.tracking_uri, tracker.experiment_id, "t-2")
    assert other.start_parent({}) != parent  # another sweep, another parent


def test_a_child_run_is_nested_tagged_and_found_again_by_its_trial_key(tracker):
    parent = tracker.start_parent({})
    child = tracker.child(parent, "c000-r00", "cell seed 0 (c000-r00)", {"model.layers": 2}, {"seed": 0})
    run = tracker.client.get_run(child)
    tags = run.data.tags
    assert (tags[PARENT_TAG], tags[TRIAL_TAG], tags[ROLE_TAG], tags[SWEEP_TAG]) == (
        parent,
        "c000-r00",
        "trial",
        "t-1",
    )
    assert tags["seed"] == "0" and tags["mlflow.source.name"] == "trainers/train.py"  # the trial code's
    assert run.data.params == {"model.layers": "2"} and run.info.run_name == "cell seed 0 (c000-r00)"
    assert tracker.child(parent, "c000-r00", "again", {}, {}) == child
    assert tracker.child(parent, "c000-r01", "another", {}, {}) != child
    assert len(tracking.child_runs(tracker.client, tracker.experiment_id, parent)) == 2


@pytest.mark.parametrize("ended", tracking.ENDED_STATUSES)
def test_an_ended_run_stays_ended_and_an_interrupted_one_runs_again(tracker, ended):
    parent = tracker.start_parent({})
    done = tracker.child(parent, "done", "done", {}, {})
    cut = tracker.child(parent, "cut", "cut", {}, {})
    tracker.finish(done, ended)
    tracker.interrupt(parent)  # the sweep stops: the unfinished trial and the parent end KILLED
    assert (tracker.status(done), tracker.status(cut), tracker.status(parent)) == (ended, "KILLED", "KILLED")
    assert sorted(tracker.children_statuses(parent)) == sorted([ended, "KILLED"])
    assert tracker.finished_trial_keys(parent) == {"done"}
    # A resumed driver looks for both trials again: the ended run is not reopened, the killed one is.
    assert tracker.child(parent, "done", "done", {}, {}) == done and tracker.status(done) == ended
    assert tracker.child(parent, "cut", "cut", {}, {}) == cut and tracker.status(cut) == "RUNNING"


def test_params_go_in_batches_and_long_values_are_cut(tracker):
    run = tracker.start_parent({})
    many = {f"p{i:03d}": i for i in range(BATCH_LIMIT + 5)}  # more than one log_batch may carry
    tracker.log_params(run, {**many, "long": "x" * (MAX_PARAM_LENGTH + 10)})
    params = tracker.client.get_run(run).data.params
    assert len(params) == BATCH_LIMIT + 6 and params["p104"] == "104"
    assert params["long"] == "x" * MAX_PARAM_LENGTH


def test_metrics_keep_finite_numbers_and_booleans_only(tracker):
    run = tracker.start_parent({})
    metrics = {"loss": 1.5, "steps": 3, "decided": True, "nan": math.nan, "inf": math.inf, "label": "normal"}
    tracker.log_metrics(run, metrics, step=20)
    tracker.log_metrics(run, {"loss": 1.0}, step=40)
    logged = tracker.client.get_run(run).data.metrics
    assert logged == {"loss": 1.0, "steps": 3.0, "decided": 1.0}
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(run, "loss")] == [
        (20, 1.5),
        (40, 1.0),
    ]
    assert tracker.last_step(run, "loss") == 40 and tracker.last_step(run, "never") == -1


def test_tags_artifacts_and_images(tracker, tmp_path):
    run = tracker.start_parent({})
    tracker.set_tags(run, {"label": "normal", "long": "y" * (MAX_PARAM_LENGTH + 1)})
    tags = tracker.client.get_run(run).data.tags
    assert tags["label"] == "normal" and len(tags["long"]) == MAX_PARAM_LENGTH
    for name in ("result.json", "state.pt", "metrics.jsonl.tmp"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "folder").mkdir()
    tracker.log_artifacts(run, tmp_path, skip=("state.pt",))
    assert [a.path for a in tracker.client.list_artifacts(run)] == ["result.json"]
    assert tracker.image_steps(run, "attention") == set()
    picture = tmp_path / "map.png"
    Image.new("L", (8, 8)).save(picture)
    tracker.log_image(run, picture, "attention", 50)
    tracker.log_image(run, picture, "attention", 100)
    tracker.log_image(run, picture, "other", 7)
    assert tracker.image_steps(run, "attention") == {50, 100}


def test_a_tracker_pickles_without_its_client(tracker):
    tracker.start_parent({})  # the client is open now
    copy = pickle.loads(pickle.dumps(tracker))
    assert copy._client is None and copy.sweep_id == "t-1" and copy.trial_tags == tracker.trial_tags
    assert copy.start_parent({}) == tracker.start_parent({})  # opens its own client


def test_tracking_uris_and_where_to_look(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.default_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.org:5000")
    assert tracking.default_tracking_uri() == "http://example.org:5000"
    assert tracking.absolute_uri("sqlite:///here.db") == f"sqlite:///{tmp_path.resolve() / 'here.db'}"
    assert tracking.absolute_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert tracking.absolute_uri("http://h:5000") == "http://h:5000"
    page = "#/experiments/3/runs?workflowType=machine_learning"
    assert tracking.ui_hint("http://h:5000/", "3") == f"http://h:5000/{page}"
    assert tracking.ui_hint("sqlite:////x.db", "3").endswith(f"http://127.0.0.1:5000/{page}")


def test_an_unreachable_server_is_named_and_a_file_store_is_not_checked():
    tracking.check_reachable("sqlite:////nowhere/at/all.db")  # nothing to reach
    with pytest.raises(TrackingUnavailable, match=r"127\.0\.0\.1:9 is unreachable"):
        tracking.check_reachable("http://127.0.0.1:9", timeout=2.0)


def test_source_tags_name_the_file_and_its_commit():
    tags = tracking.source_tags("trainers.train")
    assert tags["mlflow.source.name"] == str(ROOT / "trainers" / "train.py")
    assert tags["mlflow.source.type"] == "LOCAL"
    if (ROOT / ".git").exists():
        assert len(tags["mlflow.source.git.commit"]) == 40 and tags[tracking.DIRTY_TAG] in ("true", "false")

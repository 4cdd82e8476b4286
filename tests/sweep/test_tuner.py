"""`sweep.tuner` without starting Ray: what Tune is handed for each search mode, trial names and folders, a
half-written Tune state set aside, Tune's notes kept out of view, and the slots a sweep can fill."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.sample import Categorical, Float, Integer

from sweep import tuner
from sweep.space import load_space, trial_specs
from tests.conftest import TINY


def space_file(tmp_path: Path, **fields):
    space = {"name": "t", "trainer": "conformer_aed", "base": dict(TINY), **fields}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return load_space(path)


def test_a_grid_hands_tune_every_trial_once(tmp_path):
    space = space_file(
        tmp_path,
        factors={"model.ffn_scale": [0.5, 1.0]},
        replicates=2,
        resources={"cpus_per_trial": 1, "max_concurrent": 3},
    )
    specs = trial_specs(space)
    param_space, config = tuner.tuner_parts(space, specs, "t-1", f"sqlite:///{tmp_path / 'optuna.db'}")
    assert param_space["run"] == "trainers.train:run_trial"
    assert param_space["spec"] == tune.grid_search([asdict(spec) for spec in specs]) and len(specs) == 4
    assert (config.num_samples, config.max_concurrent_trials, config.search_alg) == (1, 3, None)
    assert (
        config.trial_name_creator is tuner.trial_name and config.trial_dirname_creator is tuner.trial_dirname
    )
    assert not (tmp_path / "optuna.db").exists()  # a grid never opens the Optuna store


def test_an_optuna_search_samples_the_ranges_a_few_at_a_time(tmp_path):
    ranges = {
        "train.lr_peak": {"low": 1e-4, "high": 3e-3, "log": True},
        "model.ffn_scale": {"low": 0.25, "high": 1.0},
        "model.layers": {"low": 2, "high": 4, "integer": True},
        "model.pos_enc": {"choices": ["rel_shaw", "abs"]},
    }
    objective = {"metric": "reversal_score", "mode": "max"}
    space = space_file(tmp_path, search="optuna", samples=5, ranges=ranges, objective=objective, seed=3)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    param_space, config = tuner.tuner_parts(space, [], "t-1", storage)
    assert param_space["seed_base"] == 3 and param_space["spec"]["overrides"]["train.steps"] == 40
    sampled = param_space["sampled"]
    assert isinstance(sampled["train.lr_peak"], Float) and sampled["train.lr_peak"].lower == 1e-4
    assert isinstance(sampled["train.lr_peak"].sampler, Float._LogUniform)
    assert isinstance(sampled["model.ffn_scale"].sampler, Float._Uniform)
    layers = sampled["model.layers"]
    assert isinstance(layers, Integer) and (layers.lower, layers.upper) == (2, 5)  # Tune's upper is exclusive
    assert isinstance(sampled["model.pos_enc"], Categorical)
    assert sampled["model.pos_enc"].categories == ["rel_shaw", "abs"]
    assert config.num_samples == 5 and isinstance(config.search_alg, ConcurrencyLimiter)
    assert config.search_alg.max_concurrent == 2  # no cap given: TPE proposes two at a time
    _, resumed = tuner.tuner_parts(space, [], "t-1", storage, samples=2)  # a resumed search draws the rest
    assert resumed.num_samples == 2


def test_trials_are_named_for_people_and_their_folders_for_file_systems():
    spec = {"trial_key": "c001-r01", "cell": "model.pos_enc=abs", "overrides": {"seed": 1}}
    trial = SimpleNamespace(config={"spec": spec}, trial_id="3f2a_00001")
    assert tuner.trial_name(trial) == "model.pos_enc=abs seed 1 (c001-r01)"
    assert tuner.trial_dirname(trial) == "c001-r01_3f2a_00001"


def test_only_an_unreadable_tune_state_is_set_aside(tmp_path):
    assert tuner.set_aside_unreadable_tune_state(tmp_path) is None  # no state yet
    older, newer = tmp_path / "experiment_state-1.json", tmp_path / "experiment_state-2.json"
    older.write_text("")
    newer.write_text('{"trials": []}')
    assert tuner.set_aside_unreadable_tune_state(tmp_path) is None  # the newest one parses
    newer.write_text('{"tri')  # what a kill mid-write leaves
    assert tuner.set_aside_unreadable_tune_state(tmp_path) == tmp_path / "experiment_state-2.json.unreadable"
    assert not newer.exists() and older.exists()


def test_a_sweep_without_tune_state_is_not_restored(tmp_path):
    space = space_file(tmp_path, factors={"model.ffn_scale": [0.5, 1.0]})
    assert tuner.restore_tuner(space, tmp_path) is None


@pytest.mark.parametrize(
    "logger, message, shown",
    [
        (
            tuner._ANALYSIS_LOGGER,
            "Failed to fetch metrics for 2 trial(s):\n- a: FileNotFoundError('x')",
            False,
        ),
        (tuner._ANALYSIS_LOGGER, "Failed to fetch metrics for 1 trial(s):\n- a: ValueError('bad')", True),
        (tuner._TUNE_LOGGER, "Experiment has been interrupted, but ... Tuner.restore(...)", False),
        (tuner._TUNE_LOGGER, "Trial t errored after 3 iterations", True),
    ],
)
def test_tunes_notes_that_the_driver_says_better_are_kept_out_of_view(caplog, logger, message, shown):
    with caplog.at_level(logging.WARNING, logger=logger), tuner.quiet_tune():
        logging.getLogger(logger).warning(message)
    assert (message in caplog.text) == shown
    caplog.clear()
    logging.getLogger(logger).warning(message)  # outside a restore or a fit, Tune speaks as usual
    assert message in caplog.text


@pytest.mark.parametrize(
    "resources, cluster, trials, slots",
    [
        ({"cpus_per_trial": 1}, {"CPU": 8.0}, 20, 8),
        ({"cpus_per_trial": 2}, {"CPU": 8.0}, 20, 4),
        ({"cpus_per_trial": 1}, {"CPU": 8.0}, 3, 3),  # never more than the trials
        ({"cpus_per_trial": 1, "max_concurrent": 2}, {"CPU": 8.0}, 20, 2),
        ({"cpus_per_trial": 1, "gpus_per_trial": 0.5}, {"CPU": 8.0, "GPU": 1.0}, 20, 2),
        ({"cpus_per_trial": 4}, {"CPU": 2.0}, 20, 1),  # a trial larger than the machine still gets one
    ],
)
def test_concurrent_slots(tmp_path, monkeypatch, resources, cluster, trials, slots):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: cluster)
    space = space_file(tmp_path, factors={"model.ffn_scale": [0.5, 1.0]}, resources=resources)
    assert tuner.concurrent_slots(space, trials) == slots

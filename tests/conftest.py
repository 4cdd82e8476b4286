"""Shared configs and fixtures: tiny trial configs that train in seconds on one CPU core, and trials trained
once per session (`trained`) for every test that reads them.

The suite's tiers: `make check` runs every test not marked `slow` (starts Ray, a server or a browser, or
trains for more than ~5 s); `make test` runs all of them, in two pytest-xdist workers. Tests that share a Ray
or a rendered corpus carry an `xdist_group` mark, which keeps them in one worker.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trainers.config import SMALL_MODEL

# One thread per test process: the suite runs on 2 cores next to Ray workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = {
    "data.num_labels": 8,
    "data.min_labels": 3,
    "data.max_labels": 5,
    "data.min_label_frames": 6,
    "data.max_label_frames": 10,
    "data.min_silence_frames": 4,
    "data.max_silence_frames": 10,
    **SMALL_MODEL,
    "model.layers": 2,
    "train.steps": 40,
    "train.batch_size": 8,
    "train.threads": 1,
    "detector.every": 20,
    "detector.utterances": 8,
    "detector.gradient_utterances": 2,
}

# Long enough for the tiny model to align (attention sharp, accuracy high); measured on 1 core.
ALIGNING = {**TINY, "train.steps": 300, "train.lr_peak": 3e-3, "train.lr_warmup": 0.1, "detector.every": 50}


# A model small enough for exact gradient checks (no training); FEATURES dims in, VOCAB labels incl. EOS.
TINY_MODEL = {
    "model.d_model": 16,
    "model.layers": 2,
    "model.heads": 2,
    "model.ffn_dim": 32,
    "model.frontend_channels": 4,
    "model.conv_kernel": 3,
    "model.decoder_dim": 16,
    "model.embed_dim": 8,
    "model.attention_dim": 8,
}
FEATURES = 8
VOCAB = 6  # EOS = 0 and labels 1..5


@dataclass(frozen=True)
class TrainedTrial:
    """A trial trained once per session and shared by the tests that read it: never write into `out_dir`."""

    result: dict  # what `run_trial` returned
    out_dir: Path  # its output folder: result.json, metrics.jsonl, the plots, attention_maps/
    reports: list[dict] = field(default_factory=list)  # every report it handed the sweep, in order


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Callable[[dict], TrainedTrial]:
    """`trained(overrides)`: the trial of those config overrides, trained the first time a test asks for it
    in this session and shared from then on (training is the suite's largest cost)."""
    from trainers.train import run_trial

    done: dict[str, TrainedTrial] = {}

    def train(overrides: dict) -> TrainedTrial:
        key = json.dumps(overrides, sort_keys=True)
        if key not in done:
            out_dir = tmp_path_factory.mktemp("trained")
            reports: list[dict] = []
            result = run_trial(
                overrides,
                out_dir,
                report=lambda metrics, saved: reports.append(dict(metrics)),
                log=lambda _: None,
            )
            done[key] = TrainedTrial(result, out_dir, reports)
        return done[key]

    return train


@pytest.fixture(scope="session")
def tiny_trial(trained) -> TrainedTrial:
    """The tiny seed-0 trial (`TINY`: 40 steps, evaluated at 20 and 40)."""
    return trained(TINY)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Under `make test`, slow tests first: pytest-xdist hands out tests in this order, so the workers start
    on the long ones and end on short ones, rather than one waiting while the other trains a control."""
    if getattr(config.option, "loadgroup", False):  # set in xdist's workers under loadgroup
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_collection_finish(session) -> None:
    """Say so when `--dist loadgroup` lost the `xdist_group` marks: pytest 9.2 drops the group that
    pytest-xdist 3.8 writes into each test's id (pytest-dev/pytest-xdist#1386), and a group's tests then
    spread over the workers, each setting up the group's module fixtures (a Ray sweep, a server) again.
    constraints.txt keeps pytest below 9.2."""
    if not getattr(session.config.option, "loadgroup", False):  # set in xdist's workers under loadgroup
        return
    lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if lost:
        message = f"{len(lost)} tests lost their xdist_group on pytest {pytest.__version__}: {lost[0]}, ..."
        warnings.warn(pytest.PytestWarning(message), stacklevel=1)

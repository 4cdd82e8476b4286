"""The trainers a space file may name, by name only.

A space file says `trainer: conformer_aed`; it never holds an import path. Each trainer's entry point is a
fixed `"module:function"` string here, resolved lazily inside the Ray worker (validating a space file imports
no torch). `build_config` and `known_keys` come from the trainer's config module, which is light (pydantic and
PyYAML only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainers import config as conformer_config
from trainers import reported as conformer_reported


@dataclass(frozen=True)
class TrainerSpec:
    """One registered trainer: how to build and check its trial config, and where its trial entry point is."""

    name: str
    run: str  # "module:function" of the trial entry point; resolved lazily by the trainable
    build_config: Callable[..., Any]  # build_config(*dotted_dicts) -> validated config; raises ConfigError
    known_keys: Callable[[], set[str]]  # every dotted trial-config key
    reports: Callable[[str], bool]  # whether every evaluation report carries this metric (search objectives)
    metric_names: tuple[str, ...]  # the reported names, for suggestions
    total_steps: Callable[[Any], int]  # a built config's training steps (progress and its ETA)
    run_kind: Callable[
        [Any], str
    ]  # a built config's kind (`sweep.kinds`: natural, mitigation, induced, control)
    # "module:function"(built config) -> summary line or None: checks and prepares the trial's data (e.g. a
    # speech corpus's feature cache) before the sweep writes anything; raises ValueError on bad input
    prepare_data: str | None = None
    renamed_keys: Mapping[str, str] = field(default_factory=dict)  # old dotted key -> the key replacing it


TRAINERS: dict[str, TrainerSpec] = {
    "conformer_aed": TrainerSpec(
        name="conformer_aed",
        run="trainers.train:run_trial",
        build_config=conformer_config.build_config,
        known_keys=conformer_config.known_keys,
        reports=conformer_reported.is_reported,
        metric_names=conformer_reported.SCALARS,
        total_steps=lambda config: config.train.steps,
        run_kind=conformer_config.run_kind,
        prepare_data="trainers.speech.corpus:prepare_trial_data",
        renamed_keys=conformer_config.RENAMED_KEYS,
    ),
}


def get_trainer(name: str) -> TrainerSpec:
    """The registered trainer called `name`; KeyError naming the known ones otherwise."""
    try:
        return TRAINERS[name]
    except KeyError:
        raise KeyError(f"unknown trainer {name!r} (known: {', '.join(sorted(TRAINERS))})") from None

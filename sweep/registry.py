"""Registered trainers. A space file names one of these; user input never becomes an import path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainers import config as conformer_config


@dataclass(frozen=True)
class TrainerSpec:
    name: str
    run: str  # "module:function" of the trial entry point, imported lazily inside the Ray worker
    build_config: Callable[..., Any]
    known_keys: Callable[[], set[str]]


TRAINERS = {
    "conformer_aed": TrainerSpec(
        name="conformer_aed",
        run="trainers.train:run_trial",
        build_config=conformer_config.build_config,
        known_keys=conformer_config.known_keys,
    )
}


def get_trainer(name: str) -> TrainerSpec:
    if name not in TRAINERS:
        raise KeyError(f"unknown trainer {name!r}; known: {', '.join(sorted(TRAINERS))}")
    return TRAINERS[name]

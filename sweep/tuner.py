"""Ray Tune for a sweep: start or join Ray, build the Tuner of a space (or restore it), count its slots.

Grid and random sweeps hand Tune the expanded trials as one `grid_search` over trial specs (each trial runs
exactly once); optuna sweeps hand Tune the ranges and an `OptunaSearch` behind a concurrency limit. Trials
are named for people (`model.pos_enc=abs seed 1 (c001-r01)`) and their folders for file systems.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from ray import tune

from sweep.space import base_overrides
from sweep.trainable import run_tune_trial, trial_key, trial_title

# Tune's restore, and its results after a Ctrl-C, read every trial's progress files and warn about each
# trial that has none yet, i.e. about every trial that had not started; after a Ctrl-C it also tells the user
# to call `Tuner.restore`. Both are said better, in one line, by the driver (`--resume`).
_ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"
_TUNE_LOGGER = "ray.tune.tune"
# A new local Ray cluster turns token authentication on by default (RAY_AUTH_MODE unset) and says so in a
# warning on every start. The driver's own local cluster keeps Ray's default and the line stays in Ray's
# session log; what a user must do on a cluster of their own is in README ("Running it for real").
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_AUTH_DEFAULT_NOTICE = "Token authentication is enabled for this Ray cluster"
# Tune prints every trial error with its whole traceback (an `ActorDiedError` of a worker killed by the OS is
# 30 lines), also when it then retries the trial from its checkpoint; the driver says it in one line instead
# (`sweep.callbacks.retry_line`, `finish`), and the traceback stays in the trial's error.txt.
PRINT_TRIAL_ERRORS = "TUNE_PRINT_ALL_TRIAL_ERRORS"


class _SaidByTheDriver(logging.Filter):
    """Drops Tune's "Failed to fetch metrics" warning when every failure is a missing progress file, and its
    "Resume experiment with: Tuner.restore(...)" advice."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Experiment has been interrupted"):
            return False
        if not message.startswith("Failed to fetch metrics"):
            return True
        failures = message.splitlines()[1:]
        return not failures or not all("FileNotFoundError" in line for line in failures)


@contextlib.contextmanager
def quiet_tune() -> Iterator[None]:
    """Keep Tune's notes on not-started trials and `Tuner.restore` out of the user's view (restore, fit)."""
    loggers = [logging.getLogger(name) for name in (_ANALYSIS_LOGGER, _TUNE_LOGGER)]
    noise = _SaidByTheDriver()
    for logger in loggers:
        logger.addFilter(noise)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


def trial_name(trial) -> str:
    """Tune's display name of a trial: its cell and seed (see `trial_title`)."""
    return trial_title(trial.config, trial.trial_id)


def trial_dirname(trial) -> str:
    """A trial's folder under the sweep: its key and Tune's id (short, safe on every file system)."""
    return f"{trial_key(trial.config, trial.trial_id)}_{trial.trial_id}"


def _tune_range(spec):
    if spec.choices is not None:
        return tune.choice(spec.choices)
    if spec.integer:
        low, high = int(spec.low), int(spec.high) + 1
        return tune.lograndint(low, high) if spec.log else tune.randint(low, high)
    return tune.loguniform(spec.low, spec.high) if spec.log else tune.uniform(spec.low, spec.high)


def tuner_parts(space, specs, sweep_id: str, optuna_storage: str, samples: int | None = None):
    """(param_space, tune_config) for the space's search mode; `samples`: how many an optuna search still
    draws (default: all of the space's)."""
    trainer = space.trainer_spec
    names = {"trial_name_creator": trial_name, "trial_dirname_creator": trial_dirname}
    max_concurrent = space.resources.max_concurrent
    if space.search != "optuna":
        param_space = {"run": trainer.run, "spec": tune.grid_search([asdict(s) for s in specs])}
        return param_space, tune.TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent, **names)

    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    param_space = {
        "run": trainer.run,
        "seed_base": space.seed,
        "spec": {"overrides": base_overrides(space)},
        "sampled": {key: _tune_range(spec) for key, spec in space.ranges.items()},
    }
    searcher = OptunaSearch(
        metric=space.objective.metric,
        mode=space.objective.mode,
        storage=optuna.storages.RDBStorage(optuna_storage),
        study_name=sweep_id,
        seed=space.seed,
    )
    limit = max_concurrent or 2  # TPE learns nothing from a batch proposed all at once
    search = ConcurrencyLimiter(searcher, max_concurrent=limit)
    num_samples = space.samples if samples is None else samples
    return param_space, tune.TuneConfig(search_alg=search, num_samples=num_samples, **names)


def build_tuner(
    space, specs, sweep_dir: Path, callbacks: list, optuna_storage: str, samples: int | None = None
) -> tune.Tuner:
    """A new Tuner writing into `sweep_dir` (named after the sweep, under its storage folder)."""
    param_space, tune_config = tuner_parts(space, specs, sweep_dir.name, optuna_storage, samples)
    run_config = tune.RunConfig(
        name=sweep_dir.name,
        storage_path=str(sweep_dir.parent),
        failure_config=tune.FailureConfig(max_failures=space.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=callbacks,
        verbose=0,
    )
    return tune.Tuner(
        _trainable(space), param_space=param_space, tune_config=tune_config, run_config=run_config
    )


class RestoreFailed(Exception):
    """Tune's saved state of a sweep cannot be loaded (e.g. written by another flipsweep version)."""


TUNE_STATE_GLOB = "experiment_state-*.json"  # Tune's experiment state, one file per start of the driver


def set_aside_unreadable_tune_state(sweep_dir: Path) -> Path | None:
    """Tune's newest experiment state, renamed `*.unreadable`, if it does not parse; else None.

    Tune rewrites that file in place, so a driver killed mid-write can leave it empty. Tune's own restore
    then logs the error and silently starts the experiment again (every trial anew, duplicated); the
    driver rebuilds the sweep from its own records instead."""
    states = sorted(sweep_dir.glob(TUNE_STATE_GLOB))
    if not states:
        return None
    try:
        json.loads(states[-1].read_text())
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        aside = states[-1].with_name(states[-1].name + ".unreadable")
        states[-1].rename(aside)
        return aside


def restore_tuner(space, sweep_dir: Path) -> tune.Tuner | None:
    """The Tuner of an interrupted sweep, or None when Tune had not saved its state yet (or saved it only
    half: see `set_aside_unreadable_tune_state`); RestoreFailed (one line) when the state is there but
    cannot be loaded."""
    if not tune.Tuner.can_restore(str(sweep_dir)):
        return None
    try:
        with quiet_tune():
            return tune.Tuner.restore(str(sweep_dir), trainable=_trainable(space), resume_errored=False)
    except Exception as exc:  # noqa: BLE001 - unpickling another version's callbacks can fail any way
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise RestoreFailed(f"cannot restore Ray Tune's state in {sweep_dir} ({reason})") from None


def _trainable(space):
    resources = {"cpu": space.resources.cpus_per_trial, "gpu": space.resources.gpus_per_trial}
    return tune.with_resources(run_tune_trial, resources)


class _DefaultAuthNotice(logging.Filter):
    """Drops Ray's notice that a new local cluster enabled token authentication by default."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_AUTH_DEFAULT_NOTICE)


def init_ray(address: str | None, num_cpus: int | None) -> None:
    """Join the Ray cluster at `address`, or start a local one of `num_cpus` (default: all) for this sweep."""
    import ray

    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **options)
        return
    os.environ.pop("RAY_ADDRESS", None)  # num_cpus may only be given to a local Ray (refused with an address)
    logger, notice = logging.getLogger(_AUTH_LOGGER), _DefaultAuthNotice()
    logger.addFilter(notice)
    try:
        ray.init(num_cpus=num_cpus, **options)
    finally:
        logger.removeFilter(notice)


def concurrent_slots(space, n_trials: int) -> int:
    """How many trials Ray can run at once for this space (CPUs, GPUs and the space's own cap)."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    slots = int(cpus // max(space.resources.cpus_per_trial, 1e-9))
    gpus = space.resources.gpus_per_trial
    if gpus:
        slots = min(slots, int(ray.cluster_resources().get("GPU", 0) // gpus))
    if space.resources.max_concurrent:
        slots = min(slots, space.resources.max_concurrent)
    return max(1, min(slots, n_trials))

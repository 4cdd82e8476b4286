"""The Ray Tune function trainable: runs one registered trial and turns its reports into Tune results.

The trial itself (e.g. `trainers.train.run_trial`) is a plain function of a config and an output folder. This
wrapper gives it a private working folder, restores that folder from the latest Tune checkpoint (after a
retry or a resumed sweep), and hands every saved state to Tune as a checkpoint so that nothing is lost.

Its last result repeats the trial's last evaluation report (so a search objective is there too), marked
`final`, with the trial's outcome (`trainers.outcome.TrialOutcome`) under `outcome`; the final checkpoint
holds the same outcome in `result.json`.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune


def resolve(reference: str):
    """`"package.module:function"` from our own registry (never from user input) -> the function."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def trial_key(config: dict[str, Any], trial_id: str | None = None) -> str:
    """The stable key of a trial: from its spec, or (searcher-driven trials) from Tune's trial id."""
    spec = config.get("spec") or {}
    if "trial_key" in spec:
        return spec["trial_key"]
    trial_id = trial_id or tune.get_context().get_trial_id()
    return "o" + trial_id.replace("_", "")


def trial_overrides(config: dict[str, Any], trial_id: str | None = None) -> dict[str, Any]:
    """A Tune config's trial-config overrides: the spec's fixed ones plus the `sampled` values."""
    overrides = dict((config.get("spec") or {}).get("overrides", {}))
    overrides.update(config.get("sampled") or {})
    if "seed" not in overrides:
        # Searcher-driven trials (optuna): the seed comes from Tune's trial id, which survives a resume.
        overrides["seed"] = config.get("seed_base", 0) + int(trial_key(config, trial_id)[1:9], 16) % 1_000_000
    return overrides


def trial_cell(config: dict[str, Any]) -> str:
    """The cell a trial belongs to: the grid cell's name, or a sampled trial's values."""
    spec = config.get("spec") or {}
    if "cell" in spec:
        return spec["cell"]
    sampled = config.get("sampled") or {}
    short = (f"{v:.3g}" if isinstance(v, float) else str(v) for v in sampled.values())
    return ",".join(f"{k}={v}" for k, v in zip(sampled, short, strict=True)) or "sampled"


def trial_title(config: dict[str, Any], trial_id: str | None = None) -> str:
    """What a person reads as the trial's name: its cell and seed, then its key (`model.pos_enc=abs seed 1
    (c001-r01)`)."""
    seed = trial_overrides(config, trial_id)["seed"]
    return f"{trial_cell(config)} seed {seed} ({trial_key(config, trial_id)})"


def run_tune_trial(config: dict[str, Any]) -> None:
    """Tune entry point. `config` carries `run` (registry reference) and `spec` and/or `sampled` values."""
    started = time.perf_counter()
    work_dir = Path(tempfile.mkdtemp(prefix="flipsweep-trial-"))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as saved:
            shutil.copytree(saved, work_dir, dirs_exist_ok=True)
    log_file = open(work_dir / "train.log", "a")  # noqa: SIM115 - closed below
    last_report: dict[str, Any] = {}

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        metrics = {**metrics, "trial_seconds": time.perf_counter() - started}
        last_report.clear()
        last_report.update(metrics)
        if checkpoint_dir is None:
            tune.report(metrics)
        else:
            log_file.flush()
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))

    def log(line: str) -> None:
        log_file.write(line + "\n")
        log_file.flush()

    try:
        run = resolve(config["run"])
        result = run(trial_overrides(config), work_dir, report=report, log=log)
        outcome = result["outcome"]
        final = {
            # A searcher reads its objective from the last result: the last evaluation's report, or (a trial
            # resumed after its last evaluation) the outcome's figures.
            **outcome["figures"],
            **last_report,
            "final": 1,
            "step": outcome["steps_done"],
            "trial_seconds": time.perf_counter() - started,
            "outcome": outcome,
        }
        log_file.close()
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(work_dir))
    finally:
        if not log_file.closed:
            log_file.close()
        shutil.rmtree(work_dir, ignore_errors=True)

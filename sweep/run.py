"""Run a flipsweep study: `python -m sweep.run space.yaml [--dry-run] [--resume] [--address ...]`.

The driver validates the space file (exit 2 on any error, before anything is written), expands it into trials,
runs them on Ray Tune (local, or the cluster named by --address / RAY_ADDRESS), records one MLflow child run
per trial under a parent run, and ends with incidence statistics on the parent run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sweep.space import SpaceError, expand, factor_names, load_space, sample_random, trial_table

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130
STATE_FILE = "flipsweep.json"


def default_tracking_uri() -> str:
    """sqlite file in the working directory, as an absolute URI (Ray trials run in other folders)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def absolute_uri(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sweep.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("space", help="the space file (YAML)")
    parser.add_argument("--dry-run", action="store_true", help="print the trial table and exit")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="SWEEP_ID", help="continue a sweep")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite file mlflow.db here)")
    parser.add_argument("--storage", default="flipsweep_results", help="folder for Ray results and state")
    parser.add_argument("--yes", action="store_true", help="confirm a sweep larger than max_trials")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    return parser.parse_args(argv)


# -- sweep identity and resume ---------------------------------------------------------------------------
def find_resumable(root: Path, name: str, sweep_id: str) -> Path:
    if sweep_id != "latest":
        path = root / sweep_id
        if not (path / STATE_FILE).exists():
            raise FileNotFoundError(f"no sweep {sweep_id!r} under {root}")
        return path
    candidates = []
    for state_path in root.glob(f"*/{STATE_FILE}"):
        state = json.loads(state_path.read_text())
        if state.get("name") == name and state.get("status") != "complete":
            candidates.append((state.get("created", 0), state_path.parent))
    if not candidates:
        raise FileNotFoundError(f"no unfinished sweep of {name!r} under {root} to resume")
    return max(candidates)[1]


def write_state(sweep_dir: Path, **state: Any) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / STATE_FILE
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(state)
    path.write_text(json.dumps(current, indent=2) + "\n")


# -- Tune setup ---------------------------------------------------------------------------------------------
def _tune_range(spec):
    from ray import tune

    if spec.choices is not None:
        return tune.choice(spec.choices)
    if spec.integer:
        return (
            tune.lograndint(int(spec.low), int(spec.high) + 1)
            if spec.log
            else tune.randint(int(spec.low), int(spec.high) + 1)
        )
    return tune.loguniform(spec.low, spec.high) if spec.log else tune.uniform(spec.low, spec.high)


def build_tuner_parts(space, specs, trainer, sweep_id: str, optuna_storage: str):
    """(param_space, tune_config) for the space's search mode."""
    from ray import tune

    max_concurrent = space.resources.max_concurrent
    if space.search != "optuna":
        param_space = {"run": trainer.run, "spec": tune.grid_search([asdict(s) for s in specs])}
        return param_space, tune.TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent)

    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    param_space = {
        "run": trainer.run,
        "seed_base": space.seed,
        "spec": {"overrides": dict(space.base)},
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
    return param_space, tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=limit), num_samples=space.samples
    )


def init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **options)
    else:  # num_cpus may only be given to a local Ray (Ray refuses it with an address)
        os.environ.pop("RAY_ADDRESS", None)
        ray.init(num_cpus=num_cpus, **options)


def concurrent_slots(space, n_trials: int) -> int:
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    slots = int(cpus // max(space.resources.cpus_per_trial, 1e-9))
    gpus = space.resources.gpus_per_trial
    if gpus:
        slots = min(slots, int(ray.cluster_resources().get("GPU", 0) // gpus))
    if space.resources.max_concurrent:
        slots = min(slots, space.resources.max_concurrent)
    return max(1, min(slots, n_trials))


# -- the sweep -----------------------------------------------------------------------------------------------
def run_sweep(args: argparse.Namespace, space) -> int:
    from mlflow.tracking import MlflowClient
    from ray import tune

    from sweep.callbacks import MlflowTrialCallback, ProgressView, TrialRecorder
    from sweep.registry import get_trainer
    from sweep.tracking import Tracker, TrackingUnavailable, check_reachable, get_or_create_experiment
    from sweep.trainable import run_tune_trial

    # Every evaluation checkpoints; Tune's warning about the resulting (small) state snapshots is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    tracking_uri = absolute_uri(args.tracking_uri or space.mlflow.tracking_uri or default_tracking_uri())
    try:
        check_reachable(tracking_uri)
    except TrackingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    root = Path(args.storage).resolve()
    if args.resume:
        try:
            sweep_dir = find_resumable(root, space.name, args.resume)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        state = json.loads((sweep_dir / STATE_FILE).read_text())
        tracking_uri = state["tracking_uri"]
    else:
        sweep_dir = root / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        state = {}
    sweep_id = sweep_dir.name

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)  # also exported to Ray workers started after this
    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, space.mlflow.experiment)
    tracker = Tracker(tracking_uri, experiment_id, sweep_id)
    trainer = get_trainer(space.trainer)
    specs = (
        expand(space)
        if space.search == "grid"
        else sample_random(space, space.seed)
        if space.search == "random"
        else []
    )
    factors = factor_names(space)
    parent_params = {
        "space": space.name,
        "trainer": space.trainer,
        "search": space.search,
        "trials": len(specs) or space.samples,
        "replicates": space.replicates,
        **{f"factor.{key}": values for key, values in (space.factors or {}).items()},
        **{f"range.{key}": spec for key, spec in (space.ranges or {}).items()},
        **{f"base.{key}": value for key, value in space.base.items()},
    }
    parent_run_id = state.get("parent_run_id") or tracker.start_parent(parent_params, space.description or "")
    if not state:
        tracker.client.log_text(parent_run_id, Path(args.space).read_text(), f"space/{Path(args.space).name}")
    tracker.client.update_run(parent_run_id, status="RUNNING")
    write_state(
        sweep_dir,
        name=space.name,
        sweep_id=sweep_id,
        parent_run_id=parent_run_id,
        tracking_uri=tracking_uri,
        experiment=space.mlflow.experiment,
        space_file=str(Path(args.space).resolve()),
        status="running",
        created=state.get("created", time.time()),
    )
    print(
        f"sweep {sweep_id}: {len(specs) or space.samples} trials, "
        f"MLflow {tracking_uri} (parent run {parent_run_id})"
    )

    recorder = TrialRecorder(tracker, parent_run_id, space.trainer)
    resources = {"cpu": space.resources.cpus_per_trial, "gpu": space.resources.gpus_per_trial}
    trainable = tune.with_resources(run_tune_trial, resources)
    init_ray(args.address or os.environ.get("RAY_ADDRESS"), args.num_cpus)
    started = time.perf_counter()
    if args.resume and tune.Tuner.can_restore(str(sweep_dir)):
        tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_errored=False)
    else:
        optuna_db = _optuna_storage(tracking_uri, sweep_dir)
        param_space, tune_config = build_tuner_parts(space, specs, trainer, sweep_id, optuna_db)
        run_config = tune.RunConfig(
            name=sweep_id,
            storage_path=str(root),
            failure_config=tune.FailureConfig(max_failures=space.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[MlflowTrialCallback(recorder), ProgressView(len(specs) or space.samples)],
            verbose=0,
        )
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    results = tuner.fit()
    wall = time.perf_counter() - started
    return finish_sweep(
        results, recorder, client, space, factors, sweep_dir, parent_run_id, wall, resumed=bool(args.resume)
    )


def _optuna_storage(tracking_uri: str, sweep_dir: Path) -> str:
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).with_name('optuna.db')}"
    return f"sqlite:///{sweep_dir / 'optuna.db'}"


def finish_sweep(
    results, recorder, client, space, factors, sweep_dir, parent_run_id, wall: float, resumed: bool = False
) -> int:
    """Record any trial end the callbacks missed, then write incidence statistics to the parent run.

    A resumed sweep's wall time covers only its last part, so its efficiency is not reported."""
    from sweep.results import trials_frame
    from sweep.stats import format_table, incidence_report

    unfinished, trial_seconds = 0, 0.0
    for result in results:
        trial_id = result.metrics.get("trial_id", "")
        if result.error is not None:
            recorder.record_failure(result.config, trial_id, str(result.error))
        elif result.metrics.get("final") and result.checkpoint is not None:
            recorder.record_completion(result.config, trial_id, result.checkpoint.path)
            trial_seconds += result.metrics.get("trial_seconds", 0.0)
        else:
            unfinished += 1
    if unfinished:
        print(f"interrupted: {unfinished} trials unfinished; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED

    frame = trials_frame(client, parent_run_id, factors)
    report = incidence_report(frame, factors, space.baseline)
    slots = concurrent_slots(space, len(frame))
    n_done = max(1, int((frame["label"] != "failed").sum()))
    metrics = {
        **report.metrics(),
        "sweep/wall_seconds": wall,
        "sweep/slots": slots,
        "sweep/efficiency": trial_seconds / (wall * slots) if wall > 0 and not resumed else math.nan,
        "sweep/mlflow_seconds_per_trial": recorder.seconds / n_done,
    }
    tracker = recorder.tracker
    tracker.log_metrics(parent_run_id, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        report.write(Path(tmp))
        frame.to_csv(Path(tmp) / "trials.csv", index=False)
        client.log_artifacts(parent_run_id, tmp)
    tracker.finish(parent_run_id, "FINISHED")
    write_state(sweep_dir, status="complete", wall_seconds=wall)
    print(format_table(report))
    efficiency = "n/a (resumed)" if resumed else f"{metrics['sweep/efficiency']:.0%}"
    print(
        f"efficiency {efficiency} on {slots} slots, "
        f"MLflow {metrics['sweep/mlflow_seconds_per_trial']:.2f} s/trial, wall {wall:.0f} s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        space = load_space(args.space, confirm=args.yes)
    except SpaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        specs = expand(space) if space.search == "grid" else sample_random(space, space.seed)
        print(
            trial_table(specs)
            if specs
            else f"{space.search}: {space.samples} trials sampled from {list(space.ranges)}"
        )
        return 0
    return run_sweep(args, space)


if __name__ == "__main__":
    sys.exit(main())

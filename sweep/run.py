"""Run a flipsweep study: `python -m sweep.run space.yaml [--dry-run] [--resume] [--address ...]`.

The driver validates the space file (exit 2 on any error, before anything is written), expands it into trials,
runs them on Ray Tune (local, or the cluster named by --address / RAY_ADDRESS), records one MLflow child run
per trial under a parent run, and ends with incidence statistics on the parent run (see `sweep.driver`).
"""

from __future__ import annotations

import argparse
import sys

from sweep.exit_codes import Exit, help_text
from sweep.space import SpaceError, load_space, select_cells, trial_specs, trial_table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sweep.run",
        description=__doc__.split("\n\n")[0],
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("space", help="the space file (YAML)")
    parser.add_argument("--dry-run", action="store_true", help="print the trial table and exit")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="SWEEP_ID",
        help="continue the newest unfinished sweep of this space, or SWEEP_ID",
    )
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite file mlflow.db here)")
    parser.add_argument("--storage", default="flipsweep_results", help="folder for Ray results and state")
    parser.add_argument("--yes", action="store_true", help="confirm a sweep larger than max_trials")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    parser.add_argument(
        "--cells",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        metavar="NAME[,NAME...]",
        help="run only these grid cells (a study a few cells at a time; read the parts as one with "
        "sweep.report --sweep A --sweep B)",
    )
    return parser.parse_args(argv)


def prepare_data(space) -> None:
    """The trainer's data step on every distinct data setup of the sweep (e.g. checking a speech corpus and
    building its feature cache once, not once per trial), before anything is written. ValueError (the
    trainer's CorpusError, naming the bad file) on bad input."""
    import importlib
    import json

    from trainers.config import flatten

    trainer = space.trainer_spec
    if not trainer.prepare_data:
        return
    module, _, name = trainer.prepare_data.partition(":")
    prepare = getattr(importlib.import_module(module), name)
    done = set()
    for layer in [cell.overrides for cell in space.grid_cells] or [dict(space.base)]:
        config = trainer.build_config(layer)
        data = {k: v for k, v in flatten(config).items() if k.split(".")[0] in ("data", "speech")}
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in done:
            done.add(key)
            summary = prepare(config)
            if summary:
                print(f"data: {summary}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        space = load_space(args.space, confirm=args.yes)
        if args.cells:
            space = select_cells(space, args.cells)
    except SpaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return Exit.BAD_INPUT
    if args.dry_run:
        specs = trial_specs(space)
        print(
            trial_table(specs)
            if specs
            else f"{space.search}: {space.samples} trials sampled from {list(space.ranges)}"
        )
        return Exit.OK
    try:
        prepare_data(space)
    except ValueError as exc:  # a bad corpus: one line naming the file, and nothing written
        print(f"error: {exc}", file=sys.stderr)
        return Exit.BAD_INPUT
    from sweep.driver import run_sweep  # ray and mlflow only once a valid space is to run

    return run_sweep(args, space)


if __name__ == "__main__":
    sys.exit(main())

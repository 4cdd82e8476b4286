"""Ready for a GPU, in one shot: `python -m benchmarks.gpu [--budget 420] [--tiny]`.

On one GPU, within about `--budget` seconds (7 minutes by default, plus at most one evaluation interval of
the last trial: meant to stay under 8 minutes; not yet run on a GPU), it prints:

1. training steps/s of the paper-like trial in bf16 (`search_spaces/reproduction_gpu.yaml`'s base: 12 x 256,
   batch 32, long synthetic utterances) and of the same trial at the paper's width, 12 x 512 (8 heads, FFN
   2048, the paper's decoder sizes);
2. the packing gain of 8 trials on the one GPU through Ray's fractional GPUs (`resources.gpus_per_trial:
   0.125`): a real sweep (`sweep.run`, local Ray, MLflow in a temporary folder) of 8 short 12 x 256 trials,
   the sum of their training rates over the rate of the same trial alone;
3. the time to a decided label: the 12 x 256 trial from its start until its first evaluation that reads
   `normal` or `reversed`, or the budget's end.

Rates are each trial's own (`TrialOutcome.cost.steps_per_second`: steps over training seconds, evaluations
left out), so the single and the packed trials are measured alike. With `--tiny` it runs on CPU in about a
minute, most of it Ray's start: a tiny model, a few steps, 2 trials packed on 2 CPUs (the test suite's smoke
run of this script).

Each measurement (the two rates, the packing, the decided label) is a stage of its own: one that fails prints
its traceback and the run goes on to the next, then exits with code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainers.config import SMALL_MODEL, build_config
from trainers.train import run_trial

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
PAPER_LIKE = SPACES / "reproduction_gpu.yaml"
PAPER_WIDTH = {  # the paper's encoder (12 x 512, 8 heads, FFN 2048) and LSTM decoder (1024 units, key 1024)
    "model.d_model": 512,
    "model.heads": 8,
    "model.ffn_dim": 2048,
    "model.decoder_dim": 1024,
    "model.embed_dim": 640,
    "model.attention_dim": 1024,
}
READ_CHEAPLY = {"detector.utterances": 8, "detector.gradient_utterances": 2}  # the one final evaluation
PACKING_EXPERIMENT = "gpu-packing"
TINY = {
    "data.num_labels": 8,
    "data.min_labels": 3,
    "data.max_labels": 5,
    **SMALL_MODEL,
    "model.layers": 2,
    "train.batch_size": 8,
    "train.device": "cpu",
    "train.threads": 1,
}
TINY_WIDE = {**TINY, "model.d_model": 64, "model.ffn_dim": 128}


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What one run measures: two trials timed alone, the packed sweep, a trial run to a decided label."""

    narrow: dict[str, Any]  # trial settings (dotted keys), timed alone and packed
    wide: dict[str, Any]  # the same trial at the paper's width, timed alone
    rate_steps: int  # steps of each timed trial
    packed_trials: int
    gpus_per_trial: float  # Ray's share of the device per packed trial (0: CPU only)
    packed_steps: int
    decided: dict[str, Any]  # the trial run until its first decided evaluation
    budget: float  # seconds for the whole run; the decided-label trial gets what is left (>= 1 evaluation)


def plan(*, tiny: bool) -> Plan:
    """The GPU run (the paper-like trial in bf16, 8 trials a GPU), or the tiny CPU smoke run."""
    if tiny:
        aligning = {"train.steps": 300, "train.lr_peak": 3e-3, "train.lr_warmup": 0.1, "detector.every": 10}
        return Plan(
            narrow=TINY,
            wide=TINY_WIDE,
            rate_steps=8,
            packed_trials=2,
            gpus_per_trial=0.0,
            packed_steps=8,
            decided={**TINY, **aligning},
            budget=60.0,
        )
    # One CPU thread a trial, alone as when packed: the GPU does the work, the thread launches it.
    narrow = {**paper_like(), "train.device": "cuda", "train.bf16": True, "train.threads": 1}
    return Plan(
        narrow=narrow,
        wide={**narrow, **PAPER_WIDTH},
        rate_steps=60,
        packed_trials=8,
        gpus_per_trial=0.125,
        packed_steps=150,
        decided=narrow,
        budget=420.0,  # the decided-label trial always reaches its first evaluation: one interval's margin
    )


class _Stop(Exception):
    """Raised by a trial's reporter to end the trial where the benchmark has seen enough."""


def paper_like() -> dict[str, Any]:
    """The paper-like GPU trial's settings: the base of reproduction_gpu.yaml."""
    return dict(yaml.safe_load(PAPER_LIKE.read_text())["base"])


def describe(settings: dict[str, Any]) -> str:
    model = build_config(settings).model
    return f"{model.layers} x {model.d_model}"


def steps_per_second(settings: dict[str, Any], steps: int, out: Path) -> float:
    """The training rate of a `steps`-step trial with these settings (its own: evaluations left out)."""
    config = {**settings, **READ_CHEAPLY, "train.steps": steps, "detector.every": steps}
    result = run_trial(config, out, log=lambda _: None)
    return result["outcome"]["cost"]["steps_per_second"]


def packing_space(run: Plan) -> dict[str, Any]:
    """The packed sweep's space file: `run.packed_trials` seeds of the narrow trial, sharing one device."""
    return {
        "name": "gpu-packing",
        "description": f"{run.packed_trials} trials sharing one device",
        "trainer": "conformer_aed",
        "base": {
            **run.narrow,
            **READ_CHEAPLY,
            "train.steps": run.packed_steps,
            "detector.every": run.packed_steps,
        },
        "cells": [{"name": "packed"}],
        "replicates": run.packed_trials,
        "search": "grid",
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": run.gpus_per_trial},
        "mlflow": {"experiment": PACKING_EXPERIMENT},
    }


def packed(run: Plan, tmp: Path) -> dict[str, Any]:
    """The packed sweep, run in `tmp` (local Ray, MLflow there): its trials' rates and its wall seconds."""
    from mlflow.tracking import MlflowClient

    from sweep.results import find_parent
    from sweep.run import main as sweep_main
    from sweep.tracking import child_runs

    path = tmp / "packing.yaml"
    path.write_text(yaml.safe_dump(packing_space(run)))
    uri = f"sqlite:///{tmp}/mlflow.db"
    cpus = str(run.packed_trials)
    code = sweep_main(
        [str(path), "--storage", str(tmp / "results"), "--tracking-uri", uri, "--num-cpus", cpus]
    )
    if code:
        raise SystemExit(f"the packing sweep ended with exit code {code}")
    client = MlflowClient(uri)
    parent = find_parent(client, PACKING_EXPERIMENT)
    runs = child_runs(client, parent.info.experiment_id, parent.info.run_id)
    return {
        "rates": [child.data.metrics["trial/steps_per_second"] for child in runs],
        "wall": parent.data.metrics["sweep/wall_seconds"],
    }


def time_to_decided(settings: dict[str, Any], seconds: float, out: Path) -> dict[str, Any]:
    """Run the trial at its own evaluation interval until an evaluation reads a decided label, or until the
    next evaluation would come after `seconds`: the step, wall seconds since the start and label of the last
    evaluation, and `decided` (its label when decided, else None)."""
    started = time.perf_counter()
    seen: dict[str, Any] = {"decided": None, "step": 0, "seconds": 0.0, "label": "none"}

    def report(metrics: dict[str, Any], _checkpoint: Path | None) -> None:
        now = time.perf_counter() - started
        interval, seen["seconds"] = now - seen["seconds"], now
        seen.update(step=metrics["step"], label=metrics["label"])
        if metrics["label"] in ("normal", "reversed"):
            seen["decided"] = metrics["label"]
            raise _Stop
        if now + interval > seconds:
            raise _Stop

    try:
        run_trial(settings, out, report=report, log=lambda _: None)
    except _Stop:
        pass
    return seen


def packed_quietly(run: Plan, tmp: Path) -> dict[str, Any]:
    """`packed`, run from `tmp` (MLflow puts a sqlite store's artifacts under the working directory), with the
    sweep's own console output kept back unless it fails."""
    console, here = io.StringIO(), Path.cwd()
    os.chdir(tmp)
    try:
        with contextlib.redirect_stdout(console):
            return packed(run, tmp)
    except BaseException:
        print(console.getvalue(), end="")
        raise
    finally:
        os.chdir(here)


@contextlib.contextmanager
def stage(name: str, failed: list[str]) -> Iterator[None]:
    """One measurement: a failure is printed with its traceback and noted in `failed`, and the run goes on,
    since a first run on new hardware must not lose the other figures to one stage's error."""
    try:
        yield
    except Exception:
        failed.append(name)
        print(f"failed   {name}:\n{traceback.format_exc()}", flush=True)


def packing_line(run: Plan, result: dict[str, Any], *, alone: float | None) -> str:
    together, rates = sum(result["rates"]), result["rates"]
    gain = f"gain {together / alone:.2f}x over one alone" if alone else "no gain (the trial alone failed)"
    return (
        f"packing  {len(rates)} x {describe(run.narrow)} trials at {run.gpus_per_trial:g} device each: "
        f"{together:.2f} steps/s together ({min(rates):.2f}-{max(rates):.2f} each), {gain}; "
        f"sweep wall {result['wall']:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default: 420; --tiny: 60)")
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny model, few steps, 2 trials packed")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if not args.tiny:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device (use --tiny for the CPU smoke run)", file=sys.stderr)
            return 2
    run = plan(tiny=args.tiny)
    budget = args.budget or run.budget
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        rates: dict[str, float] = {}
        for name, settings in (("narrow", run.narrow), ("wide", run.wide)):
            with stage(name, failed):
                rates[name] = steps_per_second(settings, run.rate_steps, tmp / name)
                alone = f"(one trial alone, {run.rate_steps} steps)"
                print(f"steps/s  {describe(settings):9s} {rates[name]:8.2f}  {alone}", flush=True)
        with stage("packing", failed):
            print(packing_line(run, packed_quietly(run, tmp), alone=rates.get("narrow")), flush=True)
        with stage("decided", failed):
            left = max(budget - (time.perf_counter() - started), 0.0)
            seen = time_to_decided(run.decided, left, tmp / "decided")
            where = f"step {seen['step']}, {seen['seconds']:.0f} s after the trial's start"
            if seen["decided"]:
                print(f"decided  {seen['decided']} at {where} ({describe(run.decided)})")
            else:
                last = f"last evaluation {seen['label']} at {where}"
                print(f"decided  not within the {left:.0f} s left: {last}")
    print(f"total    {time.perf_counter() - started:.0f} s (budget {budget:.0f} s)")
    if failed:
        print(f"failed stages: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

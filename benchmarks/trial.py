"""Benchmark one default trial on one CPU thread: `python -m benchmarks.trial [--set key=value ...]`.

Prints training steps/s, model GFLOP per training step (counted by torch's FlopCounterMode), the achieved
fraction of a single-thread float32 matmul peak measured in this same process, the detector's share of trial
time, and when the trial first reached a decided label. Ratios, not absolute times, are what to compare.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from trainers.config import build_config, parse_assignment
from trainers.train import Trial


def matmul_peak(size: int = 512, seconds: float = 2.0) -> float:
    """Best observed float32 FLOP/s of a square matmul on this thread."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * size**3 / (time.perf_counter() - started))
    return best


def flops_per_step(trial: Trial) -> float:
    """FLOPs of one forward+backward training step (the optimizer update is negligible)."""
    cfg = trial.cfg.train
    batch = trial.stream.batch(0)
    trial.model.set_step(0)
    with FlopCounterMode(display=False) as counter:
        out = trial.model(batch.features, batch.feature_lengths, batch.labels, batch.label_lengths)
        loss, _ = trial.model.loss(out, cfg.label_smoothing, cfg.ctc_scale)
        loss.backward()
    trial.model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = build_config({"train.threads": 1}, dict(parse_assignment(s) for s in args.set))
    peak = matmul_peak()
    with tempfile.TemporaryDirectory() as tmp:
        trial = Trial(config, Path(tmp), log=lambda _: None)
        flops = flops_per_step(trial)
        started = time.perf_counter()
        result = trial.run()
        wall = time.perf_counter() - started
        evaluations = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    steps_per_second = result["outcome"]["cost"]["steps_per_second"]
    first_decided = next((e["step"] for e in evaluations if e["label"] != "undecided"), None)
    seconds_per_step = wall / max(result["outcome"]["steps_done"], 1)
    print(f"config: {config.model.layers} x {config.model.d_model}, {config.train.steps} steps, 1 thread")
    print(f"training steps/s               {steps_per_second:.2f}")
    print(f"model GFLOP per training step  {flops / 1e9:.3f}")
    print(f"matmul peak (1 thread)         {peak / 1e9:.1f} GFLOP/s")
    print(f"achieved fraction of peak      {flops * steps_per_second / peak:.1%}")
    print(f"detector share of trial time   {result['outcome']['cost']['detector_share']:.1%}")
    print(f"trial wall time                {wall:.0f} s, final label {result['outcome']['label']}")
    if first_decided is None:
        print("first decided label            never")
    else:
        print(
            f"first decided label            step {first_decided}, ~{first_decided * seconds_per_step:.0f} s"
        )


if __name__ == "__main__":
    main()

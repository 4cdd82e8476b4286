"""Benchmark sweep efficiency: `python -m benchmarks.sweep [--trials 8] [--steps 300]`.

Runs a real sweep of short trials on this machine (local Ray, sqlite MLflow in a temporary folder) and prints
efficiency = sum of trial run times / (wall time x concurrent slots), and MLflow logging time per trial, both
measured by the driver in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from sweep.run import main as sweep_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        space = {
            "name": "bench",
            "trainer": "conformer_aed",
            "base": {"model.layers": 4, "train.steps": args.steps, "detector.every": 50},
            "factors": {"model.ffn_scale": [0.5, 1.0]},
            "replicates": max(1, args.trials // 2),
            "resources": {"cpus_per_trial": 1},
            "mlflow": {"experiment": "bench"},
        }
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(space))
        uri = f"sqlite:///{tmp}/mlflow.db"
        code = sweep_main([str(path), "--storage", f"{tmp}/results", "--tracking-uri", uri])
        if code:
            raise SystemExit(code)
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("bench")
        parent = client.search_runs([experiment.experiment_id], "tags.`flipsweep.role` = 'parent'")[0]
        metrics = parent.data.metrics
    print(f"trials                      {2 * max(1, args.trials // 2)} x {args.steps} steps")
    print(f"concurrent slots            {metrics['sweep/slots']:.0f}")
    print(f"wall time                   {metrics['sweep/wall_seconds']:.1f} s")
    print(f"efficiency                  {metrics['sweep/efficiency']:.1%}  (target >= 90 %)")
    print(f"MLflow logging per trial    {metrics['sweep/mlflow_seconds_per_trial']:.3f} s  (target <= 1 s)")


if __name__ == "__main__":
    main()

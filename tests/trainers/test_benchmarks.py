"""The benchmarks' own machinery: the step profile splits a training step without changing it, and the GPU
benchmark's CPU smoke run (`python -m benchmarks.gpu --tiny`) measures every figure it prints. And the
speed-up the speech profile led to: the frontend by chunks of utterances is the same function."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.gpu import packing_space, plan, stage
from benchmarks.profile import PHASES, StepTimeline
from sweep.space import load_space, trial_specs
from tests.conftest import FEATURES, TINY, TINY_MODEL, VOCAB
from trainers.config import build_config
from trainers.model.aed import ConformerAED
from trainers.model.frontend import CPU_CHUNK_VALUES, ConvFrontend
from trainers.train import Trial

ROOT = Path(__file__).resolve().parents[2]
COMPUTED = (
    "frontend",
    "encoder",
    "decoder loop",
    "backward decoder",
    "backward encoder",
    "backward frontend",
)


def test_step_timeline_splits_a_step_into_its_phases_and_leaves_training_unchanged(tmp_path):
    config = build_config(TINY)
    plain = Trial(config, tmp_path / "plain", log=lambda _: None)
    for _ in range(3):
        plain.train_step()
    timed = Trial(
        config, tmp_path / "timed", log=lambda _: None
    )  # seeds the global RNG afresh, as plain's did
    timeline = StepTimeline(timed)
    splits, walls = [], []  # CPU seconds of this thread, the timeline's clock on CPU
    for _ in range(3):
        started = time.thread_time()
        splits.append(timeline.step())
        walls.append(time.thread_time() - started)
    for name, value in plain.model.state_dict().items():  # the hooks only watch: training is bit for bit
        assert timed.model.state_dict()[name].equal(value), name
    for split, wall in zip(splits, walls, strict=True):
        assert list(split) == list(PHASES)
        assert all(split[phase] > 0 for phase in COMPUTED), split
        assert all(seconds >= 0 for seconds in split.values())
        assert sum(split.values()) == pytest.approx(wall, rel=0.1, abs=2e-3)  # the phases cover the step
    assert len(timeline.losses) == 3
    marks = list(timeline.marks)
    timed.train_step()  # outside `step()` the hooks stay silent
    assert timeline.marks == marks


def test_gpu_plan_times_the_paper_like_trial_at_two_widths_and_packs_eight_to_a_gpu(tmp_path):
    run = plan(tiny=False)
    narrow, wide = build_config(run.narrow), build_config(run.wide)
    assert (narrow.model.layers, narrow.model.d_model, wide.model.layers, wide.model.d_model) == (
        12,
        256,
        12,
        512,
    )
    assert narrow.train.bf16 and wide.train.bf16 and narrow.train.device == wide.train.device == "cuda"
    path = tmp_path / "packing.yaml"
    path.write_text(yaml.safe_dump(packing_space(run)))
    space = load_space(path)  # the space the packed sweep runs is a valid one
    assert space.resources.gpus_per_trial == 0.125
    assert len(trial_specs(space)) == 8


@pytest.mark.slow
def test_gpu_benchmark_runs_tiny_on_cpu_and_prints_each_figure(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": ""}
    command = [sys.executable, "-m", "benchmarks.gpu", "--tiny"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rates = [float(m) for m in re.findall(r"^steps/s\s+2 x (?:32|64)\s+([\d.]+)", done.stdout, re.M)]
    assert len(rates) == 2 and all(rate > 0 for rate in rates), done.stdout
    packing = re.search(
        r"^packing  2 x 2 x 32 trials.*: ([\d.]+) steps/s together.* gain ([\d.]+)x", done.stdout, re.M
    )
    assert packing and float(packing.group(1)) > 0 and float(packing.group(2)) > 0, done.stdout
    assert re.search(r"^decided  (normal|reversed) at step \d+|^decided  not within", done.stdout, re.M)
    assert not list(tmp_path.iterdir())  # everything it ran lived in a temporary folder


def test_a_failing_gpu_benchmark_stage_is_printed_and_the_next_stage_still_runs(capsys):
    """The GPU run is one shot on hardware it has never seen: one figure's error must not cost the others."""
    failed: list[str] = []
    ran = []
    with stage("narrow", failed):
        raise RuntimeError("CUDA error: out of memory")
    with stage("packing", failed):
        ran.append("packing")
    printed = capsys.readouterr().out
    assert failed == ["narrow"] and ran == ["packing"]
    assert "failed   narrow:" in printed and "RuntimeError: CUDA error: out of memory" in printed


@pytest.mark.parametrize("pad_mode", ["zero", "unmasked"])
@pytest.mark.parametrize("subsampling", [4, 6])
def test_frontend_by_chunks_is_the_same_function_as_the_whole_batch(pad_mode, subsampling):
    """The CPU speed-up of the frontend (its convolutions run a few utterances at a time) changes nothing: the
    same outputs and loss in training mode (the same dropout draws), the same gradients up to float32
    summation order."""
    config = build_config(
        TINY_MODEL, {"model.pad_mode": pad_mode, "model.subsampling": subsampling, "model.ctc_layers": [1]}
    )
    torch.manual_seed(0)
    model = ConformerAED(config.model, feature_dim=FEATURES + 1, vocab_size=VOCAB).train()  # odd F: dropped
    features = torch.randn(5, 61, FEATURES + 1) - 3.0
    lengths = torch.tensor([61, 40, 55, 13, 61])
    features[1, 40:] = features[3, 13:] = -10.0  # a log floor as padding, read un-masked or zeroed
    labels, label_lengths = torch.randint(1, VOCAB, (5, 4)), torch.tensor([4, 3, 4, 1, 2])
    runs = []
    for chunk_values in (None, 1):  # the whole batch; one utterance a chunk
        model.encoder.frontend.chunk_values = chunk_values
        model.zero_grad()
        torch.manual_seed(1)
        out = model(features, lengths, labels, label_lengths)
        loss, _ = model.loss(out, 0.1, 1.0)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        runs.append((out.logits.detach(), out.encoder.hidden[-1].detach(), loss.detach(), grads))
    (logits, hidden, loss, grads), (chunked_logits, chunked_hidden, chunked_loss, chunked_grads) = runs
    assert model.encoder.frontend.chunk_size(features) == 1
    torch.testing.assert_close(chunked_logits, logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked_hidden, hidden, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked_loss, loss, rtol=0, atol=1e-5)
    assert chunked_grads.keys() == grads.keys()
    for name, grad in grads.items():
        assert (chunked_grads[name] - grad).abs().max() <= 1e-4 * grad.abs().max() + 1e-8, name


def test_frontend_chunks_are_sized_by_the_first_convolution_output_and_only_on_cpu():
    frontend = ConvFrontend(build_config().model, feature_dim=80)  # 32 channels
    speech = torch.zeros(16, 450, 80)  # 4.5 s utterances: 1.15 M values each after the first convolution
    assert frontend.chunk_size(speech) == CPU_CHUNK_VALUES // (32 * 450 * 80) == 1
    assert frontend.chunk_size(torch.zeros(16, 150, 40)) == 10  # the synthetic default: two chunks
    assert frontend.chunk_size(torch.zeros(8, 60, 40)) >= 8  # the tests' tiny trials: one
    frontend.chunk_values = None
    assert frontend.chunk_size(speech) == 16

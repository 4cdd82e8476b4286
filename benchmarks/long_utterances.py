"""What a long-utterance trial costs, and what each speed-up buys: `python -m benchmarks.long_utterances`.

The trial: study 1's cell (6 x 64, the paper's recipe, 40-60 labels per utterance, T' ~ 90 encoder frames at
x6, batch 16) on one CPU thread. Everything is timed in this one process and reported as ratios:

* a training step against a float32 matmul peak measured here (achieved fraction of peak);
* the frontend's pooling, placed before the ReLU as `max` over pairs, against the reference nn.MaxPool2d
  after the ReLU (same values, same gradients);
* the detector's gradient maps (frontend once, chunked copies, decoder cut at each chunk's last label)
  against the reference algorithm they replaced (the whole model on U x S replicated copies, one pass):
  time, and peak memory growth, each algorithm in a fresh process;
* the detector's share of trial time at `detector.every` = 50;
* a training step with dropout masks shared over time (`model.dropout_broadcast`, the paper's setting)
  against one with a mask per frame, the two trials' steps interleaved.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.trial import flops_per_step, matmul_peak
from trainers.config import build_config, parse_assignment
from trainers.detector.gradients import gradient_maps
from trainers.train import Trial

STUDY_1 = {
    "data.min_labels": 40,
    "data.max_labels": 60,
    "data.min_silence_frames": 20,
    "data.max_silence_frames": 60,
    "model.layers": 6,
    "model.subsampling": 6,
    "model.ffn_activation": "relu2",
    "model.conv_norm": "batch",
    "model.pad_mode": "unmasked",
    "model.conv_kernel": 32,
    "train.batch_size": 16,
    "train.threads": 1,
}


def seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of `fn` over `repeats` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def reference_gradient_maps(model: torch.nn.Module, batch) -> torch.Tensor:
    """The algorithm the detector used before: the whole model (frontend included) on U x S copies, every
    copy decoding every label, one backward pass for all copies. (L+1, U, S, T') maps."""
    tensors = (batch.features, batch.feature_lengths, batch.labels, batch.label_lengths)
    num_utts, num_labels = batch.labels.shape
    label_lengths = batch.label_lengths
    position = torch.arange(num_labels).repeat(num_utts)
    model.eval()
    with torch.enable_grad():
        out = model(*(x.repeat_interleave(num_labels, 0) for x in tensors))
        copy = torch.arange(num_utts * num_labels)
        log_prob = out.logits[copy, position].float().log_softmax(-1)
        log_prob = log_prob.gather(-1, out.targets[copy, position][:, None]).squeeze(-1)
        real = position < label_lengths.repeat_interleave(num_labels, 0)
        grads = torch.autograd.grad((log_prob * real).sum(), out.encoder.hidden)
    frames = out.encoder.mask.view(num_utts, num_labels, -1)[:, :1]
    return torch.stack([g.norm(dim=-1).view(num_utts, num_labels, -1) for g in grads]) * frames


def _peak_memory_child(overrides: dict, algorithm: str, queue) -> None:
    """In a fresh process: how far resident memory rises above its level before one algorithm computes the
    maps (sampled every 2 ms by a thread)."""
    import threading

    import psutil

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        trial = Trial(build_config(STUDY_1, overrides), Path(tmp), log=lambda _: None)
        probe = _probe(trial)
        process, peak, done = psutil.Process(), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                done.wait(0.002)

        before = process.memory_info().rss
        sampler = threading.Thread(target=sample)
        sampler.start()
        if algorithm == "ours":
            gradient_maps(trial.model, probe)
        else:
            reference_gradient_maps(trial.model, probe)
        done.set()
        sampler.join()
        queue.put((peak[0] - before) / 2**20)  # MiB


def peak_memory(overrides: dict, algorithm: str) -> float:
    """MiB of peak-memory growth of one gradient-map algorithm, measured in a fresh process."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_peak_memory_child, args=(overrides, algorithm, queue))
    child.start()
    grown = queue.get()
    child.join()
    return grown


def _probe(trial: Trial):
    """The first `gradient_utterances` held-out utterances, at their own padding."""
    probe = trial.heldout[0].take(trial.cfg.detector.gradient_utterances)
    return replace(probe, features=probe.features[:, : int(probe.feature_lengths.max())])


def frontend_pooling(trial: Trial, batch) -> tuple[float, float]:
    """Seconds of the first frontend convolution, pooling and ReLU, forward and backward: ours, reference."""
    conv = trial.model.encoder.frontend.convs[0]
    x = batch.features.unsqueeze(1)

    def ours():
        y = conv(x)
        torch.relu(y[..., : 2 * (y.shape[-1] // 2)].unflatten(-1, (-1, 2)).max(-1).values).sum().backward()

    def reference():
        F.max_pool2d(torch.relu(conv(x)), (1, 2)).sum().backward()

    return seconds(ours), seconds(reference)


def broadcast_dropout_steps(overrides: dict) -> tuple[float, float]:
    """Best seconds per training step with a dropout mask per frame, and with masks shared over time; the two
    trials' steps are timed in turns so that both see the same machine."""
    trials = []
    with tempfile.TemporaryDirectory() as tmp:
        for shared in (False, True):
            cfg = build_config(STUDY_1, {**overrides, "model.dropout_broadcast": shared})
            trials.append(Trial(cfg, Path(tmp) / str(shared), log=lambda _: None))
        best = [float("inf"), float("inf")]
        for _ in range(3):
            for i, trial in enumerate(trials):
                best[i] = min(best[i], seconds(trial.train_step, repeats=1))
    return best[0], best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = build_config(STUDY_1, dict(parse_assignment(s) for s in args.set))
    peak = matmul_peak()
    with tempfile.TemporaryDirectory() as tmp:
        trial = Trial(config, Path(tmp), log=lambda _: None)
        batch = trial.stream.batch(0)
        frames = int(trial.model.encoder.embed(batch.features, batch.feature_lengths)[1].float().mean())
        flops = flops_per_step(trial)
        step = seconds(trial.train_step)
        ours_pool, reference_pool = frontend_pooling(trial, batch)
        probe = _probe(trial)
        trial.model.set_step(None)  # both algorithms read the trained model: every schedule at its end
        ours_maps = seconds(lambda: gradient_maps(trial.model, probe), repeats=1)
        reference_maps = seconds(lambda: reference_gradient_maps(trial.model, probe), repeats=1)
        difference = (
            (gradient_maps(trial.model, probe) - reference_gradient_maps(trial.model, probe)).abs().max()
        )
        evaluation = seconds(trial.evaluate, repeats=1)
    overrides = dict(parse_assignment(s) for s in args.set)
    per_frame, shared = broadcast_dropout_steps(overrides)
    ours_memory, reference_memory = peak_memory(overrides, "ours"), peak_memory(overrides, "reference")
    labels = float(probe.label_lengths.float().mean())
    every = 50
    rows = [
        (
            "config",
            f"{config.model.layers} x {config.model.d_model}, batch {config.train.batch_size}, T' ~ {frames}",
        ),
        ("matmul peak (1 thread)", f"{peak / 1e9:.1f} GFLOP/s"),
        ("training step", f"{step:.3f} s, {flops / 1e9:.1f} GFLOP, {flops / step / peak:.1%} of peak"),
        ("pooling before the ReLU", f"{reference_pool / ours_pool:.2f}x faster than MaxPool2d after it"),
        (
            f"gradient maps ({len(probe.labels)} utt., {labels:.0f} labels)",
            f"{ours_maps:.2f} s vs {reference_maps:.2f} s: {reference_maps / ours_maps:.1f}x faster "
            f"(max |difference| {float(difference):.1e})",
        ),
        (
            "gradient maps, peak memory",
            f"{ours_memory:.0f} vs {reference_memory:.0f} MiB: {reference_memory / ours_memory:.1f}x less",
        ),
        ("detector evaluation", f"{evaluation:.2f} s = {evaluation / step:.1f} training steps"),
        ("dropout shared over time", f"{shared:.3f} vs {per_frame:.3f} s a step: {per_frame / shared:.2f}x"),
        (f"detector share at every={every}", f"{evaluation / (every * step + evaluation):.1%}"),
    ]
    for name, value in rows:
        print(f"{name:<38}{value}")


if __name__ == "__main__":
    main()

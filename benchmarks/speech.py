"""Benchmark speech in: `python -m benchmarks.speech [--utterances 200] [--steps 16] [--corpus DIR]`.

Renders a spoken corpus with espeak-ng into a temporary folder (or reads `--corpus`, one that
`trainers.speech.speak` wrote), then measures, all in this one run on one thread:

* feature extraction throughput, in seconds of audio per CPU-second: the log-mel alone, and decoding plus
  log-mel (what building the cache costs);
* reading a LibriSpeech-layout subset: our checking scan vs lhotse's recipe (what the lhotse choice costs);
* trial start (corpus, held-out set, model) with an empty feature cache vs a filled one;
* the training step of Study 7 (`search_spaces/studies/speech_rendered.yaml`: its model, batch and recipe on
  this corpus) split into its phases (`benchmarks.profile`), side by side with the synthetic default's step,
  the two trials taking turns; and the detector's share of a trial at the study's evaluation interval;
* the speed-up that profile led to: the study's step with the frontend's convolutions by chunks of
  utterances (`trainers.model.frontend.CPU_CHUNK_VALUES`, the default on CPU) against the whole batch at
  once, taking turns on the same batches with the same dropout draws (so their losses must agree).

Ratios, not absolute times, are what to compare across machines.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import soundfile
import torch
import yaml

from benchmarks.profile import PHASES, StepTimeline, evaluation_seconds, side_by_side
from trainers.config import TrialConfig, build_config
from trainers.speech.features import log_mel
from trainers.speech.sources import quiet_lhotse, scan_librispeech
from trainers.speech.speak import RenderConfig, render_corpus
from trainers.train import Trial

STUDY = Path(__file__).resolve().parent.parent / "search_spaces" / "studies" / "speech_rendered.yaml"


def cpu_seconds(function, repeats: int = 1) -> float:
    started = time.process_time()
    for _ in range(repeats):
        function()
    return (time.process_time() - started) / repeats


def study_config(corpus: Path, cache: Path) -> TrialConfig:
    """Study 7's trial on `corpus`: the study file's base settings, the corpus and cache swapped in."""
    base = yaml.safe_load(STUDY.read_text())["base"]
    return build_config(
        base, {"speech.root": str(corpus), "speech.cache_dir": str(cache), "train.threads": 1}
    )


def print_profile(speech: TrialConfig, profile: dict[str, dict], detector: dict[str, float]) -> None:
    """The phase table: ms per step on speech and on synthetic data, their ratio, each phase's share."""
    model = speech.model
    print(
        f"\nstep profile: Study 7 ({model.layers} x {model.d_model}, x{model.subsampling}, batch "
        f"{speech.train.batch_size}) on speech vs the synthetic default, CPU-ms per step (1 thread)"
    )
    print(f"{'phase':22s} {'speech':>9s} {'synthetic':>10s} {'ratio':>7s} {'speech share':>13s}")
    total = {name: sum(phases.values()) for name, phases in profile.items()}
    rows = [(phase, profile["speech"][phase], profile["synthetic"][phase]) for phase in PHASES]
    rows.append(("step", total["speech"], total["synthetic"]))
    for phase, on_speech, synthetic in rows:
        print(
            f"{phase:22s} {1000 * on_speech:9.1f} {1000 * synthetic:10.1f} {on_speech / synthetic:7.2f} "
            f"{on_speech / total['speech']:13.1%}"
        )
    every = speech.detector.every
    share = {name: detector[name] / (detector[name] + every * total[name]) for name in detector}
    print(
        f"{'detector (1 eval)':22s} {1000 * detector['speech']:9.1f} {1000 * detector['synthetic']:10.1f} "
        f"{detector['speech'] / detector['synthetic']:7.2f}"
    )
    print(
        f"detector share of trial time at one evaluation every {every} steps: speech {share['speech']:.1%}, "
        f"synthetic {share['synthetic']:.1%}"
    )


def print_chunking(profile: dict[str, dict], timelines: dict[str, StepTimeline]) -> None:
    """The frontend by chunks against the whole batch: its phases, the step, the speed-up, the losses."""
    whole, chunked = profile["whole batch"], profile["by chunks"]
    print("\nStudy 7's step, the frontend's convolutions by chunks of utterances vs the whole batch, CPU-ms")
    for phase in ("frontend", "backward frontend"):
        print(f"{phase:22s} {1000 * whole[phase]:9.1f} {1000 * chunked[phase]:10.1f}")
    step = {name: sum(phases.values()) for name, phases in profile.items()}
    losses = [timeline.losses for timeline in timelines.values()]
    agree = max(abs(a - b) for a, b in zip(*losses, strict=True))
    print(
        f"{'step':22s} {1000 * step['whole batch']:9.1f} {1000 * step['by chunks']:10.1f}   speed-up "
        f"{step['whole batch'] / step['by chunks']:.2f}x (training losses agree to {agree:.1e})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=200, help="rendered training utterances")
    parser.add_argument("--steps", type=int, default=16, help="timed training steps per trial")
    parser.add_argument("--corpus", type=Path, help="a rendered corpus to read instead of rendering one")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.corpus or Path(tmp) / "corpus"
        if args.corpus is None:
            render_corpus(
                root, RenderConfig(utterances=args.utterances, dev_utterances=10), log=lambda _: None
            )
        files = sorted((root / "train").rglob("*.flac"))
        waveforms = [soundfile.read(path, dtype="float32")[0] for path in files]
        audio_seconds = sum(len(w) for w in waveforms) / 16000

        mel_only = cpu_seconds(lambda: [log_mel(w) for w in waveforms], repeats=3)
        decode_and_mel = cpu_seconds(lambda: [log_mel(soundfile.read(p, dtype="float32")[0]) for p in files])

        from lhotse.recipes import prepare_librispeech

        scan = cpu_seconds(lambda: scan_librispeech(root, "train"))
        with quiet_lhotse():
            recipe = cpu_seconds(lambda: prepare_librispeech(root, dataset_parts=["train"]))

        speech = study_config(root, Path(tmp) / "cache")
        started = time.perf_counter()
        Trial(speech, Path(tmp) / "t1", log=lambda _: None)
        uncached = time.perf_counter() - started
        started = time.perf_counter()
        Trial(speech, Path(tmp) / "t2", log=lambda _: None)
        cached = time.perf_counter() - started

        trials = {
            "speech": Trial(speech, Path(tmp) / "speech", log=lambda _: None),
            "synthetic": Trial(
                build_config({"train.threads": 1}), Path(tmp) / "synthetic", log=lambda _: None
            ),
        }
        profile = side_by_side({name: StepTimeline(trial) for name, trial in trials.items()}, args.steps)
        detector = {name: evaluation_seconds(trial) for name, trial in trials.items()}

        trials = {name: Trial(speech, Path(tmp) / name, log=lambda _: None) for name in ("whole", "chunks")}
        trials["whole"].model.encoder.frontend.chunk_values = None
        chunking = {"whole batch": StepTimeline(trials["whole"]), "by chunks": StepTimeline(trials["chunks"])}
        by_chunks = side_by_side(chunking, args.steps, same_draws=True)

    print(
        f"corpus                          {len(files)} utterances, {audio_seconds:.0f} s of audio, 1 thread"
    )
    print(f"log-mel                         {audio_seconds / mel_only:.0f} s of audio per CPU-second")
    print(f"decode + log-mel                {audio_seconds / decode_and_mel:.0f} s of audio per CPU-second")
    print(
        f"reading the subset              scan {1000 * scan / len(files):.2f} ms/utt, lhotse recipe "
        f"{1000 * recipe / len(files):.2f} ms/utt (ratio {recipe / scan:.2f})"
    )
    print(
        f"trial start                     uncached {uncached:.2f} s, cached {cached:.3f} s "
        f"(uncached / cached = {uncached / cached:.1f})"
    )
    print_profile(speech, profile, detector)
    print_chunking(by_chunks, chunking)


if __name__ == "__main__":
    main()

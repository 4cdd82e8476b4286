"""Benchmark speech in: `python -m benchmarks.speech [--utterances 100] [--steps 30]`.

Renders a spoken corpus with espeak-ng into a temporary folder, then measures, all in this one run:

* feature extraction throughput, in seconds of audio per CPU-second: the log-mel alone, and decoding plus
  log-mel (what building the cache costs);
* reading a LibriSpeech-layout subset: our checking scan vs lhotse's recipe (what the lhotse choice costs);
* trial start (corpus, held-out set, model) with an empty feature cache vs a filled one;
* training steps/s of the default 6 x 64 model on speech vs on the synthetic default corpus.

Ratios, not absolute times, are what to compare across machines.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import soundfile
import torch

from trainers.config import build_config
from trainers.speech.features import log_mel
from trainers.speech.sources import quiet_lhotse, scan_librispeech
from trainers.speech.speak import RenderConfig, render_corpus
from trainers.train import Trial


def cpu_seconds(function, repeats: int = 1) -> float:
    started = time.process_time()
    for _ in range(repeats):
        function()
    return (time.process_time() - started) / repeats


def steps_per_second(config, out: Path, steps: int) -> float:
    trial = Trial(config, out, log=lambda _: None)
    trial.train_step()  # warm-up (first-call allocations)
    started = time.perf_counter()
    for _ in range(steps):
        trial.train_step()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=100, help="rendered training utterances")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per data source")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        render_corpus(root, RenderConfig(utterances=args.utterances, dev_utterances=10), log=lambda _: None)
        files = sorted((root / "train").rglob("*.flac"))
        waveforms = [soundfile.read(path, dtype="float32")[0] for path in files]
        audio_seconds = sum(len(w) for w in waveforms) / 16000

        mel_only = cpu_seconds(lambda: [log_mel(w) for w in waveforms], repeats=3)
        decode_and_mel = cpu_seconds(lambda: [log_mel(soundfile.read(p, dtype="float32")[0]) for p in files])

        from lhotse.recipes import prepare_librispeech

        scan = cpu_seconds(lambda: scan_librispeech(root, "train"))
        with quiet_lhotse():
            recipe = cpu_seconds(lambda: prepare_librispeech(root, dataset_parts=["train"]))

        speech = {
            "data.source": "audio",
            "speech.root": str(root),
            "speech.subsets": ["train"],
            "speech.heldout_subset": "dev",
            "speech.cache_dir": str(Path(tmp) / "cache"),
            "train.threads": 1,
        }
        started = time.perf_counter()
        Trial(build_config(speech), Path(tmp) / "t1", log=lambda _: None)
        uncached = time.perf_counter() - started
        started = time.perf_counter()
        Trial(build_config(speech), Path(tmp) / "t2", log=lambda _: None)
        cached = time.perf_counter() - started

        on_speech = steps_per_second(build_config(speech), Path(tmp) / "s", args.steps)
        synthetic = steps_per_second(build_config({"train.threads": 1}), Path(tmp) / "y", args.steps)
        frames = sum(len(log_mel(w)) for w in waveforms) / len(waveforms)

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
    print(
        f"training steps/s (6 x 64)       speech {on_speech:.2f} ({frames:.0f} frames/utt), synthetic "
        f"{synthetic:.2f} (speech / synthetic = {on_speech / synthetic:.2f})"
    )


if __name__ == "__main__":
    main()

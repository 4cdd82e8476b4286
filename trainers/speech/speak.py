"""A spoken corpus made here: espeak-ng reads random word sequences, written in the LibriSpeech layout.

    python -m trainers.speech.speak [--corpus quick|study|long] [--out DIR] [--utterances N] [...]

`--corpus` names one of `CORPORA`: `quick` (the default, into data/spoken), the speech quick start's;
`study`, study 7's; `long`, utterances of 10-15 s (the paper's lengths). The other options change single
settings of it.

No speech corpus can be downloaded in this environment, but Debian's `espeak-ng` can speak. Each utterance is
rendered word by word: every word is synthesised on its own by one of K speakers (an espeak-ng voice with
its own variant, speed and pitch), trimmed to where it is audible, and the words are joined with random
pauses, between random leading and trailing silence. Background noise (white plus brown, at a random
signal-to-noise ratio) covers the whole utterance, so pauses are quiet but never digital silence, and the
level of every utterance differs (peak normalisation in the features undoes it). Because the words are placed
by this program, their spans are exact to the sample.

Output, readable as a LibriSpeech corpus (`speech.root: DIR`, subsets `train` and `dev`):

    DIR/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac     16 kHz, 16-bit FLAC
    DIR/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt      "<utt-id> WORD WORD ..."
    DIR/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.alignment.txt  word spans, LibriSpeech-Alignments
                                                                        format (lhotse reads it; "" = pause)

Rendering is deterministic for a given seed and espeak-ng version. Duration bounds (`min_seconds`,
`max_seconds`) draw an utterance again, speaker and words, until it fits; the word count is drawn first, so a
long corpus's counts are those that fit (15-35 words drawn into 10-15 s keep 15-28).
"""

from __future__ import annotations

import argparse
import io
import math
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import lfilter, resample_poly

from trainers.speech.features import SAMPLE_RATE

ESPEAK = "espeak-ng"
ESPEAK_RATE = 22_050  # espeak-ng's output rate

# Common, mostly concrete English words; an utterance is a random sequence of them.
WORDS = """
the a one two three four five six seven eight nine ten red green blue black white yellow brown orange
purple grey cat dog horse cow bird fish mouse lion tiger bear wolf fox rabbit sheep goat duck house
garden window door table chair bed kitchen river mountain forest field road bridge city village
station market school church castle tower island ocean lake water fire stone wood paper glass silver
gold iron bread apple butter cheese milk sugar salt pepper coffee tea soup rice cake morning evening
night winter summer spring autumn monday friday sunday today tomorrow yesterday always never often
quickly slowly quietly loudly big small tall short old young new happy sad warm cold bright dark
heavy light empty full open closed early late near far left right north south east west
run walk jump swim climb read write sing dance sleep eat drink cook build paint carry throw catch
find lose give take bring send hold push pull turn stop start begin finish remember forget
""".split()


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: espeak-ng voice (+variant), speed in words per minute, pitch 0..99."""

    voice: str
    speed: int
    pitch: int


VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan")
VARIANTS = ("m1", "m3", "f1", "f3", "m7", "f4")


def make_speakers(count: int, rng: np.random.Generator) -> list[Speaker]:
    """`count` distinct speakers: voices and variants cycled, speed 130-200 wpm, pitch 25-75."""
    return [
        Speaker(
            f"{VOICES[i % len(VOICES)]}+{VARIANTS[(i // len(VOICES) + i) % len(VARIANTS)]}",
            int(rng.integers(130, 201)),
            int(rng.integers(25, 76)),
        )
        for i in range(count)
    ]


@dataclass
class RenderConfig:
    """What `render_corpus` makes. Durations in seconds."""

    utterances: int = 200
    dev_utterances: int = 40
    speakers: int = 8
    vocabulary: int = len(WORDS)  # how many of WORDS the utterances use (the first ones)
    min_words: int = 3
    max_words: int = 8
    min_pause: float = 0.05
    max_pause: float = 0.40
    min_edge_silence: float = 0.10
    max_edge_silence: float = 0.50
    min_snr_db: float = 15.0
    max_snr_db: float = 35.0
    # Duration bounds: an utterance rendered outside them is drawn again (speaker and words); the default
    # bounds never reject, so a corpus without them is what its seed always gave.
    min_seconds: float = 0.0
    max_seconds: float = math.inf
    seed: int = 0
    words: list[str] = field(default_factory=lambda: list(WORDS))


# The corpora this project uses, by name (`--corpus`); their numbers are discussed where they are used.
CORPORA = {
    # README's speech quick start (search_spaces/speech_quick.yaml): 10 word types, 4 speakers, 2-4 words
    # with short pauses and edges (0.7-2.5 s, T' ~ 11-42 at x6), which a small model learns to align in a few
    # hundred steps; with study 7's pauses (0.05-0.4 s, edges 0.1-0.5 s) the same model still attended
    # flatly at step 800 (measured: 3 of 3 runs undecided against 2 of 3 decided at step 350 here).
    "quick": RenderConfig(
        utterances=400,
        dev_utterances=40,
        speakers=4,
        vocabulary=10,
        min_words=2,
        max_words=4,
        min_pause=0.02,
        max_pause=0.08,
        min_edge_silence=0.05,
        max_edge_silence=0.1,
    ),
    # study 7 (search_spaces/studies/speech_rendered*.yaml): 2.2 h, 1.5-7.2 s
    "study": RenderConfig(utterances=2000, dev_utterances=100, speakers=8, min_words=3, max_words=8),
    # the paper's lengths (T' ~ 170-250 at x6; search_spaces/studies/speech_long*.yaml)
    "long": RenderConfig(
        utterances=1000,
        dev_utterances=50,
        speakers=8,
        min_words=15,
        max_words=35,
        min_seconds=10,
        max_seconds=15,
    ),
}


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def synthesise(word: str, speaker: Speaker) -> np.ndarray:
    """One word from espeak-ng, resampled to 16 kHz and trimmed to its audible part: (N,) float32."""
    command = [
        ESPEAK,
        "-v",
        speaker.voice,
        "-s",
        str(speaker.speed),
        "-p",
        str(speaker.pitch),
        "--stdout",
        word,
    ]
    wav = subprocess.run(command, check=True, capture_output=True).stdout
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz audio, expected {ESPEAK_RATE}")
    audio = resample_poly(audio, 320, 441).astype(np.float32)  # 22050 * 320 / 441 = 16000
    return trim(audio)


def trim(audio: np.ndarray, frame: int = 80, threshold: float = 0.02) -> np.ndarray:
    """Cut leading and trailing frames (5 ms) whose RMS is below `threshold` of the loudest frame's."""
    frames = len(audio) // frame
    rms = np.sqrt(np.mean(audio[: frames * frame].reshape(frames, frame) ** 2, axis=1))
    active = np.flatnonzero(rms >= threshold * rms.max())
    if not len(active):
        raise RuntimeError("espeak-ng produced silence")
    return audio[active[0] * frame : (active[-1] + 1) * frame]


def background_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise: white plus brown (integrated white, leaky so it stays bounded), random mix."""
    white = rng.normal(size=length)
    brown = lfilter([1.0], [1.0, -0.995], rng.normal(size=length))
    brown /= np.sqrt(np.mean(brown**2)) + 1e-12
    mix = rng.uniform(0.0, 1.0)
    noise = np.sqrt(mix) * white + np.sqrt(1 - mix) * brown
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


@dataclass
class Rendered:
    """One utterance: audio (N,) float32 at 16 kHz, its words and their [start, end) spans in seconds."""

    audio: np.ndarray
    words: list[str]
    spans: list[tuple[float, float]]


def assemble(
    words: list[str], clips: list[np.ndarray], cfg: RenderConfig, rng: np.random.Generator
) -> Rendered:
    """Join word clips with random pauses and edge silences, add noise at a random SNR, set a random level."""
    seconds = lambda low, high: int(round(rng.uniform(low, high) * SAMPLE_RATE))
    gaps = [seconds(cfg.min_edge_silence, cfg.max_edge_silence)]
    gaps += [seconds(cfg.min_pause, cfg.max_pause) for _ in words[1:]]
    gaps.append(seconds(cfg.min_edge_silence, cfg.max_edge_silence))
    gains = 10 ** (rng.uniform(-3, 3, size=len(clips)) / 20)  # +-3 dB per word
    length = sum(gaps) + sum(len(c) for c in clips)
    speech = np.zeros(length, dtype=np.float32)
    spans, position = [], gaps[0]
    for clip, gain, gap in zip(clips, gains, gaps[1:], strict=True):
        speech[position : position + len(clip)] = gain * clip
        spans.append((position / SAMPLE_RATE, (position + len(clip)) / SAMPLE_RATE))
        position += len(clip) + gap
    speech_rms = np.sqrt(
        np.mean(np.concatenate([gain * c for gain, c in zip(gains, clips, strict=True)]) ** 2)
    )
    snr_db = rng.uniform(cfg.min_snr_db, cfg.max_snr_db)
    audio = speech + background_noise(length, rng) * speech_rms / 10 ** (snr_db / 20)
    audio *= rng.uniform(0.3, 0.9) / np.max(np.abs(audio))  # a random recording level, never clipping
    return Rendered(audio.astype(np.float32), words, spans)


def _alignment_line(utterance_id: str, rendered: Rendered) -> str:
    """LibriSpeech-Alignments format: ',W1,,W2,' and the end time of every segment ("" = pause)."""
    symbols, ends = [""], [rendered.spans[0][0]]
    for i, (word, (_, end)) in enumerate(zip(rendered.words, rendered.spans, strict=True)):
        symbols.append(word)
        ends.append(end)
        following = (
            rendered.spans[i + 1][0] if i + 1 < len(rendered.spans) else len(rendered.audio) / SAMPLE_RATE
        )
        symbols.append("")
        ends.append(following)
    times = ",".join(f"{t:.5f}" for t in ends)
    return f'{utterance_id} "{",".join(symbols)}" "{times}"'


def render_corpus(out: Path, cfg: RenderConfig, log=print) -> dict[str, int]:
    """Render the `train` and `dev` subsets under `out`; returns utterances per subset."""
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (`make espeak`, or Debian: apt-get install espeak-ng)")
    if not 1 <= cfg.min_words <= cfg.max_words:
        raise ValueError("need 1 <= min_words <= max_words")
    if not 0 <= cfg.min_seconds < cfg.max_seconds:
        raise ValueError("need 0 <= min_seconds < max_seconds")
    vocabulary = cfg.words[: cfg.vocabulary]
    rng = np.random.default_rng(cfg.seed)
    speakers = make_speakers(cfg.speakers, rng)

    def draw() -> tuple[int, list[str]]:
        """A speaker index and the utterance's words."""
        n = int(rng.integers(cfg.min_words, cfg.max_words + 1))
        return int(rng.integers(len(speakers))), [str(w) for w in rng.choice(vocabulary, n)]

    plan = [  # (subset, speaker index, words)
        (subset, *draw())
        for subset, count in (("train", cfg.utterances), ("dev", cfg.dev_utterances))
        for _ in range(count)
    ]
    bounded = cfg.min_seconds > 0 or math.isfinite(cfg.max_seconds)
    if bounded:  # a redrawn utterance may use any word of any speaker
        needed = [(s, str(w)) for s in range(len(speakers)) for w in vocabulary]
    else:
        needed = sorted({(s, w) for _, s, words in plan for w in words})
    with ThreadPoolExecutor(max_workers=4) as pool:  # espeak-ng runs as a subprocess: threads suffice
        clips = dict(
            zip(needed, pool.map(lambda key: synthesise(key[1], speakers[key[0]]), needed), strict=True)
        )
    log(f"synthesised {len(needed)} words ({len(vocabulary)} word types x {len(speakers)} speakers)")

    counts: dict[str, int] = {}
    chapters: dict[tuple[str, int], list[tuple[str, Rendered]]] = {}
    for subset, s, words in plan:
        rendered = assemble([w.upper() for w in words], [clips[(s, w)] for w in words], cfg, rng)
        for _ in range(1000):
            if cfg.min_seconds <= len(rendered.audio) / SAMPLE_RATE <= cfg.max_seconds:
                break
            s, words = draw()
            rendered = assemble([w.upper() for w in words], [clips[(s, w)] for w in words], cfg, rng)
        else:
            raise ValueError(
                f"no utterance of {cfg.min_words}-{cfg.max_words} words fits "
                f"{cfg.min_seconds}-{cfg.max_seconds} s after 1000 draws"
            )
        chapter = chapters.setdefault((subset, s), [])
        speaker_id, chapter_id = 100 + s, 1 if subset == "train" else 2
        chapter.append((f"{speaker_id}-{chapter_id}-{len(chapter):04d}", rendered))
        counts[subset] = counts.get(subset, 0) + 1
    for (subset, s), utterances in chapters.items():
        speaker_id, chapter_id = 100 + s, 1 if subset == "train" else 2
        folder = out / subset / str(speaker_id) / str(chapter_id)
        folder.mkdir(parents=True, exist_ok=True)
        for utterance_id, rendered in utterances:
            soundfile.write(folder / f"{utterance_id}.flac", rendered.audio, SAMPLE_RATE, subtype="PCM_16")
        stem = f"{speaker_id}-{chapter_id}"
        (folder / f"{stem}.trans.txt").write_text(
            "".join(f"{u} {' '.join(r.words)}\n" for u, r in utterances)
        )
        (folder / f"{stem}.alignment.txt").write_text(
            "".join(_alignment_line(u, r) + "\n" for u, r in utterances)
        )
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainers.speech.speak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--corpus",
        choices=sorted(CORPORA),
        default="quick",
        help="which corpus (default quick); the options below change single settings of it",
    )
    parser.add_argument(
        "--out", help="corpus folder to create (must not hold train/ or dev/; default data/spoken[-CORPUS])"
    )
    parser.add_argument("--utterances", type=int, help="train utterances")
    parser.add_argument("--dev-utterances", type=int, help="dev utterances")
    parser.add_argument("--speakers", type=int)
    parser.add_argument("--vocabulary", type=int, help=f"word types, <= {len(WORDS)}")
    parser.add_argument("--min-words", type=int)
    parser.add_argument("--max-words", type=int)
    parser.add_argument("--min-seconds", type=float, help="shortest utterance (longer ones are redrawn)")
    parser.add_argument("--max-seconds", type=float, help="longest utterance")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    out = Path(args.out or ("data/spoken" if args.corpus == "quick" else f"data/spoken-{args.corpus}"))
    if any((out / subset).exists() for subset in ("train", "dev")):
        print(f"error: {out} already holds a rendered corpus (train/ or dev/)", file=sys.stderr)
        return 2
    chosen = {
        name: value
        for name in ("utterances", "dev_utterances", "speakers", "vocabulary", "min_words", "max_words")
        + ("min_seconds", "max_seconds", "seed")
        if (value := getattr(args, name)) is not None
    }
    if "vocabulary" in chosen:
        chosen["vocabulary"] = min(chosen["vocabulary"], len(WORDS))
    cfg = replace(CORPORA[args.corpus], **chosen)
    try:
        counts = render_corpus(out, cfg)
    except (RuntimeError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}: " + ", ".join(f"{subset} {n} utterances" for subset, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reading a speech corpus, and checking it first: LibriSpeech layout or lhotse manifests into lhotse cuts,
and word alignments (LibriSpeech-Alignments, lhotse items, CTM, TextGrid) into frame spans.

Every bad input is a `CorpusError` naming its file, raised before anything is written: lhotse's LibriSpeech
recipe alone would log a warning and *skip* a transcript line whose audio is missing, and accept any sample
rate, so `scan_librispeech` and `check_cuts` look at the corpus before lhotse does. Used by
`trainers.speech.corpus`, which caches the features and serves the corpus.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile

from trainers.corpus import CorpusError, Span
from trainers.speech.features import PAPER, LogMelSpec
from trainers.speech.tokens import normalise

SILENCE = {"", "<eps>", "sil", "sp", "spn", "<sil>", "!sil", "<s>", "</s>", "<blank>"}  # lower-cased


# ----------------------------------------------------------------------------------------------------------
# Checking a corpus: every bad input is a CorpusError naming its file


def check_audio(path: Path, spec: LogMelSpec = PAPER) -> soundfile._SoundFileInfo:
    """The header of one audio file, or a CorpusError: unreadable, empty, too short, not mono, not 16 kHz."""
    if path.stat().st_size == 0:
        raise CorpusError(path, "zero-length audio file (0 bytes)")
    try:
        info = soundfile.info(str(path))
    except Exception as exc:  # libsndfile's error says what it could not parse
        raise CorpusError(path, f"unreadable audio ({exc})") from None
    if info.frames == 0:
        raise CorpusError(path, "zero-length audio (0 samples)")
    if info.samplerate != spec.sample_rate:
        raise CorpusError(
            path,
            f"sample rate {info.samplerate} Hz; only {spec.sample_rate} Hz is accepted (the paper's features "
            f"are defined at 16 kHz; audio is not resampled): convert it, e.g. `sox IN -r 16000 OUT.flac`",
        )
    if info.channels != 1:
        raise CorpusError(path, f"{info.channels} channels; only mono audio is accepted")
    if spec.num_frames(info.frames) == 0:
        raise CorpusError(path, f"{info.frames} samples: shorter than one {spec.window}-sample window")
    return info


@dataclass
class TranscriptLine:
    utterance_id: str
    text: str
    audio: Path


def scan_librispeech(root: Path, subset: str, spec: LogMelSpec = PAPER) -> list[TranscriptLine]:
    """Every transcript line of ROOT/subset, each with an existing, readable 16 kHz audio file.

    Errors: a missing subset folder, no transcripts, an empty transcript file, a line without text, a line
    whose audio is missing, and every `check_audio` failure."""
    folder = root / subset
    if not root.is_dir():
        raise CorpusError(root, "corpus root does not exist")
    if not folder.is_dir():
        raise CorpusError(folder, f"no subset folder {subset!r} under the corpus root")
    transcripts = sorted(folder.rglob("*.trans.txt"))
    if not transcripts:
        raise CorpusError(folder, "no *.trans.txt transcripts (expected <speaker>/<chapter>/*.trans.txt)")
    lines: list[TranscriptLine] = []
    for transcript in transcripts:
        try:
            text = transcript.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CorpusError(transcript, f"unreadable transcript file ({exc})") from None
        if not text.strip():
            raise CorpusError(transcript, "empty transcript file")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            utterance_id, _, words = line.strip().partition(" ")
            if not words.strip():
                raise CorpusError(f"{transcript}:{number}", f"no transcript text for {utterance_id}")
            audio = transcript.parent / f"{utterance_id}.flac"
            if not audio.is_file():
                raise CorpusError(audio, f"missing audio for line {number} of {transcript}")
            check_audio(audio, spec)
            lines.append(TranscriptLine(utterance_id, words.strip(), audio))
    return lines


def check_cuts(cuts: Any, manifest: Path, spec: LogMelSpec = PAPER) -> None:
    """A lhotse CutSet from a manifest: every cut has a transcript and readable 16 kHz audio."""
    if len(cuts) == 0:
        raise CorpusError(manifest, "the manifest holds no cuts")
    for cut in cuts:
        if not cut.supervisions or not " ".join(s.text or "" for s in cut.supervisions).strip():
            raise CorpusError(manifest, f"cut {cut.id} has no transcript (supervision text)")
        if not cut.has_recording:
            raise CorpusError(manifest, f"cut {cut.id} has no recording")
        for source in cut.recording.sources:
            if source.type == "file":
                path = Path(source.source)
                if not path.is_file():
                    raise CorpusError(path, f"missing audio of cut {cut.id} in {manifest}")
                check_audio(path, spec)
        if cut.sampling_rate != spec.sample_rate:
            raise CorpusError(manifest, f"cut {cut.id}: sample rate {cut.sampling_rate} Hz, need 16000")
        if spec.num_frames(cut.num_samples) == 0:
            raise CorpusError(manifest, f"cut {cut.id} is shorter than one analysis window")


# ----------------------------------------------------------------------------------------------------------
# Reading a corpus into lhotse cuts, and word alignments


@contextlib.contextmanager
def quiet_lhotse():
    """lhotse's recipes log per-subset progress at INFO and draw tqdm bars; a trial's log needs neither."""
    logger = logging.getLogger("lhotse")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            yield
    finally:
        logger.setLevel(level)


def librispeech_cuts(root: Path, subset: str, alignments: Path | None, spec: LogMelSpec = PAPER) -> Any:
    """One LibriSpeech-layout subset as a lhotse CutSet (one cut per utterance, sorted by id)."""
    from lhotse import CutSet
    from lhotse.recipes import prepare_librispeech

    lines = scan_librispeech(root, subset, spec)
    alignments_dir = alignments if alignments is not None and alignments.is_dir() else None
    with quiet_lhotse():
        manifests = prepare_librispeech(root, alignments_dir=alignments_dir, dataset_parts=[subset])
    cuts = CutSet.from_manifests(**manifests[subset]).sort_by_recording_id()
    if len(cuts) != len(lines):  # the scan found every line's audio, so lhotse must have every utterance
        raise CorpusError(
            root / subset, f"lhotse read {len(cuts)} utterances, the transcripts hold {len(lines)}"
        )
    return cuts


def manifest_cuts(path: Path, spec: LogMelSpec = PAPER) -> Any:
    """A user's lhotse CutSet manifest (.jsonl / .jsonl.gz), checked."""
    from lhotse import CutSet, load_manifest

    try:
        manifest = load_manifest(path)
    except Exception as exc:
        raise CorpusError(path, f"not a lhotse manifest ({exc})") from None
    if not isinstance(manifest, CutSet):
        raise CorpusError(
            path,
            f"a {type(manifest).__name__}, not a CutSet: combine recordings and supervisions with "
            "`lhotse cut simple -r RECORDINGS -s SUPERVISIONS cuts.jsonl.gz`",
        )
    cuts = manifest.to_eager().sort_by_recording_id()
    check_cuts(cuts, path, spec)
    return cuts


def textgrid_alignments(folder: Path) -> dict[str, list[Any]]:
    """Word tiers of every *.TextGrid under `folder` (file stem = utterance id) as lhotse AlignmentItems."""
    from lhotse.supervision import AlignmentItem
    from praatio import textgrid

    out: dict[str, list[Any]] = {}
    for path in sorted(folder.rglob("*.TextGrid")):
        try:
            grid = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
        except Exception as exc:
            raise CorpusError(path, f"unreadable TextGrid ({exc})") from None
        names = [n for n in grid.tierNames if n.lower() in ("words", "word")] or grid.tierNames[:1]
        if not names:
            raise CorpusError(path, "no tiers")
        tier = grid.getTier(names[0])
        out[path.stem] = [
            AlignmentItem(symbol=label, start=start, duration=end - start)
            for start, end, label in tier.entries
        ]
    return out


def ctm_alignments(path: Path, cuts: Any) -> dict[str, list[Any]]:
    """Word alignments of a CTM file (lhotse's reader), keyed by supervision id."""
    from lhotse import SupervisionSet

    supervisions = SupervisionSet.from_segments([s for cut in cuts for s in cut.supervisions])
    try:
        aligned = supervisions.with_alignment_from_ctm(path)
    except Exception as exc:
        raise CorpusError(path, f"unreadable CTM file ({exc})") from None
    return {s.id: s.alignment["word"] for s in aligned if s.alignment and "word" in s.alignment}


def external_alignments(path: Path | None, cuts: Any) -> dict[str, list[Any]]:
    """Alignments from `speech.alignments` (CTM file or TextGrid folder); {} if the corpus carries its own."""
    if path is None:
        return {}
    if path.is_file():
        return ctm_alignments(path, cuts)
    if any(path.rglob("*.TextGrid")):
        return textgrid_alignments(path)
    return {}  # a folder of *.alignment.txt: read by the LibriSpeech recipe itself


def aligned_word_spans(
    words: list[str], items: list[Any] | None, offset: float, num_frames: int, spec: LogMelSpec = PAPER
) -> list[Span] | None:
    """One [start, end) input-frame span per transcript word, or None without (matching) alignment.

    items: lhotse AlignmentItems (symbol, start, duration) in seconds from `offset`; silence symbols are
    dropped, and the remaining symbols must be the transcript's words (case-insensitive)."""
    if not items:
        return None
    spoken = [item for item in items if item.symbol.strip().lower() not in SILENCE]
    if [normalise(item.symbol) for item in spoken] != [normalise(w) for w in words]:
        return None
    return [
        spec.seconds_to_frames(item.start - offset, item.start - offset + item.duration, num_frames)
        for item in spoken
    ]

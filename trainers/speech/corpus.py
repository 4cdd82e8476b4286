"""Real speech as a flipsweep corpus: LibriSpeech layout or a lhotse manifest, cached log-mel, BPE labels.

`SpeechCorpus` is a `trainers.data.Corpus` (`data.source: audio`, knobs in the `speech` config section):

1. **Reading** (lhotse). A LibriSpeech-layout folder (`ROOT/<subset>/<speaker>/<chapter>/*.flac` plus
   `<speaker>-<chapter>.trans.txt`) is read with lhotse's LibriSpeech recipe, which also picks up word
   alignments in the LibriSpeech-Alignments format (`<speaker>-<chapter>.alignment.txt`). A user's own data
   comes as a lhotse CutSet manifest, which every lhotse recipe (and `lhotse` itself, from Kaldi data dirs)
   writes. Word alignments may come with the corpus, as lhotse alignment items, or from a CTM file (lhotse's
   reader) or a folder of TextGrids (praatio). Before lhotse sees a corpus, `trainers.speech.sources` checks
   it, because lhotse's recipe logs a warning and *skips* a transcript line whose audio is missing and accepts
   any sample rate: here every bad input is a `CorpusError` naming the file.
2. **Features** (`trainers.speech.features`): the paper's 80-dim log-mel, computed once per corpus subset and
   stored as one (frames, 80) array (`features.npy`, memory-mapped by every trial) plus `index.json`
   (ids, transcripts, frame offsets, word spans). The cache key covers the feature definition, the source
   and a fingerprint of its transcripts/manifest/alignments, so editing the corpus rebuilds it. Builds are
   atomic (a temporary folder renamed into place) and locked, so concurrent trials build a subset once.
3. **Labels** (`trainers.speech.tokens`): BPE (sentencepiece, `speech.vocab_size` pieces, the paper's 1k) or
   characters, learned from the training transcripts (after the duration filter) and cached beside the
   features; label 0 stays EOS/BOS.

Sampling. `sample(rng, size)` draws utterances uniformly with replacement, a pure function of the
generator; length-sorted batches come from `data.bucket_batches` (TrainStream), not from lhotse's
samplers, because a trial must be able to resume at any step with exactly the same batches (a sampler is
a stateful iterator over epochs, a pure function of (seed, step) is not). The held-out set is
`speech.heldout_subset` (or `heldout_manifest`), else a fixed draw of training utterances (the paper
analyses training utterances), the same for every trial with the same `data.seed`.

Ground truth. With alignments, `spans` holds one [start, end) input-frame span per word (the frames whose
centre lies in the word, `LogMelSpec.seconds_to_frames`) and `word_index` maps every label to its word.
Alignment words that do not match the transcript's words leave that utterance without spans (counted in
`summary()`), never with wrong ones. Without alignments `spans` is None: directions still decide the label,
and the time-stamp error is missing.

Sample rate: 16 kHz only. Other rates are refused (with the sox command that converts them), not
resampled, so features always mean the paper's features.

Why lhotse for reading, and our own array for features (measured by `benchmarks/speech.py`): reading
through lhotse costs about as much as a hand-written walker (both are dominated by reading audio headers)
and gives every lhotse recipe's corpora and alignment formats for free; for loading features, one
memory-mapped array starts a cached trial in milliseconds regardless of corpus size, whereas lhotse's
feature storage would add a per-utterance read on every step.

Shapes: T input frames (10 ms), F = 80 mel bands, N labels, W words.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainers.config import SpeechConfig
from trainers.corpus import HELDOUT_STREAM, CorpusError, Span, Utterance
from trainers.speech.features import LOG_FLOOR, PAPER, LogMelSpec, log_mel
from trainers.speech.sources import (
    aligned_word_spans,
    external_alignments,
    librispeech_cuts,
    manifest_cuts,
)
from trainers.speech.tokens import Tokenizer, load_tokenizer, normalise, train_tokenizer

log = logging.getLogger(__name__)

CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------------------
# The feature cache


def cache_root(cfg: SpeechConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flipsweep"


def _fingerprint(paths: list[Path]) -> list[tuple[str, int, int]]:
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]


@dataclass(frozen=True)
class Source:
    """One cached unit: a LibriSpeech subset (root, subset) or a manifest file, with its alignments."""

    root: str = ""
    subset: str = ""
    manifest: str = ""
    alignments: str = ""

    @property
    def name(self) -> str:
        return self.subset if self.root else Path(self.manifest).name.split(".")[0]

    def describe(self) -> str:
        return str(Path(self.root) / self.subset) if self.root else self.manifest

    def key(self, spec: LogMelSpec, dtype: str) -> str:
        """Hash of what the cached features depend on; the fingerprint catches edited transcripts."""
        for path, what in (
            (self.root, "corpus root"),
            (self.manifest, "manifest"),
            (self.alignments, "alignments"),
        ):
            if path and not Path(path).exists():
                raise CorpusError(path, f"{what} does not exist")
        if self.root:
            folder = Path(self.root) / self.subset
            if not folder.is_dir():
                raise CorpusError(folder, f"no subset folder {self.subset!r} under the corpus root")
            files = sorted(folder.rglob("*.trans.txt")) + sorted(folder.rglob("*.alignment.txt"))
        else:
            files = [Path(self.manifest)]
        if self.alignments:
            path = Path(self.alignments)
            files += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        text = json.dumps(
            [CACHE_VERSION, asdict(self), asdict(spec), dtype, _fingerprint(files)], sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class CachedSubset:
    """Features and metadata of one cached source. Utterance u has frames offsets[u]:offsets[u + 1]."""

    ids: list[str]
    texts: list[str]
    durations: np.ndarray  # (U,) seconds
    offsets: np.ndarray  # (U + 1,) int64
    spans: list[list[Span] | None]  # per utterance: word spans in input frames, or None
    unmatched_alignments: int  # utterances whose alignment words did not match the transcript
    features: np.ndarray  # (sum T, F), memory-mapped

    def __len__(self) -> int:
        return len(self.ids)


def read_source(source: Source, spec: LogMelSpec = PAPER) -> tuple[Any, dict[str, list[Any]]]:
    """Check and read one source (writes nothing): its lhotse cuts and any external word alignments."""
    alignments = Path(source.alignments) if source.alignments else None
    if source.root:
        cuts = librispeech_cuts(Path(source.root), source.subset, alignments, spec)
    else:
        cuts = manifest_cuts(Path(source.manifest), spec)
    return cuts, external_alignments(alignments, cuts)


def _build(
    source: Source, cuts: Any, extra: dict[str, list[Any]], target: Path, spec: LogMelSpec, dtype: str
):
    """Decode and featurise checked cuts into `target`, atomically (a temporary folder renamed into place)."""
    lengths = [spec.num_frames(cut.num_samples) for cut in cuts]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        features = np.lib.format.open_memmap(
            tmp / "features.npy", mode="w+", dtype=dtype, shape=(int(offsets[-1]), spec.mel_bands)
        )
        ids, texts, durations, spans, unmatched = [], [], [], [], 0
        for cut, start, end in zip(cuts, offsets[:-1], offsets[1:], strict=True):
            path = cut.recording.sources[0].source
            try:
                audio = cut.load_audio()  # (channels, N) float32
            except Exception as exc:
                raise CorpusError(path, f"unreadable audio ({exc})") from None
            mel = log_mel(audio[0], spec)
            if len(mel) != end - start:
                raise CorpusError(
                    path, f"decoded {audio.shape[1]} samples, the header says {cut.num_samples}"
                )
            features[start:end] = mel
            supervision = cut.supervisions[0]
            text = normalise(" ".join(s.text for s in cut.supervisions))
            items = extra.get(supervision.id) or extra.get(cut.recording_id)
            items = items or (supervision.alignment or {}).get("word")
            utterance_spans = aligned_word_spans(text.split(), items, cut.start, end - start, spec)
            unmatched += items is not None and utterance_spans is None
            ids.append(supervision.id)
            texts.append(text)
            durations.append(cut.duration)
            spans.append(utterance_spans)
        features.flush()
        del features
        index = {
            "version": CACHE_VERSION,
            "source": asdict(source),
            "spec": asdict(spec),
            "ids": ids,
            "texts": texts,
            "durations": durations,
            "offsets": offsets.tolist(),
            "spans": spans,
            "unmatched_alignments": unmatched,
        }
        (tmp / "index.json").write_text(json.dumps(index))
        tmp.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_subset(source: Source, cfg: SpeechConfig, spec: LogMelSpec = PAPER) -> CachedSubset:
    """The cached features of `source`, built first if needed: checked and read before anything is written,
    then built once (concurrent callers wait on a lock and find the finished cache)."""
    root = cache_root(cfg)
    target = root / f"{source.name}-{source.key(spec, cfg.cache_dtype)}"
    if not (target / "index.json").exists():
        cuts, extra = read_source(source, spec)  # a bad corpus fails here, with nothing written
        created = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        lock_path = root / f"{target.name}.lock"
        try:
            with open(lock_path, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (target / "index.json").exists():
                    log.info("extracting features of %s into %s", source.describe(), target)
                    _build(source, cuts, extra, target, spec, cfg.cache_dtype)
        except BaseException:
            lock_path.unlink(missing_ok=True)
            if created and not any(root.iterdir()):
                root.rmdir()
            raise
    index = json.loads((target / "index.json").read_text())
    return CachedSubset(
        ids=index["ids"],
        texts=index["texts"],
        durations=np.asarray(index["durations"], dtype=np.float64),
        offsets=np.asarray(index["offsets"], dtype=np.int64),
        spans=[None if s is None else [tuple(span) for span in s] for s in index["spans"]],
        unmatched_alignments=index["unmatched_alignments"],
        features=np.load(target / "features.npy", mmap_mode="r"),
    )


# ----------------------------------------------------------------------------------------------------------
# The corpus


@dataclass
class _Part:
    """Utterances of one cached subset that passed the duration filter, with their labels."""

    subset: CachedSubset
    rows: np.ndarray  # (U',) indices into the subset
    labels: list[np.ndarray]
    word_index: list[np.ndarray]

    def utterance(self, i: int) -> Utterance:
        row = int(self.rows[i])
        start, end = self.subset.offsets[row], self.subset.offsets[row + 1]
        spans = self.subset.spans[row]
        words = self.word_index[i]
        if spans is not None and len(spans) != int(words.max()) + 1:
            spans = None  # the tokenizer saw a different word count than the alignment: no ground truth
        return Utterance(
            np.array(self.subset.features[start:end], dtype=np.float32), self.labels[i], spans, words
        )


class SpeechCorpus:
    """Real speech from the `speech` config section; see the module docstring."""

    feature_dim = PAPER.mel_bands
    pad_value = LOG_FLOOR

    def __init__(self, cfg: SpeechConfig, seed: int = 0, spec: LogMelSpec = PAPER):
        self.cfg, self.seed, self.spec = cfg, seed, spec
        train_sources, heldout_source = self.sources(cfg)
        train = [load_subset(source, cfg, spec) for source in train_sources]
        rows = [np.flatnonzero(part.durations <= cfg.max_duration) for part in train]
        if not sum(len(r) for r in rows):
            names = ", ".join(s.describe() for s in train_sources)
            raise CorpusError(names, f"no utterance is at most speech.max_duration = {cfg.max_duration} s")
        transcripts = [part.texts[r] for part, r in zip(train, rows, strict=True) for r in r]
        self.tokenizer = self._tokenizer(train_sources, transcripts)
        self.vocab_size = self.tokenizer.vocab_size
        self.train = [self._part(part, r) for part, r in zip(train, rows, strict=True) if len(r)]
        self._train_sizes = np.cumsum([len(p.rows) for p in self.train])
        if heldout_source is None:
            self.heldout_part = None
        else:
            held = load_subset(heldout_source, cfg, spec)
            held_rows = np.flatnonzero(held.durations <= cfg.max_duration)
            if not len(held_rows):
                raise CorpusError(heldout_source.describe(), "no held-out utterance within max_duration")
            self.heldout_part = self._part(held, held_rows)
        self.sources_used = [*train_sources, *([heldout_source] if heldout_source else [])]

    @staticmethod
    def sources(cfg: SpeechConfig) -> tuple[list[Source], Source | None]:
        if cfg.root:
            root = str(Path(cfg.root).expanduser().resolve())
            train = [Source(root=root, subset=s, alignments=cfg.alignments) for s in cfg.subsets]
            held = Source(root=root, subset=cfg.heldout_subset, alignments=cfg.alignments)
            return train, held if cfg.heldout_subset else None
        if not cfg.manifest:
            raise CorpusError("speech", "set speech.root or speech.manifest")
        resolve = lambda p: str(Path(p).expanduser().resolve())
        train = [Source(manifest=resolve(cfg.manifest), alignments=cfg.alignments)]
        held = Source(manifest=resolve(cfg.heldout_manifest), alignments=cfg.alignments)
        return train, held if cfg.heldout_manifest else None

    def _tokenizer(self, sources: list[Source], transcripts: list[str]) -> Tokenizer:
        """Learned from the training transcripts, cached under a key of the sources and the vocabulary."""
        cfg = self.cfg
        keys = [s.key(self.spec, cfg.cache_dtype) for s in sources]
        text = json.dumps([keys, cfg.vocabulary, cfg.vocab_size, cfg.max_duration])
        suffix = "model" if cfg.vocabulary == "bpe" else "json"
        path = (
            cache_root(cfg)
            / f"tokens-{cfg.vocabulary}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.{suffix}"
        )
        if path.exists():
            return load_tokenizer(cfg.vocabulary, path)
        tokenizer = train_tokenizer(cfg.vocabulary, transcripts, cfg.vocab_size)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tokenizer.save(tmp)
        tmp.replace(path)
        return tokenizer

    def _part(self, subset: CachedSubset, rows: np.ndarray) -> _Part:
        encoded = [self.tokenizer.encode(subset.texts[r]) for r in rows]
        return _Part(subset, rows, [labels for labels, _ in encoded], [words for _, words in encoded])

    def __len__(self) -> int:
        return int(self._train_sizes[-1])

    def _train_utterance(self, i: int) -> Utterance:
        part = int(np.searchsorted(self._train_sizes, i, side="right"))
        offset = int(self._train_sizes[part - 1]) if part else 0
        return self.train[part].utterance(i - offset)

    def sample(self, rng: np.random.Generator, size: int) -> list[Utterance]:
        """`size` training utterances drawn uniformly with replacement (a pure function of `rng`)."""
        return [self._train_utterance(int(i)) for i in rng.integers(0, len(self), size)]

    def heldout(self, size: int) -> list[Utterance]:
        """The detector's fixed utterances: the held-out subset's (in a fixed shuffled order), else a fixed
        draw without replacement from the training utterances. Fewer than `size` if the subset is smaller."""
        rng = np.random.default_rng([self.seed, HELDOUT_STREAM])
        if self.heldout_part is not None:
            order = rng.permutation(len(self.heldout_part.rows))[:size]
            return [self.heldout_part.utterance(int(i)) for i in order]
        return [self._train_utterance(int(i)) for i in rng.permutation(len(self))[:size]]

    def summary(self) -> str:
        """One line: utterances, hours, vocabulary, alignment coverage."""
        parts = self.train + ([self.heldout_part] if self.heldout_part else [])
        hours = sum(float(p.subset.durations[p.rows].sum()) for p in self.train) / 3600
        aligned = sum(p.subset.spans[r] is not None for p in parts for r in p.rows)
        unmatched = sum(p.subset.unmatched_alignments for p in parts)
        held = len(self.heldout_part.rows) if self.heldout_part else "from train"
        return (
            f"{len(self)} training utterances ({hours:.2f} h), held-out {held}; {self.tokenizer.kind} "
            f"vocabulary {self.vocab_size} labels incl. EOS; word spans for {aligned} utterances"
            + (f" ({unmatched} alignments did not match their transcript)" if unmatched else "")
        )


def prepare(cfg: SpeechConfig, seed: int = 0) -> SpeechCorpus:
    """Check the corpus, build its feature cache and vocabulary (once), and return it; CorpusError names a
    bad file, and nothing is written before the corpus has passed its checks."""
    return SpeechCorpus(cfg, seed)


def prepare_trial_data(config: Any) -> str | None:
    """The trainer's data step before a sweep writes anything (`sweep.registry`: `prepare_data`): builds the
    caches of an audio config (a no-op for synthetic data) and returns the corpus summary. CorpusError on
    bad input."""
    if config.data.source != "audio":
        return None
    return prepare(config.speech, config.data.seed).summary()

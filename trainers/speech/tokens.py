"""Labels of speech: sentencepiece BPE (the paper's BPE-1k) or characters, with EOS kept at 0.

Both vocabularies are learned from the training transcripts only and give labels 1..vocab_size - 1, so label
0 stays EOS/BOS as in the paper and in the synthetic corpus. Every label also gets the index of the word it
belongs to (`word_index`), which is how the detector merges BPE pieces into words for the paper's word-level
time-stamp error.

* `bpe`: sentencepiece in BPE mode. Its piece ids 0..V-1 (id 0 is `<unk>`; no BOS/EOS/PAD pieces) become
  labels 1..V, so vocab_size = V + 1. A piece that starts with the word marker "▁" opens a new word. The
  requested V is a soft limit: a small corpus cannot fill 1k pieces, and sentencepiece then stops early.
* `char`: label 1 is `<unk>`, label 2 the word marker "▁" (sentencepiece's convention, one at the start of
  every word), then the training transcripts' characters in sorted order.

Transcripts are normalised the LibriSpeech way: upper case, whitespace collapsed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Protocol

import numpy as np

WORD_MARKER = "▁"  # U+2581, sentencepiece's word-start marker
_UNK = "<unk>"


def normalise(text: str) -> str:
    """LibriSpeech-style transcript: upper case, single spaces."""
    return " ".join(text.upper().split())


class Tokenizer(Protocol):
    kind: str
    vocab_size: int  # labels plus EOS = 0

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """text -> labels (N,) int64 in 1..vocab_size - 1, word_index (N,) int64 (word of each label)."""
        ...

    def decode(self, labels: np.ndarray) -> str: ...

    def save(self, path: Path) -> None: ...


def _word_index(pieces: list[str]) -> np.ndarray:
    """Word of each piece: a piece beginning with the word marker opens the next word."""
    starts = np.array([piece.startswith(WORD_MARKER) for piece in pieces], dtype=np.int64)
    if len(starts) and not starts[0]:
        starts[0] = 1  # a transcript never starts inside a word
    return np.cumsum(starts) - 1


class BpeTokenizer:
    """sentencepiece BPE; labels = piece ids + 1."""

    kind = "bpe"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self.processor.get_piece_size() + 1

    @classmethod
    def train(cls, transcripts: list[str], pieces: int) -> BpeTokenizer:
        """Learn at most `pieces` BPE pieces from the transcripts (deterministic for a given input)."""
        import sentencepiece as spm

        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(normalise(t) for t in transcripts),
            model_writer=model,
            model_type="bpe",
            vocab_size=pieces,
            hard_vocab_limit=False,  # a small corpus cannot fill the vocabulary: stop where it runs out
            character_coverage=1.0,
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            num_threads=1,
            minloglevel=2,
        )
        return cls(model.getvalue())

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        ids = self.processor.encode(normalise(text), out_type=int)
        pieces = [self.processor.id_to_piece(i) for i in ids]
        return np.asarray(ids, dtype=np.int64) + 1, _word_index(pieces)

    def decode(self, labels: np.ndarray) -> str:
        return self.processor.decode([int(label) - 1 for label in labels])

    def save(self, path: Path) -> None:
        path.write_bytes(self.model_proto)

    @classmethod
    def load(cls, path: Path) -> BpeTokenizer:
        return cls(path.read_bytes())


class CharTokenizer:
    """Characters plus a word-start marker; label 1 is <unk>, label 2 the marker."""

    kind = "char"

    def __init__(self, symbols: list[str]):
        self.symbols = symbols  # symbols[label - 1]
        self.index = {symbol: label for label, symbol in enumerate(symbols, start=1)}
        self.vocab_size = len(symbols) + 1

    @classmethod
    def train(cls, transcripts: list[str]) -> CharTokenizer:
        characters = sorted({c for t in transcripts for c in normalise(t) if c != " "})
        return cls([_UNK, WORD_MARKER, *characters])

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        pieces = [WORD_MARKER + word for word in normalise(text).split()]
        symbols = [c for piece in pieces for c in piece]
        labels = np.asarray([self.index.get(c, 1) for c in symbols], dtype=np.int64)
        words = np.repeat(np.arange(len(pieces)), [len(p) for p in pieces]).astype(np.int64)
        return labels, words

    def decode(self, labels: np.ndarray) -> str:
        text = "".join(self.symbols[int(label) - 1] for label in labels)
        return text.replace(WORD_MARKER, " ").strip()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.symbols, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> CharTokenizer:
        return cls(json.loads(path.read_text()))


def train_tokenizer(kind: str, transcripts: list[str], pieces: int) -> Tokenizer:
    """The vocabulary `kind` ("bpe" or "char") learned from the training transcripts."""
    if kind == "bpe":
        return BpeTokenizer.train(transcripts, pieces)
    if kind == "char":
        return CharTokenizer.train(transcripts)
    raise ValueError(f"unknown vocabulary {kind!r} (bpe or char)")


def load_tokenizer(kind: str, path: Path) -> Tokenizer:
    return BpeTokenizer.load(path) if kind == "bpe" else CharTokenizer.load(path)

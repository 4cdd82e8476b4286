"""Speech in: features against an independent reference, labels, spans, the cache, bad corpora, trials.

Every test reads a tiny corpus rendered once per session by `trainers.speech.speak` (espeak-ng); the tests
skip where espeak-ng is missing (`make test` installs it).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from tests.conftest import TINY
from trainers.config import ConfigError, ModelConfig, build_config
from trainers.corpus import CorpusError
from trainers.data import TrainStream
from trainers.model.frontend import ConvFrontend
from trainers.speech.corpus import SpeechCorpus, read_source
from trainers.speech.features import LOG_FLOOR, log_mel
from trainers.speech.speak import RenderConfig, espeak_available, render_corpus
from trainers.speech.tokens import BpeTokenizer, CharTokenizer, normalise
from trainers.train import make_corpus

pytestmark = [
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed"),
    pytest.mark.xdist_group("speech"),  # one worker renders the session's corpora (`make test` runs 2)
]

MODEL = {k: v for k, v in TINY.items() if not k.startswith("data.")}


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory) -> Path:
    """24 training and 6 dev utterances, 3 speakers, 2-4 words of 16 types, short pauses (~2 s rendering)."""
    root = tmp_path_factory.mktemp("spoken")
    render_corpus(
        root,
        RenderConfig(
            utterances=24,
            dev_utterances=6,
            speakers=3,
            vocabulary=16,
            min_words=2,
            max_words=4,
            max_pause=0.2,
            max_edge_silence=0.2,
            seed=7,
        ),
        log=lambda _: None,
    )
    return root


def speech_config(root: Path, cache: Path, **extra) -> dict:
    return {
        "data.source": "audio",
        "speech.root": str(root),
        "speech.subsets": ["train"],
        "speech.heldout_subset": "dev",
        "speech.cache_dir": str(cache),
        "speech.vocab_size": 40,
        **extra,
    }


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="session")
def corpus(corpus_root, cache) -> SpeechCorpus:
    return make_corpus(build_config(speech_config(corpus_root, cache)))


def flacs(root: Path, subset: str = "train") -> list[Path]:
    return sorted((root / subset).rglob("*.flac"))


# ----------------------------------------------------------------------------------------------------------
# Features


def librosa_log_mel(waveform: np.ndarray) -> np.ndarray:
    """The reference: librosa's STFT and HTK-style mel filters (no area normalisation), float64.

    librosa centres a 400-sample window inside each 512-sample frame; padding the waveform by 56 samples on
    both sides moves its frames onto [160 t, 160 t + 400), the TF/RETURNN framing."""
    librosa = pytest.importorskip("librosa")
    y = waveform.astype(np.float64)
    y = y / np.max(np.abs(y))
    shift = (512 - 400) // 2
    power = (
        np.abs(
            librosa.stft(
                np.pad(y, (shift, shift)),
                n_fft=512,
                hop_length=160,
                win_length=400,
                window="hann",
                center=False,
            )
        )
        ** 2
    )
    bank = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=0.0, fmax=8000.0, htk=True, norm=None)
    return np.log10(np.maximum(bank @ power, 1e-10)).T


def test_log_mel_matches_an_independent_reference(corpus_root):
    rng = np.random.default_rng(0)
    t = np.arange(16000 + 333) / 16000
    chirp = np.sin(2 * np.pi * (100 + 3000 * t) * t) * (t > 0.3) + 0.01 * rng.normal(size=len(t))
    waveforms = [soundfile.read(path, dtype="float32")[0] for path in flacs(corpus_root)[:3]] + [chirp]
    for waveform in waveforms:
        ours, reference = log_mel(waveform), librosa_log_mel(waveform)
        assert ours.shape == reference.shape == (1 + (len(waveform) - 400) // 160, 80)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, reference, atol=2e-3)
        assert ours.max() > -3.0  # real signal, far above the floor


def test_log_mel_floor_frames_and_peak_normalisation():
    assert log_mel(np.zeros(400 + 160 * 9)).tolist() == np.full((10, 80), LOG_FLOOR).tolist()
    assert log_mel(np.zeros(399)).shape == (0, 80)
    tone = np.sin(np.arange(16000) * 0.3).astype(np.float32)
    loud, quiet = log_mel(tone), log_mel(0.01 * tone)  # the recording level does not matter ...
    audible = loud > -8  # ... up to float32 rounding of the far sidelobes, near the floor
    assert audible.mean() > 0.5
    np.testing.assert_allclose(loud[audible], quiet[audible], atol=1e-3)


def test_spans_land_on_the_words_frames(corpus):
    """Each word span (10 ms frames) holds the word's energy: louder inside than in the pauses around it."""
    checked = 0
    for utterance in corpus.heldout(6):
        energy = utterance.features.mean(axis=1)  # (T,) mean log10 band energy
        spans = utterance.spans
        assert spans is not None and len(spans) == int(utterance.word_index.max()) + 1
        inside = np.zeros(len(energy), dtype=bool)
        for start, end in spans:
            assert 0 <= start < end <= len(energy)
            inside[start:end] = True
        for start, end in spans:
            assert energy[start:end].max() > np.median(energy[~inside]) + 1.0
            # the frame just outside each edge is quieter than the word's loudest frame
            for outside in (start - 1, end):
                if 0 <= outside < len(energy) and not inside[outside]:
                    assert energy[outside] < energy[start:end].max() - 0.5
            checked += 1
    assert checked >= 12


@pytest.mark.parametrize("subsampling", [4, 6])
def test_spans_map_onto_the_encoder_frames_after_subsampling(corpus, subsampling):
    """Silencing one word's input frames changes exactly the encoder frames that the detector's span mapping
    ([start // s - 1, ceil(end / s) + 1)) gives that word, and every encoder frame lying inside the word."""
    torch.manual_seed(0)
    cfg = ModelConfig(frontend_channels=8, d_model=16, subsampling=subsampling, dropout=0.0, pad_mode="zero")
    frontend = ConvFrontend(cfg, feature_dim=80).eval()
    utterance = corpus.heldout(1)[0]
    features = torch.from_numpy(utterance.features)[None]
    lengths = torch.tensor([features.shape[1]])
    with torch.no_grad():
        reference, enc_lengths = frontend(features, lengths)
        for start, end in utterance.spans:
            silenced = features.clone()
            silenced[:, start:end] = LOG_FLOOR
            changed = (frontend(silenced, lengths)[0] - reference).abs().amax(-1)[0] > 1e-6
            frames = set(np.flatnonzero(changed[: int(enc_lengths[0])].numpy()).tolist())
            widened = set(range(start // subsampling - 1, -(-end // subsampling) + 1))
            owned = {t for t in range(int(enc_lengths[0])) if start <= t * subsampling < end}
            assert owned <= frames <= widened, (start, end, sorted(frames))


# ----------------------------------------------------------------------------------------------------------
# Labels


def test_bpe_round_trips_and_keeps_eos_free(corpus):
    tokenizer = corpus.tokenizer
    assert isinstance(tokenizer, BpeTokenizer)
    for part in (*corpus.train, corpus.heldout_part):
        for row, labels, words in zip(part.rows, part.labels, part.word_index, strict=True):
            text = part.subset.texts[row]
            assert tokenizer.decode(labels) == text
            assert labels.min() >= 1 and labels.max() < corpus.vocab_size  # 0 stays EOS/BOS
            assert int(words.max()) + 1 == len(text.split()) and np.all(np.diff(words) >= 0)
            for w, word in enumerate(text.split()):  # the pieces of word w spell word w
                assert tokenizer.decode(labels[words == w]) == word


def test_bpe_vocabulary_size_is_a_knob():
    text = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs"] * 30
    small, large = BpeTokenizer.train(text, 30), BpeTokenizer.train(text, 60)
    assert small.vocab_size == 31 and large.vocab_size == 61
    assert len(small.encode(text[0])[0]) > len(large.encode(text[0])[0])


def test_characters_round_trip_with_word_markers():
    tokenizer = CharTokenizer.train(["abc ab", "ca"])
    labels, words = tokenizer.encode("cab ba")
    assert tokenizer.decode(labels) == "CAB BA"
    assert words.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert tokenizer.encode("abz")[0].tolist()[-1] == 1  # unseen character: <unk>
    assert normalise("  a  b ") == "A B"


# ----------------------------------------------------------------------------------------------------------
# The corpus and its cache


def test_corpus_is_deterministic_and_padded_at_the_floor(corpus, corpus_root, cache):
    assert (corpus.feature_dim, corpus.pad_value) == (80, LOG_FLOOR)
    first = corpus.sample(np.random.default_rng([1, 2]), 4)
    again = make_corpus(build_config(speech_config(corpus_root, cache))).sample(
        np.random.default_rng([1, 2]), 4
    )
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
    heldout = [u.labels.tolist() for u in corpus.heldout(6)]
    assert heldout == [u.labels.tolist() for u in corpus.heldout(6)]
    batch = TrainStream(corpus, (0, 0), 4).batch(0)
    short = int(batch.feature_lengths.argmin())
    assert torch.all(batch.features[short, int(batch.feature_lengths[short]) :] == LOG_FLOOR)
    assert batch.features.shape[-1] == 80 and batch.labels.min() >= 0


def test_features_are_cached_once_per_corpus(corpus_root, cache, monkeypatch, tmp_path):
    config = build_config(speech_config(corpus_root, cache))
    make_corpus(config)  # built (or already built by another test)
    import trainers.speech.corpus

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached corpus must not decode audio")

    monkeypatch.setattr(trainers.speech.corpus, "log_mel", no_decoding)
    corpus = make_corpus(build_config(speech_config(corpus_root, cache, **{"speech.vocab_size": 30})))
    assert len(corpus) == 24
    # an edited transcript is a new corpus: its features are rebuilt
    copy = tmp_path / "copy"
    shutil.copytree(corpus_root, copy)
    transcript = next((copy / "train").rglob("*.trans.txt"))
    transcript.write_text(transcript.read_text().replace("\n", " \n", 1))
    with pytest.raises(AssertionError, match="must not decode"):
        make_corpus(build_config(speech_config(copy, cache)))


def test_alignments_from_ctm_textgrid_or_none(corpus_root, tmp_path):
    """The same word spans whether they come as LibriSpeech-Alignments, CTM or TextGrid; None without."""
    from praatio import textgrid

    cache = tmp_path / "cache"
    reference = SpeechCorpus(build_config(speech_config(corpus_root, cache)).speech)
    copy = tmp_path / "bare"
    shutil.copytree(corpus_root, copy, ignore=shutil.ignore_patterns("*.alignment.txt"))
    cuts, _ = read_source(reference.sources_used[0])
    ctm, grids = tmp_path / "words.ctm", tmp_path / "grids"
    grids.mkdir()
    with open(ctm, "w") as f:
        for cut in cuts:
            items = [i for i in cut.supervisions[0].alignment["word"] if i.symbol]
            f.writelines(f"{cut.recording_id} 0 {i.start:.5f} {i.duration:.5f} {i.symbol}\n" for i in items)
            grid = textgrid.Textgrid()
            entries = [(i.start, i.start + i.duration, i.symbol) for i in items]
            grid.addTier(textgrid.IntervalTier("words", entries, 0, cut.duration))
            grid.save(str(grids / f"{cut.supervisions[0].id}.TextGrid"), "long_textgrid", True)
    expected = [u.spans for u in reference.sample(np.random.default_rng(0), 8)]
    for alignments in (ctm, grids):
        extra = {"speech.heldout_subset": "", "speech.alignments": str(alignments)}
        other = SpeechCorpus(build_config(speech_config(copy, cache, **extra)).speech)
        assert [u.spans for u in other.sample(np.random.default_rng(0), 8)] == expected, other.summary()
    bare = SpeechCorpus(build_config(speech_config(copy, cache, **{"speech.heldout_subset": ""})).speech)
    assert all(u.spans is None and u.word_index is not None for u in bare.sample(np.random.default_rng(0), 8))
    assert "word spans for 0 utterances" in bare.summary()


def test_lhotse_manifest_is_a_corpus(corpus_root, tmp_path):
    cuts, _ = read_source(
        SpeechCorpus.sources(build_config(speech_config(corpus_root, tmp_path)).speech)[0][0]
    )
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    config = {"data.source": "audio", "speech.manifest": str(manifest), "speech.cache_dir": str(tmp_path)}
    corpus = make_corpus(build_config({**config, "speech.vocabulary": "char"}))
    assert len(corpus) == 24 and corpus.tokenizer.kind == "char"
    assert all(u.spans is not None for u in corpus.heldout(4))


# ----------------------------------------------------------------------------------------------------------
# Bad corpora: one clear error naming the file, exit 2, nothing written


def _one_chapter(corpus_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A corpus with one chapter of the training subset; returns (root, that chapter's folder)."""
    chapter = next(p.parent for p in (corpus_root / "train").rglob("*.trans.txt"))
    root = tmp_path / "bad"
    shutil.copytree(chapter, root / "train" / chapter.parent.name / chapter.name)
    return root, root / "train" / chapter.parent.name / chapter.name


def _empty_transcript(folder: Path) -> Path:
    transcript = next(folder.glob("*.trans.txt"))
    transcript.write_text("")
    return transcript


def _unreadable_audio(folder: Path) -> Path:
    audio = sorted(folder.glob("*.flac"))[0]
    audio.write_bytes(b"this is not a flac file" * 20)
    return audio


def _zero_length_audio(folder: Path) -> Path:
    audio = sorted(folder.glob("*.flac"))[0]
    audio.write_bytes(b"")
    return audio


def _missing_audio(folder: Path) -> Path:
    audio = sorted(folder.glob("*.flac"))[-1]
    audio.unlink()
    return audio


def _wrong_rate(folder: Path) -> Path:
    audio = sorted(folder.glob("*.flac"))[0]
    waveform, _ = soundfile.read(audio)
    soundfile.write(audio, waveform[::2], 8000)
    return audio


@pytest.mark.parametrize(
    "damage, expected",
    [
        (_empty_transcript, "empty transcript file"),
        (_unreadable_audio, "unreadable audio"),
        (_zero_length_audio, "zero-length audio"),
        (_missing_audio, "missing audio for line"),
        (_wrong_rate, "sample rate 8000 Hz; only 16000 Hz is accepted"),
    ],
)
def test_bad_corpus_exits_2_naming_the_file_and_writes_nothing(
    corpus_root, tmp_path, capsys, damage, expected
):
    from trainers.train import main

    root, folder = _one_chapter(corpus_root, tmp_path)
    culprit = damage(folder)
    out, cache = tmp_path / "out", tmp_path / "cache"
    settings = speech_config(root, cache, **{"speech.heldout_subset": ""})
    code = main([f"--set={key}={json.dumps(value)}" for key, value in settings.items()] + ["--out", str(out)])
    message = capsys.readouterr().err.strip()
    assert code == 2
    assert message.startswith(f"error: {culprit}: ") and expected in message and "\n" not in message
    assert not out.exists() and not cache.exists()


def test_missing_root_exits_2_naming_it_and_writes_nothing(tmp_path, capsys):
    from trainers.train import main

    nowhere, out, cache = tmp_path / "nowhere", tmp_path / "out", tmp_path / "cache"
    settings = speech_config(nowhere, cache, **{"speech.heldout_subset": ""})
    code = main([f"--set={key}={json.dumps(value)}" for key, value in settings.items()] + ["--out", str(out)])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {nowhere}: corpus root does not exist"
    assert sorted(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="set speech.root"):
        build_config({"data.source": "audio"})  # audio needs a corpus: caught when the config is built


def test_missing_subset_and_long_utterances_are_corpus_errors(corpus_root, tmp_path):
    with pytest.raises(CorpusError, match="no subset folder 'train-clean-100'"):
        make_corpus(
            build_config(speech_config(corpus_root, tmp_path, **{"speech.subsets": ["train-clean-100"]}))
        )
    with pytest.raises(CorpusError, match="max_duration"):
        make_corpus(build_config(speech_config(corpus_root, tmp_path, **{"speech.max_duration": 0.1})))


def test_a_sweep_on_a_bad_corpus_exits_2_before_mlflow(corpus_root, tmp_path, capsys, monkeypatch):
    import yaml

    from sweep.run import main

    root, folder = _one_chapter(corpus_root, tmp_path)
    culprit = _missing_audio(folder)
    space = tmp_path / "space.yaml"
    base = {**MODEL, **speech_config(root, tmp_path / "cache", **{"speech.heldout_subset": ""})}
    space.write_text(
        yaml.safe_dump({"name": "bad", "trainer": "conformer_aed", "base": base, "replicates": 1})
    )
    monkeypatch.chdir(tmp_path)
    code = main([str(space), "--storage", str(tmp_path / "results")])
    assert code == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {culprit}: missing audio")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "space.yaml"]  # no mlflow.db, no results


# ----------------------------------------------------------------------------------------------------------
# Trials and sweeps on speech


def test_trial_trains_on_speech_from_the_cache(corpus_root, cache, tmp_path):
    from trainers.train import run_trial

    config = {**MODEL, **speech_config(corpus_root, cache), "train.steps": 6, "detector.every": 3}
    result = run_trial(config, tmp_path / "trial", log=lambda _: None)
    assert result["outcome"]["label"] in ("normal", "reversed", "undecided")
    assert np.isfinite(result["final"]["loss"]) and np.isfinite(result["final"]["tse_boundary_ms"])
    assert result["config"]["data.source"] == "audio"
    assert sys.modules.get("torchaudio") is None  # features never need torchaudio


@pytest.fixture(scope="session")
def aligning_root(tmp_path_factory) -> Path:
    """Short utterances (2-3 of 10 words, short pauses) that the tiny model learns to attend to in a few
    hundred steps (the detector's controls on speech: tests/trainers/test_speech_controls.py)."""
    root = tmp_path_factory.mktemp("aligning")
    config = RenderConfig(
        utterances=200,
        dev_utterances=6,
        speakers=3,
        vocabulary=10,
        min_words=2,
        max_words=3,
        min_pause=0.02,
        max_pause=0.08,
        min_edge_silence=0.05,
        max_edge_silence=0.1,
        seed=3,
    )
    render_corpus(root, config, log=lambda _: None)
    return root


@pytest.fixture(scope="session")
def aligning_cache(tmp_path_factory) -> Path:
    """The feature cache of `aligning_root`: its 200 utterances are featurised once, by whichever test first
    reads them (the cache is keyed by the audio and transcripts, not by the vocabulary)."""
    return tmp_path_factory.mktemp("aligning-cache")


SPEECH_ALIGNING = {
    **MODEL,
    "speech.heldout_subset": "",  # the paper reads training utterances
    "speech.vocab_size": 30,
    "model.subsampling": 6,
    "train.steps": 600,
    "train.lr_peak": 3e-3,
    "train.lr_warmup": 0.1,
    "detector.every": 50,
}


@pytest.mark.slow
def test_two_trial_sweep_on_speech_completes_with_labels(aligning_root, aligning_cache, tmp_path):
    import os
    import subprocess

    import yaml
    from mlflow.tracking import MlflowClient

    base = {**speech_config(aligning_root, aligning_cache), **SPEECH_ALIGNING}
    base.update({"train.steps": 30, "detector.every": 15})
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "name": "speech",
                "trainer": "conformer_aed",
                "base": base,
                "replicates": 2,
                "resources": {"cpus_per_trial": 1},
                "max_failures": 0,
                "mlflow": {"experiment": "speech"},
            }
        )
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_ADDRESS": ""}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "sweep.run", str(space), "--storage", str(tmp_path / "results")]
    done = subprocess.run(
        [*command, "--tracking-uri", uri, "--num-cpus", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "data: 200 training utterances" in done.stdout  # the driver's data step, before any trial
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("speech")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("flipsweep.role") == "trial"]
    assert len(trials) == 2
    assert all(r.data.tags.get("label") in ("normal", "reversed", "undecided") for r in trials)
    assert all(r.data.params.get("data.source") == "audio" for r in trials)

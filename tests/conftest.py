"""Shared fixtures: tiny trial configs that train in seconds on one CPU core."""

from __future__ import annotations

import os

import pytest

# One thread per test process: the suite runs on 2 cores next to Ray workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = {
    "data.num_labels": 8,
    "data.min_labels": 3,
    "data.max_labels": 5,
    "data.min_label_frames": 6,
    "data.max_label_frames": 10,
    "data.min_silence_frames": 4,
    "data.max_silence_frames": 10,
    "model.d_model": 32,
    "model.layers": 2,
    "model.heads": 2,
    "model.ffn_dim": 64,
    "model.frontend_channels": 8,
    "model.decoder_dim": 64,
    "model.embed_dim": 32,
    "model.attention_dim": 32,
    "train.steps": 40,
    "train.batch_size": 8,
    "train.threads": 1,
    "detector.every": 20,
    "detector.utterances": 8,
    "detector.gradient_utterances": 2,
}

# Long enough for the tiny model to align (attention sharp, accuracy high); measured on 1 core.
ALIGNING = {**TINY, "train.steps": 300, "train.lr_peak": 3e-3, "train.lr_warmup": 0.1, "detector.every": 50}


# A model small enough for exact gradient checks (no training); FEATURES dims in, VOCAB labels incl. EOS.
TINY_MODEL = {
    "model.d_model": 16,
    "model.layers": 2,
    "model.heads": 2,
    "model.ffn_dim": 32,
    "model.frontend_channels": 4,
    "model.conv_kernel": 3,
    "model.decoder_dim": 16,
    "model.embed_dim": 8,
    "model.attention_dim": 8,
}
FEATURES = 8
VOCAB = 6  # EOS = 0 and labels 1..5


@pytest.fixture
def tiny() -> dict:
    return dict(TINY)

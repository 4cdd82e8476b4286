"""The paper's acoustic features: 80-dim log-mel from peak-normalised 16 kHz audio.

What RETURNN's `rf.audio.log_mel_filterbank_from_raw` computes for the paper's models (the released config
calls it with its defaults), written out in numpy:

1. peak normalisation: waveform / max |waveform| (the dataset's `peak_normalization`);
2. frames of 25 ms (400 samples) every 10 ms (160 samples), no centre padding, so an N-sample waveform
   gives 1 + (N - 400) // 160 frames and frame t covers samples [160 t, 160 t + 400);
3. a periodic Hann window over the 400 samples, zero-padded on the right to a 512-point FFT (TF/SciPy STFT
   semantics, which RETURNN's torch backend emulates);
4. the power spectrum |X|^2 (257 bins) through 80 triangular mel filters, 0 Hz to 8 kHz: centres equally
   spaced on the mel scale 1125 ln(1 + f / 700), triangles linear in frequency with peak 1 and no area
   normalisation (Huang, Acero & Hon 2001, eq. 6.141);
5. log10 with a floor of 1e-10, so digital silence and padding sit at exactly -10 (`LOG_FLOOR`).

No mean/variance normalisation follows (the paper has none). Padding happens at the log floor: a batch's
padded frames are -10, which is what the paper's waveform padding turns into.

Frame times: frame t is centred at (160 t + 200) samples, i.e. 10 t + 12.5 ms. A word spanning [start,
end) seconds owns the frames whose centres fall inside it (`seconds_to_frames`).

Shapes: N samples, T frames, M = 80 mel bands, K = 257 FFT bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16_000
LOG_FLOOR = -10.0  # log10 of the 1e-10 energy floor: the value of silence and of padding


@dataclass(frozen=True)
class LogMelSpec:
    """The feature definition (the paper's values). Part of every feature-cache key."""

    sample_rate: int = SAMPLE_RATE
    window_seconds: float = 0.025
    shift_seconds: float = 0.010
    fft_size: int = 512
    mel_bands: int = 80
    energy_floor: float = 1e-10
    peak_normalise: bool = True

    @property
    def window(self) -> int:
        """Samples per analysis window (400)."""
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def shift(self) -> int:
        """Samples between frame starts (160)."""
        return int(round(self.shift_seconds * self.sample_rate))

    def num_frames(self, num_samples: int) -> int:
        """Frames of an N-sample waveform: whole windows only (no centre padding); 0 if N < one window."""
        return 0 if num_samples < self.window else 1 + (num_samples - self.window) // self.shift

    def seconds_to_frames(self, start: float, end: float, num_frames: int) -> tuple[int, int]:
        """The [start, end) frame span of a word spoken over [start, end) seconds: the frames whose centre
        lies inside it, clipped to the utterance and never empty (a word under 10 ms keeps one frame)."""
        centre = self.window / 2 / self.sample_rate
        first = int(np.ceil((start - centre) / self.shift_seconds - 1e-6))
        last = int(np.ceil((end - centre) / self.shift_seconds - 1e-6))
        first = min(max(first, 0), max(num_frames - 1, 0))
        return first, min(max(last, first + 1), num_frames)


PAPER = LogMelSpec()


def mel_scale(hz: np.ndarray | float) -> np.ndarray:
    """Hertz -> mel, 1125 ln(1 + f / 700) (RETURNN's constant; any constant gives the same filter centres)."""
    return 1125.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def inverse_mel_scale(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * np.expm1(np.asarray(mel, dtype=np.float64) / 1125.0)


@lru_cache(maxsize=8)
def mel_filterbank(spec: LogMelSpec = PAPER) -> np.ndarray:
    """(K, M) triangular filters: filter m rises from centre m-1 to peak 1 at centre m and falls to 0 at
    centre m+1, centres equally spaced in mel between 0 Hz and Nyquist, measured in FFT bins."""
    bins = spec.fft_size // 2 + 1
    edges_mel = np.linspace(0.0, float(mel_scale(spec.sample_rate / 2)), spec.mel_bands + 2)
    centres = inverse_mel_scale(edges_mel) * spec.fft_size / spec.sample_rate  # (M + 2,) in FFT bins
    k = np.arange(bins, dtype=np.float64)[:, None]
    lower, peak, upper = centres[:-2], centres[1:-1], centres[2:]
    rising = (k - lower) / (peak - lower)
    falling = (upper - k) / (upper - peak)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


@lru_cache(maxsize=8)
def _hann(length: int) -> np.ndarray:
    """Periodic Hann window (the STFT convention): 0.5 - 0.5 cos(2 pi n / L)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)).astype(np.float32)


def log_mel(waveform: np.ndarray, spec: LogMelSpec = PAPER) -> np.ndarray:
    """(N,) float waveform at spec.sample_rate -> (T, M) float32 log10 mel energies, T = num_frames(N).

    An all-zero waveform stays zero (every frame at the floor); a waveform shorter than one window gives
    (0, M).
    """
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a mono waveform (N,), got shape {x.shape}")
    frames = spec.num_frames(len(x))
    if frames == 0:
        return np.zeros((0, spec.mel_bands), dtype=np.float32)
    if spec.peak_normalise:
        peak = float(np.max(np.abs(x)))
        x = x / peak if peak > 0 else x
    windows = np.lib.stride_tricks.sliding_window_view(x, spec.window)[:: spec.shift][:frames]  # (T, 400)
    spectrum = np.fft.rfft(windows * _hann(spec.window), n=spec.fft_size, axis=-1)  # (T, K) complex
    power = spectrum.real**2 + spectrum.imag**2
    mel = power.astype(np.float32) @ mel_filterbank(spec)  # (T, M)
    # float64 for the log: the floor then maps to exactly -10 (float32 1e-10 would give -10.000001)
    return np.log10(np.maximum(mel.astype(np.float64), spec.energy_floor)).astype(np.float32)

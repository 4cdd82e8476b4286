"""Figures of one detector evaluation: cross-attention against the true spans, and per-block gradient maps.

Both read `Evaluation.arrays` (see `trainers.detector`). Figures are drawn on the Agg canvas without pyplot,
so nothing is registered globally (safe in workers and notebooks) and each figure is freed once saved.
An evaluation without arrays (e.g. restored from an old checkpoint) gives a figure that says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

PANEL_COLUMNS = 4


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    figure.clear()  # free the artists now; the figure is not tracked by pyplot


def _empty(path: str | Path, message: str) -> None:
    figure = _figure(5, 2)
    figure.text(0.5, 0.5, message, ha="center", va="center")
    _save(figure, path)


def plot_attention(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Cross-attention (labels x encoder frames) of up to 3 held-out utterances, true spans drawn as boxes.

    arrays: attention (n, S, T'), label_lengths (n,), enc_lengths (n,), spans (n, S, 2) in input frames,
    subsampling, attention_directions (n,).
    """
    if not arrays or "attention" not in arrays or len(arrays["attention"]) == 0:
        _empty(path, "no attention recorded")
        return
    attention, spans = arrays["attention"], arrays["spans"]
    subsampling = int(arrays["subsampling"])
    count = len(attention)
    figure = _figure(5.0 * count, 3.6)
    for i, axes in enumerate(figure.subplots(1, count, squeeze=False)[0]):
        labels, frames = int(arrays["label_lengths"][i]), int(arrays["enc_lengths"][i])
        image = axes.imshow(
            attention[i, :labels, :frames], aspect="auto", origin="upper", cmap="viridis", vmin=0.0
        )
        # A true span [start, end) in input frames covers encoder frames start/s .. end/s (pixels centred).
        for s, (start, end) in enumerate(spans[i, :labels]):
            box = Rectangle(
                (start / subsampling - 0.5, s - 0.5),
                (end - start) / subsampling,
                1.0,
                fill=False,
                edgecolor="red",
                linewidth=1.2,
            )
            axes.add_patch(box)
        direction = float(arrays["attention_directions"][i])
        axes.set_title(f"utterance {i}: direction {direction:+.2f}")
        axes.set_xlabel("encoder frame")
        axes.set_ylabel("label")
        figure.colorbar(image, ax=axes, label="attention weight")
    figure.suptitle("Cross-attention (red boxes: true label spans)")
    _save(figure, path)


def plot_gradients(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """One panel per block i = 0..L: the first utterance's gradient map G_i (labels x encoder frames).

    Each row is scaled to its maximum so that a label's focus shows whatever its gradient's magnitude.
    arrays: gradient_maps (L+1, S, T'), block_directions (L+1,).
    """
    if not arrays or "gradient_maps" not in arrays or arrays["gradient_maps"].size == 0:
        _empty(path, "no gradient maps recorded")
        return
    maps, directions = arrays["gradient_maps"], arrays["block_directions"]
    panels = len(maps)
    columns = min(PANEL_COLUMNS, panels)
    rows = math.ceil(panels / columns)
    figure = _figure(3.6 * columns, 2.8 * rows)
    grid = figure.subplots(rows, columns, squeeze=False).reshape(-1)
    peak = maps.max(axis=-1, keepdims=True)
    scaled = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
    for i, axes in enumerate(grid):
        if i >= panels:
            axes.set_axis_off()
            continue
        axes.imshow(scaled[i], aspect="auto", origin="upper", cmap="magma", vmin=0.0, vmax=1.0)
        name = "G_0 (encoder input)" if i == 0 else f"G_{i} (block {i})"
        axes.set_title(f"{name}: {float(directions[i]):+.2f}", fontsize=10)
        axes.set_xlabel("encoder frame")
        axes.set_ylabel("label")
    figure.suptitle("||d log p(a_s) / d h_i[t]||, each row scaled to its maximum; title: direction")
    _save(figure, path)

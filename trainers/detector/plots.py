"""Figures of one detector evaluation: cross-attention against the true spans, and per-block gradient maps.

Both read `Evaluation.arrays` (see `trainers.detector.evaluate`). Figures are drawn on the Agg canvas without
pyplot, so nothing is registered globally (safe in workers and notebooks) and each figure is freed once saved.
An evaluation without arrays (e.g. restored from an old checkpoint) gives a figure that says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

PANEL_COLUMNS = 4
LOG_RANGE = 3.0  # colour range of the gradient maps, in natural-log units below each row's maximum


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    figure.clear()  # free the artists now; the figure is not tracked by pyplot


def _frame_axes(axes) -> None:
    axes.set_xlabel("encoder frame")
    axes.set_ylabel("label")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))


def _empty(path: str | Path, message: str) -> None:
    figure = _figure(5, 2)
    figure.text(0.5, 0.5, message, ha="center", va="center")
    _save(figure, path)


def plot_attention(
    path: str | Path, arrays: dict[str, np.ndarray], utterances: int | None = None, step: int | None = None
) -> None:
    """Cross-attention (labels x encoder frames) of up to 3 held-out utterances, true spans drawn as boxes.

    arrays: attention (n, S, T'), label_lengths (n,), enc_lengths (n,), spans (n, S, 2) in input frames,
    subsampling, attention_directions (n,), and where present sink_frames (n,) with outside_sink_directions
    (n,): an utterance whose start-edge sink was taken out gets a dashed line at the sink's edge and its
    direction outside the sink in the title. `utterances` draws only the first few (a smaller, faster
    figure); `step` goes into the title.
    """
    if not arrays or "attention" not in arrays or len(arrays["attention"]) == 0:
        _empty(path, "no attention recorded")
        return
    attention, spans = arrays["attention"], arrays["spans"]
    subsampling = int(arrays["subsampling"])
    count = min(len(attention), utterances or len(attention))
    figure = _figure(5.0 * count, 3.6)
    for i, axes in enumerate(figure.subplots(1, count, squeeze=False)[0]):
        labels, frames = int(arrays["label_lengths"][i]), int(arrays["enc_lengths"][i])
        image = axes.imshow(
            attention[i, :labels, :frames], aspect="auto", origin="upper", cmap="viridis", vmin=0.0
        )
        # A true span [start, end) in input frames covers encoder frames start/s .. end/s (pixels centred).
        for s, (start, end) in enumerate(spans[i, :labels]):
            if start < 0:  # no reference alignment for this label
                continue
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
        title = f"utterance {i}: direction {direction:+.2f}"
        sink = int(arrays["sink_frames"][i]) if "sink_frames" in arrays else 0
        if sink:
            axes.axvline(sink - 0.5, color="white", linestyle="--", linewidth=1.0)
            title += f", outside the sink {float(arrays['outside_sink_directions'][i]):+.2f}"
        axes.set_title(title)
        _frame_axes(axes)
        figure.colorbar(image, ax=axes, label="attention weight")
    at = f" at step {step}" if step is not None else ""
    figure.suptitle(f"Cross-attention{at} (red boxes: true label spans)")
    _save(figure, path)


def plot_gradients(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """One panel per block i = 0..L: the first utterance's gradient map G_i (labels x encoder frames).

    Shown on a log scale relative to each row's maximum (clipped at -LOG_RANGE), so that each label's focus
    shows whatever its gradient's magnitude.
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
    # Log scale relative to each row's maximum: a few boundary frames with large gradients would otherwise
    # wash out the alignment pattern on a linear scale.
    logs = np.log(np.maximum(maps, np.finfo(np.float32).tiny))
    scaled = np.clip(logs - logs.max(axis=-1, keepdims=True), -LOG_RANGE, 0.0)
    for i, axes in enumerate(grid):
        if i >= panels:
            axes.set_axis_off()
            continue
        image = axes.imshow(scaled[i], aspect="auto", origin="upper", cmap="magma", vmin=-LOG_RANGE, vmax=0)
        name = "G_0 (encoder input)" if i == 0 else f"G_{i} (block {i})"
        axes.set_title(f"{name}: {float(directions[i]):+.2f}", fontsize=10)
        _frame_axes(axes)
    figure.colorbar(image, ax=grid.tolist(), label="log gradient norm - row max", shrink=min(0.8, 2.5 / rows))
    figure.suptitle("Gradient maps ||d log p(a_s) / d h_i[t]|| of utterance 0; title: direction")
    _save(figure, path)

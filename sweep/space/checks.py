"""Rules that span several fields of a space file, each refusing the file at the key to fix."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sweep.registry import TRAINERS, TrainerSpec, get_trainer
from sweep.space.configs import Cell, Place, base_layer, build
from sweep.space.schema import Space, entry_values, suggest
from sweep.space.source import Document, KeyPath, dotted


# -- cross-field checks -------------------------------------------------------------------------------------
def check_trainer(doc: Document, space: Space) -> TrainerSpec:
    """The registered trainer the space names."""
    try:
        return get_trainer(space.trainer)
    except KeyError:
        known = ", ".join(sorted(TRAINERS))
        raise doc.error(("trainer",), f"unknown trainer {space.trainer!r} (known: {known})") from None


_GRID_ONLY = ("factors", "cells", "replicates", "baseline")
_SAMPLING_ONLY = ("ranges", "samples", "objective")
_HINTS = {
    "ranges": " (grid search varies factors; ranges are for random or optuna)",
    "factors": " (vary ranges instead; choices for categorical keys)",
    "cells": " (vary ranges instead; choices for categorical keys)",
    "replicates": " (each sample gets its own seed, counting from seed)",
}


def check_mode(doc: Document, space: Space) -> None:
    """Each search mode's required fields, and no field that the mode would silently ignore."""
    given, mode = space.model_fields_set, space.search
    unused = {"grid": _SAMPLING_ONLY, "random": (*_GRID_ONLY, "objective"), "optuna": _GRID_ONLY}[mode]
    for name in unused:
        if name in given:
            raise doc.error((name,), f"not used by search: {mode}" + _HINTS.get(name, ""))
    if mode == "grid" and isinstance(space.replicates, list) and "seed" in given:
        raise doc.error(("seed",), "not used when replicates is a list of seeds")
    if mode != "grid":
        required = ("ranges", "samples", "objective") if mode == "optuna" else ("ranges", "samples")
        for name in required:
            if name not in given:  # no node to point at: point at the mode that needs it
                raise doc.error(("search",), f"required by search: {mode}", key=name)
        if not space.ranges:
            raise doc.error(("ranges",), "needs at least one key to sample")
    if mode == "optuna" and space.objective is not None:
        trainer = get_trainer(space.trainer)
        if not trainer.reports(space.objective.metric):
            # Tune would stop the whole sweep at the first report without it: refuse it here instead.
            message = "not a figure the trial reports" + suggest(space.objective.metric, trainer.metric_names)
            raise doc.error(("objective", "metric"), message)


def check_keys(
    doc: Document, space: Space, known: set[str], renamed: Mapping[str, str] | None = None
) -> None:
    """Every dotted key in base / factors / cells / ranges is a trial-config key, and none sets the seed;
    a renamed key is refused with the key that replaced it."""
    groups: list[tuple[KeyPath, dict[str, Any]]] = [(("base",), space.base), (("factors",), space.factors)]
    groups += [(("cells", i), entry_values(cell)) for i, cell in enumerate(space.cells)]
    groups.append((("ranges",), space.ranges))
    for parent, keys in groups:
        for key in keys:
            where = (*parent, str(key))
            if key == "seed":
                raise doc.error(where, "the seed cannot be set here: replicates (and seed) choose the seeds")
            if renamed and key in renamed:
                raise doc.error(where, f"renamed: use {renamed[key]}")
            if key not in known:
                raise doc.error(where, "unknown trial-config key" + suggest(key, known))


def check_levels(doc: Document, space: Space) -> None:
    """Every factor's values are distinct (a repeated level would silently double a cell)."""
    for key, levels in space.factors.items():
        for index, level in enumerate(levels):
            if level in levels[:index]:
                raise doc.error(("factors", key, index), f"repeated value {level!r}", key=f"factors.{key}")


def n_cells(space: Space) -> int:
    """Grid cells: the full factorial (one base cell with neither factors nor cells), plus extra cells."""
    factorial = math.prod(len(levels) for levels in space.factors.values())
    return (factorial if space.factors or not space.cells else 0) + len(space.cells)


def seeds_of(space: Space) -> list[int]:
    """The seeds every grid cell runs: the explicit list, or `seed`, `seed + 1`, ..."""
    if isinstance(space.replicates, list):
        return list(space.replicates)
    return list(range(space.seed, space.seed + space.replicates))


def check_size(doc: Document, space: Space, n_trials: int, detail: str, confirm: bool) -> None:
    """Refuse a sweep larger than max_trials unless confirmed (the CLI's --yes)."""
    if n_trials <= space.max_trials or confirm:
        return
    # point at max_trials, or (left at its default) at what makes the sweep large
    given = [
        name
        for name in ("max_trials", "samples", "replicates", "factors", "cells")
        if name in space.model_fields_set
    ]
    message = (
        f"the sweep has {n_trials} trials ({detail}), more than max_trials ({space.max_trials}): "
        "confirm with --yes or raise max_trials"
    )
    raise doc.error((given[0],) if given else (), message, key="max_trials")


def check_baseline(doc: Document, space: Space, cells: list[Cell]) -> None:
    """The baseline names a natural (non-control) cell: statistics compare the others with it."""
    if space.baseline is None:
        return
    by_name = {cell.name: cell for cell in cells}
    if space.baseline not in by_name:
        names = [cell.name for cell in cells]
        listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        hint = suggest(space.baseline, names) or f" (cells: {listed})"
        raise doc.error(("baseline",), f"no cell named {space.baseline!r}" + hint)
    if by_name[space.baseline].control:
        raise doc.error(
            ("baseline",), f"cell {space.baseline!r} is a control (model.control), not a baseline"
        )


def check_ranges(doc: Document, space: Space, trainer: TrainerSpec) -> None:
    """Each range's bounds and choices are valid trial-config values on top of base."""
    base = base_layer(space)
    for key, spec in space.ranges.items():
        if spec.choices is not None:
            probes = [(("ranges", key, "choices", i), value) for i, value in enumerate(spec.choices)]
            for at, value in probes:
                if value in spec.choices[: at[-1]]:
                    raise doc.error(at, f"repeated choice {value!r}", key=f"ranges.{key}.choices")
        else:
            cast = int if spec.integer else float
            probes = [(("ranges", key, bound), cast(getattr(spec, bound))) for bound in ("low", "high")]
        for at, value in probes:
            build(doc, trainer, [base, ({key: value}, {key: Place(dotted(at[:3]), at)})])

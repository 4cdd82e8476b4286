"""A space's trial configs: every grid cell built by the trainer's own config, errors at the YAML key.

A bad value is reported against the YAML key that supplied it, also when it only fails in combination with
another key (the culprit is the latest-written key whose removal makes the config valid).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep.registry import TrainerSpec
from sweep.space.schema import Space, entry_values
from sweep.space.source import Document, KeyPath
from trainers.config import ConfigError, flatten


# -- the validated space ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    """Where a trial-config value came from: the key to name in an error, and the YAML path of its line."""

    key: str
    at: KeyPath


@dataclass(frozen=True)
class Cell:
    """One grid cell: its own values on top of `base`, validated by the trainer's config."""

    index: int
    name: str
    values: dict[str, Any]  # dotted trial-config keys as written (factor levels, or the extra cell's keys)
    overrides: dict[str, Any]  # base + values, as the trial config normalised them (no seed)
    kind: str  # the trainer's run kind of its config (`sweep.kinds`): never pooled with another kind

    @property
    def control(self) -> bool:
        """Reversed by construction: tests the detector."""
        return self.kind == "control"


@dataclass
class SpaceFile:
    """A validated space file. The schema's fields are readable directly (`space.factors`, `space.search`)."""

    model: Space
    path: Path
    text: str
    trainer_spec: TrainerSpec
    seeds: list[int]  # grid: the seeds of every cell
    grid_cells: list[Cell]  # grid: factorial cells, then extra cells, in file order
    defaults: dict[str, Any]  # the trainer's default config, flattened
    doc: Document = field(repr=False)
    base_files: list[tuple[Path, str]] = field(default_factory=list)  # `base_from`'s files, nearest first

    def __getattr__(self, name: str) -> Any:
        # only called for names the dataclass lacks; guarded so that copy and pickle never recurse
        model = self.__dict__.get("model")
        if model is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(model, name)

    @property
    def n_trials(self) -> int:
        return len(self.grid_cells) * len(self.seeds) if self.model.search == "grid" else self.model.samples


@dataclass(frozen=True)
class TrialSpec:
    """One trial: its stable key, its cell, its seed and the trial-config overrides it runs with."""

    trial_key: str
    cell: str
    cell_index: int
    replicate: int
    seed: int
    overrides: dict[str, Any]  # dotted keys: base + cell values + {"seed": seed}
    kind: str  # its cell's run kind (`sweep.kinds`)

    @property
    def control(self) -> bool:
        return self.kind == "control"


# -- trial configs ------------------------------------------------------------------------------------------
Layer = tuple[dict[str, Any], dict[str, Place]]  # values, and where each one was written


def _related(key: str, error_key: str) -> bool:
    """Whether setting `key` can cause an error reported at `error_key` (the key itself, or its section)."""
    return key == error_key or key.startswith(error_key + ".") or error_key.startswith(key + ".")


def _culprit(trainer: TrainerSpec, layers: list[Layer], exc: ConfigError) -> tuple[str, Place]:
    """The written (key, place) to blame for a ConfigError. A section-level error (`model`: d_model not
    divisible by heads) names no single key: blame the latest-written key whose removal makes it valid."""
    written = [(i, key) for i in reversed(range(len(layers))) for key in layers[i][0]]
    related = [(i, key) for i, key in written if _related(key, exc.key)]
    for i, key in related:
        trimmed = [values for values, _ in layers]
        trimmed[i] = {k: v for k, v in trimmed[i].items() if k != key}
        try:
            trainer.build_config(*trimmed)
        except ConfigError:
            continue
        return key, layers[i][1][key]
    i, key = (related or written)[0]
    return key, layers[i][1][key]


def build(doc: Document, trainer: TrainerSpec, layers: list[Layer], context: str = "") -> Any:
    """The trainer's config of the merged layers; a SpaceError at the YAML key that supplied a bad value.

    `context` (which cell) is added when the error comes from a combination rather than the value alone.
    """
    try:
        return trainer.build_config(*(values for values, _ in layers))
    except ConfigError as exc:
        key, place = _culprit(trainer, layers, exc)
        message = exc.message + (context if key != exc.key else "")
        raise doc.error(place.at, message, key=place.key) from None


def settled(trainer: TrainerSpec, config: Any, keys: list[str]) -> tuple[dict[str, Any], str]:
    """(overrides, kind): the given dotted keys with the values the trial config validated (`1` -> `1.0`
    for a float key, so trials carry clean types), and the config's run kind (`TrainerSpec.run_kind`)."""
    flat = flatten(config)
    return {key: flat[key] for key in keys}, trainer.run_kind(config)


def _format(value: Any, digits: int | None = None) -> str:
    """A value as written in a cell name: YAML-like and compact (`true`, `[2,4]`, `0.05`)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, float) and digits:
        return f"{value:.{digits}g}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_format(item, digits) for item in value) + "]"
    return str(value)


def cell_name(values: dict[str, Any], digits: int | None = None) -> str:
    """`train.lr_warmup=0.05,model.pos_enc=abs`."""
    return ",".join(f"{key}={_format(value, digits)}" for key, value in values.items())


def base_layer(space: Space) -> Layer:
    """`base` as a config layer, each key placed at `base.<key>`."""
    return dict(space.base), {key: Place(f"base.{key}", ("base", key)) for key in space.base}


def _cell_entries(space: Space) -> list[tuple[str, Layer, KeyPath, str]]:
    """(name, layer, where the name is written, error context) of every grid cell, in file order."""
    entries = []
    if space.factors or not space.cells:
        keys = list(space.factors)
        for combo in itertools.product(*(list(enumerate(space.factors[key])) for key in keys)):
            values = {key: level for key, (_, level) in zip(keys, combo, strict=True)}
            places = {
                key: Place(f"factors.{key}", ("factors", key, index))
                for key, (index, _) in zip(keys, combo, strict=True)
            }
            name = cell_name(values) or "base"
            context = f" (in cell {name})" if len(keys) > 1 else ""
            entries.append((name, (values, places), ("factors",), context))
    for i, entry in enumerate(space.cells):
        values = entry_values(entry)
        places = {key: Place(f"cells[{i}].{key}", ("cells", i, key)) for key in values}
        name = entry.name or cell_name(values) or "base"
        entries.append((name, (values, places), ("cells", i, "name") if entry.name else ("cells", i), ""))
    return entries


def grid_cells(doc: Document, space: Space, trainer: TrainerSpec) -> list[Cell]:
    """Factorial cells (first factor slowest), then extra cells: names unique, configs valid."""
    cells: list[Cell] = []
    first_index: dict[str, int] = {}
    base = base_layer(space)
    for index, (name, layer, name_at, context) in enumerate(_cell_entries(space)):
        if name in first_index:
            raise doc.error(name_at, f"duplicated cell name {name!r} (cell {first_index[name]} has it too)")
        first_index[name] = index
        config = build(doc, trainer, [base, layer], context)
        keys = list(dict.fromkeys([*space.base, *layer[0]]))
        cells.append(Cell(index, name, layer[0], *settled(trainer, config, keys)))
    return cells

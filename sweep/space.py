"""The space file: load, validate and expand a sweep description (YAML) into trials.

Everything here runs before a sweep starts and must stay fast (no ray, mlflow or torch imports): a bad file
is refused with one line naming the file, the line and the dotted key (`space.yaml:7: factors.model.pos_enc:
...`).

Loading goes in three steps. PyYAML composes the text into a node tree (safe loader only; node tags outside
plain YAML are refused, and duplicated mapping keys are caught here because PyYAML would silently keep the
last one). The constructed data is validated by the pydantic schema below. Then the rules that span fields
are checked: the search mode's requirements, trial-config keys, and every grid cell's merged config, built by
the trainer's own `build_config` so that a bad value is reported against the YAML key that supplied it.
"""

from __future__ import annotations

import difflib
import itertools
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sweep.registry import TRAINERS, TrainerSpec, get_trainer
from trainers.config import ConfigError, flatten

__all__ = [
    "Cell",
    "CellEntry",
    "MlflowSettings",
    "Objective",
    "Range",
    "Resources",
    "Space",
    "SpaceError",
    "SpaceFile",
    "TrialSpec",
    "expand",
    "factor_names",
    "load_space",
    "sample_random",
    "trial_table",
]

KeyPath = tuple[str | int, ...]  # a path into the YAML tree: mapping keys and sequence indices


# -- errors -------------------------------------------------------------------------------------------------
class SpaceError(Exception):
    """A space file is unreadable or invalid. `key` is the dotted YAML key ("" for the whole document),
    `line` the 1-based line in the file (or None), and `str()` one line: `file:line: key: message`."""

    def __init__(self, message: str, key: str = "", line: int | None = None, source: str = ""):
        self.message = " ".join(str(message).split())  # one line, whatever the underlying library wrote
        self.key = key
        self.line = line
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return ": ".join(part for part in (where, self.key, self.message) if part)


def _dotted(parts: KeyPath) -> str:
    """`("cells", 1, "model.ctc_layers")` -> `cells[1].model.ctc_layers`."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _child(node: Node, part: str | int) -> tuple[Node, int] | None:
    """The child of `node` at `part`, with the line that names it (the key's line in a mapping)."""
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == str(part):
                return value_node, key_node.start_mark.line + 1
    elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item, item.start_mark.line + 1
    return None


def _locate(root: Node, parts: KeyPath) -> tuple[int, int]:
    """(line, depth): the line of the deepest node along `parts` that exists, and how many parts matched."""
    node, line = root, root.start_mark.line + 1
    for depth, part in enumerate(parts):
        found = _child(node, part)
        if found is None:
            return line, depth
        node, line = found
    return line, len(parts)


@dataclass
class _Document:
    """The composed file, for turning a key path into a SpaceError at the right line."""

    source: str
    root: Node

    def error(self, parts: KeyPath, message: str, key: str | None = None) -> SpaceError:
        """A SpaceError at the line of `parts`; `key` defaults to the dotted form of `parts`."""
        line = _locate(self.root, parts)[0]
        return SpaceError(message, _dotted(parts) if key is None else key, line, self.source)


# -- reading YAML safely ------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading `1e-4` as a float (YAML 1.1 insists on `1.0e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)

_MERGE_TAG = "tag:yaml.org,2002:merge"
# Only tags the safe constructor knows (str, int, float, bool, null, seq, map, ...): no python/* or custom tag
# gets near a constructor, and the error names the key instead of PyYAML's internals.
_SAFE_TAGS = {tag for tag in yaml.SafeLoader.yaml_constructors if tag} | {_MERGE_TAG}


def _read(path: Path) -> str:
    """The file as text; SpaceError if it is missing or not UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpaceError(f"cannot read the file ({exc.strerror or exc})", source=str(path)) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpaceError("the file is not UTF-8 text", line=line, source=str(path)) from None


def _yaml_error(exc: yaml.YAMLError, source: str, text: str) -> SpaceError:
    """A PyYAML error as a SpaceError at the line where PyYAML noticed the problem."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    if line is None and isinstance(getattr(exc, "position", None), int):  # reader errors: a character offset
        line = text[: exc.position].count("\n") + 1
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return SpaceError(
        f"invalid YAML: {problem}" + (f" ({context})" if context else ""), line=line, source=source
    )


def _check_nodes(doc: _Document, node: Node, parts: KeyPath, seen: set[int]) -> None:
    """Refuse non-plain tags and duplicated mapping keys anywhere under `node`."""
    if id(node) in seen:  # an alias of a node already checked; also ends a walk through recursive anchors
        return
    seen.add(id(node))
    if node.tag not in _SAFE_TAGS:
        message = f"the tag {node.tag!r} is not allowed (plain YAML values only)"
        raise SpaceError(message, _dotted(parts), node.start_mark.line + 1, doc.source)
    if isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _check_nodes(doc, item, (*parts, index), seen)
    elif isinstance(node, MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            _check_nodes(doc, key_node, parts, seen)
            name = key_node.value if isinstance(key_node, ScalarNode) else None
            line = key_node.start_mark.line + 1
            if name is not None and key_node.tag != _MERGE_TAG:
                ident = (key_node.tag, name)
                if ident in first_line:
                    message = f"duplicated key (first given on line {first_line[ident]})"
                    raise SpaceError(message, _dotted((*parts, name)), line, doc.source)
                first_line[ident] = line
            _check_nodes(doc, value_node, (*parts, name) if name is not None else parts, seen)


def _parse(text: str, source: str) -> tuple[_Document, dict[str, Any]]:
    """The composed document and its data (a mapping), or SpaceError for anything that is not one."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise SpaceError(
                "the file is empty (expected a mapping of keys, e.g. `name: ...`)", "", 1, source
            )
        doc = _Document(source, root)
        _check_nodes(doc, root, (), set())
        if not isinstance(root, MappingNode):
            kind = "a list" if isinstance(root, SequenceNode) else "a single value"
            raise doc.error((), f"the file must be a mapping of keys (`name: ...`), not {kind}")
        return doc, loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source, text) from None
    except RecursionError:
        raise SpaceError("the file is nested too deeply", source=source) from None
    finally:
        loader.dispose()


# -- the schema ---------------------------------------------------------------------------------------------
class _Schema(BaseModel):
    # strict: YAML already types its values, so "8" is not silently a number nor `yes` a count
    model_config = ConfigDict(extra="forbid", strict=True)


class Range(_Schema):
    """What random / optuna search draws for one key: `low`..`high` (optionally log, integer) or `choices`."""

    low: float | None = Field(None, allow_inf_nan=False)
    high: float | None = Field(None, allow_inf_nan=False)
    log: bool = False
    integer: bool = False
    choices: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Range:
        if self.choices is not None:
            if self.model_fields_set & {"low", "high", "log", "integer"}:
                raise ValueError("choices cannot be combined with low, high, log or integer")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (or choices)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got low {self.low:g})")
        if self.integer and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError(f"integer: true needs whole-number bounds (got {self.low:g}..{self.high:g})")
        return self


class Objective(_Schema):
    """What an optuna search optimises: a metric each trial reports at its end."""

    metric: str = Field(min_length=1)
    mode: Literal["max", "min"] = "max"


class Resources(_Schema):
    """Ray resources of one trial, and an optional cap on trials running at once."""

    cpus_per_trial: float = Field(1.0, gt=0, allow_inf_nan=False)
    gpus_per_trial: float = Field(0.0, ge=0, allow_inf_nan=False)  # fractional: several trials share a GPU
    max_concurrent: int | None = Field(None, ge=1)


class MlflowSettings(_Schema):
    """Where the sweep is recorded: the experiment (default: the space's name), an optional tracking URI."""

    experiment: str | None = Field(None, min_length=1)  # None: the space's name
    tracking_uri: str | None = None


class CellEntry(BaseModel):
    """An extra grid cell: an optional `name` plus dotted trial-config keys (checked against the trainer)."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str | None = Field(None, min_length=1, max_length=200, pattern=r"^\S(.*\S)?$")


def _entry_values(entry: CellEntry) -> dict[str, Any]:
    """An extra cell's trial-config keys (everything but its name)."""
    return dict(entry.model_extra or {})


class Space(_Schema):
    """The space file's schema. Rules spanning several fields are checked by `load_space`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=100)
    description: str | None = None
    trainer: str = Field(min_length=1)
    base: dict[str, Any] = Field(default_factory=dict)
    factors: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    cells: list[CellEntry] = Field(default_factory=list)
    ranges: dict[str, Range] = Field(default_factory=dict)
    replicates: int | list[int] = 1
    seed: int = 0
    search: Literal["grid", "random", "optuna"] = "grid"
    samples: int | None = Field(None, ge=1)
    objective: Objective | None = None
    baseline: str | None = Field(None, min_length=1)
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(1, ge=0)
    max_trials: int = Field(200, ge=1)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)

    @field_validator("replicates", mode="before")
    @classmethod
    def _replicates(cls, value: Any) -> Any:
        # checked by hand: pydantic's union errors would name the union's members, not the problem
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError(f"needs at least 1 seed per cell (got {value})")
            return value
        if not isinstance(value, list):
            raise ValueError(f"expected a number of seeds or a list of seeds (got {value!r})")
        if not value:
            raise ValueError("the list of seeds is empty")
        for seed in value:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError(f"seeds must be integers (got {seed!r})")
        repeated = sorted({seed for seed in value if value.count(seed) > 1})
        if repeated:
            raise ValueError(f"seeds must be distinct ({', '.join(map(str, repeated))} repeated)")
        return value

    @model_validator(mode="after")
    def _default_experiment(self) -> Space:
        if self.mlflow.experiment is None:
            self.mlflow.experiment = self.name
        return self


# field names per schema section, for "did you mean" on unknown keys
_SECTIONS: dict[str, type[BaseModel]] = {
    "resources": Resources,
    "objective": Objective,
    "mlflow": MlflowSettings,
}


def _allowed_keys(parent: tuple) -> list[str]:
    """The schema's field names at a location, for suggestions (none for free-form mappings)."""
    if not parent:
        return list(Space.model_fields)
    if len(parent) == 1 and parent[0] in _SECTIONS:
        return list(_SECTIONS[parent[0]].model_fields)
    if len(parent) == 2 and parent[0] == "ranges":
        return list(Range.model_fields)
    return []


def _suggest(name: Any, candidates: list[str] | set[str]) -> str:
    """` (did you mean 'x'?)` for a near miss, else ""."""
    close = difflib.get_close_matches(str(name), sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(error: dict) -> str:
    """A pydantic error as a short message, with the offending value where it helps."""
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        return "unknown key" + _suggest(loc[-1], _allowed_keys(loc[:-1]))
    if kind == "missing":
        return "required"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if kind != "value_error" and not isinstance(value, dict | list):
        message += f" (got {value!r})"
    return message


def _schema_error(doc: _Document, exc: ValidationError) -> SpaceError:
    """The first error in file order, keyed by the YAML path that holds the bad value."""
    found = []
    for order, error in enumerate(exc.errors(include_url=False)):
        parts = tuple(part for part in error["loc"] if part != "[key]")
        line, depth = _locate(doc.root, parts)
        # a missing key has no node: name it in full; otherwise keep only the part of the path that exists in
        # the file (pydantic may append names the user never wrote)
        key = _dotted(parts if error["type"] == "missing" else parts[:depth])
        found.append((line, order, SpaceError(_describe(error), key, line, doc.source)))
    return min(found, key=lambda item: item[:2])[2]


# -- the validated space ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Place:
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
    control: bool  # model.control != "none": reversed by construction, never pooled with natural runs


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
    _doc: _Document = field(repr=False)

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
    control: bool


# -- cross-field checks -------------------------------------------------------------------------------------
def _check_trainer(doc: _Document, space: Space) -> TrainerSpec:
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


def _check_mode(doc: _Document, space: Space) -> None:
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
            message = "not a figure the trial reports" + _suggest(
                space.objective.metric, trainer.metric_names
            )
            raise doc.error(("objective", "metric"), message)


def _check_keys(doc: _Document, space: Space, known: set[str]) -> None:
    """Every dotted key in base / factors / cells / ranges is a trial-config key, and none sets the seed."""
    groups: list[tuple[KeyPath, dict[str, Any]]] = [(("base",), space.base), (("factors",), space.factors)]
    groups += [(("cells", i), _entry_values(cell)) for i, cell in enumerate(space.cells)]
    groups.append((("ranges",), space.ranges))
    for parent, keys in groups:
        for key in keys:
            where = (*parent, str(key))
            if key == "seed":
                raise doc.error(where, "the seed cannot be set here: replicates (and seed) choose the seeds")
            if key not in known:
                raise doc.error(where, "unknown trial-config key" + _suggest(key, known))


def _check_levels(doc: _Document, space: Space) -> None:
    """Every factor's values are distinct (a repeated level would silently double a cell)."""
    for key, levels in space.factors.items():
        for index, level in enumerate(levels):
            if level in levels[:index]:
                raise doc.error(("factors", key, index), f"repeated value {level!r}", key=f"factors.{key}")


def _n_cells(space: Space) -> int:
    """Grid cells: the full factorial (one base cell with neither factors nor cells), plus extra cells."""
    factorial = math.prod(len(levels) for levels in space.factors.values())
    return (factorial if space.factors or not space.cells else 0) + len(space.cells)


def _seeds(space: Space) -> list[int]:
    """The seeds every grid cell runs: the explicit list, or `seed`, `seed + 1`, ..."""
    if isinstance(space.replicates, list):
        return list(space.replicates)
    return list(range(space.seed, space.seed + space.replicates))


def _check_size(doc: _Document, space: Space, n_trials: int, detail: str, confirm: bool) -> None:
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


# -- trial configs ------------------------------------------------------------------------------------------
_Layer = tuple[dict[str, Any], dict[str, _Place]]  # values, and where each one was written


def _related(key: str, error_key: str) -> bool:
    """Whether setting `key` can cause an error reported at `error_key` (the key itself, or its section)."""
    return key == error_key or key.startswith(error_key + ".") or error_key.startswith(key + ".")


def _culprit(trainer: TrainerSpec, layers: list[_Layer], exc: ConfigError) -> tuple[str, _Place]:
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


def _build(doc: _Document, trainer: TrainerSpec, layers: list[_Layer], context: str = "") -> Any:
    """The trainer's config of the merged layers; a SpaceError at the YAML key that supplied a bad value.

    `context` (which cell) is added when the error comes from a combination rather than the value alone.
    """
    try:
        return trainer.build_config(*(values for values, _ in layers))
    except ConfigError as exc:
        key, place = _culprit(trainer, layers, exc)
        message = exc.message + (context if key != exc.key else "")
        raise doc.error(place.at, message, key=place.key) from None


def _settled(config: Any, keys: list[str]) -> tuple[dict[str, Any], bool]:
    """(overrides, control): the given dotted keys with the values the trial config validated (`1` -> `1.0`
    for a float key, so trials carry clean types), and whether the config is a control."""
    flat = flatten(config)
    return {key: flat[key] for key in keys}, flat.get("model.control", "none") != "none"


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


def _cell_name(values: dict[str, Any], digits: int | None = None) -> str:
    """`train.lr_warmup=0.05,model.pos_enc=abs`."""
    return ",".join(f"{key}={_format(value, digits)}" for key, value in values.items())


def _base_layer(space: Space) -> _Layer:
    """`base` as a config layer, each key placed at `base.<key>`."""
    return dict(space.base), {key: _Place(f"base.{key}", ("base", key)) for key in space.base}


def _cell_entries(space: Space) -> list[tuple[str, _Layer, KeyPath, str]]:
    """(name, layer, where the name is written, error context) of every grid cell, in file order."""
    entries = []
    if space.factors or not space.cells:
        keys = list(space.factors)
        for combo in itertools.product(*(list(enumerate(space.factors[key])) for key in keys)):
            values = {key: level for key, (_, level) in zip(keys, combo, strict=True)}
            places = {
                key: _Place(f"factors.{key}", ("factors", key, index))
                for key, (index, _) in zip(keys, combo, strict=True)
            }
            name = _cell_name(values) or "base"
            context = f" (in cell {name})" if len(keys) > 1 else ""
            entries.append((name, (values, places), ("factors",), context))
    for i, entry in enumerate(space.cells):
        values = _entry_values(entry)
        places = {key: _Place(f"cells[{i}].{key}", ("cells", i, key)) for key in values}
        name = entry.name or _cell_name(values) or "base"
        entries.append((name, (values, places), ("cells", i, "name") if entry.name else ("cells", i), ""))
    return entries


def _grid_cells(doc: _Document, space: Space, trainer: TrainerSpec) -> list[Cell]:
    """Factorial cells (first factor slowest), then extra cells: names unique, configs valid."""
    cells: list[Cell] = []
    first_index: dict[str, int] = {}
    base = _base_layer(space)
    for index, (name, layer, name_at, context) in enumerate(_cell_entries(space)):
        if name in first_index:
            raise doc.error(name_at, f"duplicated cell name {name!r} (cell {first_index[name]} has it too)")
        first_index[name] = index
        config = _build(doc, trainer, [base, layer], context)
        keys = list(dict.fromkeys([*space.base, *layer[0]]))
        cells.append(Cell(index, name, layer[0], *_settled(config, keys)))
    return cells


def _check_baseline(doc: _Document, space: Space, cells: list[Cell]) -> None:
    """The baseline names a natural (non-control) cell: statistics compare the others with it."""
    if space.baseline is None:
        return
    by_name = {cell.name: cell for cell in cells}
    if space.baseline not in by_name:
        names = [cell.name for cell in cells]
        listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        hint = _suggest(space.baseline, names) or f" (cells: {listed})"
        raise doc.error(("baseline",), f"no cell named {space.baseline!r}" + hint)
    if by_name[space.baseline].control:
        raise doc.error(
            ("baseline",), f"cell {space.baseline!r} is a control (model.control), not a baseline"
        )


def _check_ranges(doc: _Document, space: Space, trainer: TrainerSpec) -> None:
    """Each range's bounds and choices are valid trial-config values on top of base."""
    base = _base_layer(space)
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
            _build(doc, trainer, [base, ({key: value}, {key: _Place(_dotted(at[:3]), at)})])


# -- loading ------------------------------------------------------------------------------------------------
def load_space(path: str | Path, confirm: bool = False) -> SpaceFile:
    """Read and validate a space file; SpaceError (file, line, key) on any problem.

    `confirm` lets through a sweep larger than `max_trials` (the CLI's --yes).
    """
    path = Path(path)
    text = _read(path)
    doc, data = _parse(text, str(path))
    try:
        space = Space.model_validate(data)
    except ValidationError as exc:
        raise _schema_error(doc, exc) from None
    trainer = _check_trainer(doc, space)
    _check_mode(doc, space)
    _check_keys(doc, space, set(trainer.known_keys()))
    defaults = flatten(trainer.build_config())
    if space.search == "grid":
        _check_levels(doc, space)
        seeds, n_cells = _seeds(space), _n_cells(space)
        # before building any cell's config: a mistyped grid may be huge
        _check_size(doc, space, n_cells * len(seeds), f"{n_cells} cells x {len(seeds)} seeds", confirm)
        _build(doc, trainer, [_base_layer(space)])
        cells = _grid_cells(doc, space, trainer)
        _check_baseline(doc, space, cells)
        return SpaceFile(space, path, text, trainer, seeds, cells, defaults, doc)
    _check_size(doc, space, space.samples, f"samples: {space.samples}", confirm)
    _build(doc, trainer, [_base_layer(space)])
    _check_ranges(doc, space, trainer)
    loaded = SpaceFile(space, path, text, trainer, [], [], defaults, doc)
    if space.search == "random":
        sample_random(loaded, space.seed)  # the driver samples with this seed: refuse a bad combination now
    return loaded


# -- expansion ----------------------------------------------------------------------------------------------
def _width(count: int, least: int) -> int:
    """Digits of the largest index, at least `least` (keys sort as text in tables and MLflow)."""
    return max(least, len(str(max(count - 1, 0))))


def expand(space: SpaceFile) -> list[TrialSpec]:
    """Grid: every cell (file order) x every replicate (inner). Random / optuna: [] (see `space.ranges`)."""
    if space.model.search != "grid":
        return []
    cell_width, replicate_width = _width(len(space.grid_cells), 3), _width(len(space.seeds), 2)
    return [
        TrialSpec(
            trial_key=f"c{cell.index:0{cell_width}d}-r{replicate:0{replicate_width}d}",
            cell=cell.name,
            cell_index=cell.index,
            replicate=replicate,
            seed=seed,
            overrides={**cell.overrides, "seed": seed},
            control=cell.control,
        )
        for cell in space.grid_cells
        for replicate, seed in enumerate(space.seeds)
    ]


def _draw(rng: random.Random, spec: Range) -> Any:
    """One value from a range; log ranges are uniform in log space."""
    if spec.choices is not None:
        return rng.choice(spec.choices)
    low, high = spec.low, spec.high
    if spec.integer and spec.log:
        return min(int(high), int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))))
    if spec.integer:
        return rng.randint(int(low), int(high))
    return math.exp(rng.uniform(math.log(low), math.log(high))) if spec.log else rng.uniform(low, high)


def sample_random(space: SpaceFile, rng_seed: int) -> list[TrialSpec]:
    """Random search: `samples` trials drawn from `ranges`, the same for the same `rng_seed`; trial i gets
    seed `seed + i`. Other modes: [] (grid expands, optuna proposes its own points).

    A drawn combination that the trial config refuses is a SpaceError against the range that caused it.
    """
    model, trainer = space.model, space.trainer_spec
    if model.search != "random":
        return []
    rng = random.Random(rng_seed)
    base = _base_layer(model)
    width = _width(model.samples or 0, 3)
    specs = []
    for i in range(model.samples or 0):
        values = {key: _draw(rng, spec) for key, spec in model.ranges.items()}
        places = {key: _Place(f"ranges.{key}", ("ranges", key)) for key in values}
        name = _cell_name(values, digits=3)
        config = _build(space._doc, trainer, [base, (values, places)], f" (sample {name})")
        overrides, control = _settled(config, list(dict.fromkeys([*model.base, *values])))
        seed = model.seed + i
        specs.append(TrialSpec(f"s{i:0{width}d}", name, i, 0, seed, {**overrides, "seed": seed}, control))
    return specs


def factor_names(space: SpaceFile) -> list[str]:
    """The keys a sweep varies: its factors, keys of extra cells that differ between natural (non-control)
    cells, and its ranges. Keys that vary only among controls (model.control itself) are left out."""
    names = list(space.model.factors)
    natural = [cell for cell in space.grid_cells if not cell.control]
    for entry in space.model.cells:
        for key in _entry_values(entry):
            levels = {repr(cell.overrides.get(key, space.defaults.get(key))) for cell in natural}
            if key not in names and len(levels) > 1:
                names.append(key)
    return names + [key for key in space.model.ranges if key not in names]


def trial_table(specs: list[TrialSpec]) -> str:
    """A plain-text table of trials (key, cell, seed, control) for --dry-run, with a count at the end."""
    if not specs:
        return "no trials"
    rows = [("trial", "cell", "seed", "control")]
    rows += [(s.trial_key, s.cell, str(s.seed), "yes" if s.control else "") for s in specs]
    widths = [max(len(row[col]) for row in rows) for col in range(4)]
    lines = [
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    n_cells = len({s.cell_index for s in specs})
    n_controls = len({s.cell_index for s in specs if s.control})
    lines.append(
        f"{len(specs)} trials in {n_cells} cells" + (f" ({n_controls} control)" if n_controls else "")
    )
    return "\n".join(lines)

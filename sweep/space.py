"""The space file: load it safely, validate it completely, and expand it into trials.

Nothing heavy is imported here (no Ray, MLflow or torch), so a bad file is refused in about a second. Every
error is a `SpaceError` whose one-line message names the file, the line and the offending key.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from sweep.registry import TRAINERS, get_trainer

KeyPath = tuple[str | int, ...]


class SpaceError(Exception):
    """A space file is invalid. `key` is the dotted path of the offending entry, `line` is 1-based."""

    def __init__(self, key: str, message: str, line: int | None = None, path: str | Path | None = None):
        self.key, self.message, self.line, self.path = key, message, line, path
        where = ":".join(str(p) for p in (path, line) if p is not None)
        super().__init__(f"{where + ': ' if where else ''}{key + ': ' if key else ''}{message}")


# -- schema ----------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    """A sampled dimension: `{low, high, log?, integer?}` or `{choices: [...]}`."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Range:
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices must not be empty")
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (or choices)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        return self


class Resources(_Strict):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent: int | None = Field(None, ge=1)


class Objective(_Strict):
    metric: str = "reversal_score"
    mode: Literal["max", "min"] = "max"


class MlflowSection(_Strict):
    experiment: str = Field("flipsweep", min_length=1)
    tracking_uri: str | None = None


class Space(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    trainer: str
    base: dict[str, Any] = Field(default_factory=dict)
    factors: dict[str, list[Any]] = Field(default_factory=dict)
    cells: list[dict[str, Any]] = Field(default_factory=list)
    ranges: dict[str, Range] = Field(default_factory=dict)
    replicates: int | list[int] = 1
    seed: int = 0
    search: Literal["grid", "random", "optuna"] = "grid"
    samples: int | None = Field(None, ge=1)
    objective: Objective = Field(default_factory=Objective)
    baseline: str | None = None
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(1, ge=0)
    max_trials: int = Field(200, ge=1)
    mlflow: MlflowSection = Field(default_factory=MlflowSection)
    _cells: list = PrivateAttr(default_factory=list)  # resolved by load_space

    @field_validator("replicates", mode="before")
    @classmethod
    def _replicates(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("replicates must be a positive number or a list of seeds")
        if isinstance(value, int) and value < 1:
            raise ValueError(f"replicates must be at least 1 (got {value})")
        if isinstance(value, list) and (not value or len(set(map(str, value))) != len(value)):
            raise ValueError("the list of seeds must be non-empty and without repeats")
        return value

    @property
    def seeds(self) -> list[int]:
        if isinstance(self.replicates, list):
            return list(self.replicates)
        return [self.seed + i for i in range(self.replicates)]


@dataclass(frozen=True)
class TrialSpec:
    trial_key: str
    cell: str
    cell_index: int
    replicate: int
    seed: int
    overrides: dict[str, Any] = field(hash=False)
    control: bool = False


@dataclass
class Cell:
    name: str
    values: dict[str, Any]  # the cell's own keys (factor levels, or an extra cell's entries)
    sources: dict[str, KeyPath]  # config key -> where in the file it came from
    control: bool = False


# -- YAML with line numbers ----------
def _compose(text: str, path: Path) -> yaml.Node:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpaceError("", f"not valid YAML: {getattr(exc, 'problem', exc)}", _line(mark), path) from None
    finally:
        loader.dispose()
    if node is None:
        raise SpaceError("", "the file is empty", None, path)
    _check_duplicates(node, (), path)
    return node


def _check_duplicates(node: yaml.Node, where: KeyPath, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise SpaceError(_dotted(where + (key,)), "duplicated key", _line(key_node.start_mark), path)
            seen.add(key)
            _check_duplicates(value_node, where + (key,), path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, where + (i,), path)


def _construct(node: yaml.Node, text: str, path: Path) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as exc:  # e.g. a !!python/object tag: SafeLoader refuses to build it
        mark = getattr(exc, "problem_mark", None)
        raise SpaceError("", f"refused: {getattr(exc, 'problem', exc)}", _line(mark), path) from None
    finally:
        loader.dispose()


def _line(mark) -> int | None:
    return mark.line + 1 if mark is not None else None


def _dotted(where: KeyPath) -> str:
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def node_line(root: yaml.Node, where: KeyPath) -> int | None:
    """Line of the deepest node found along `where` (the key's line for mapping entries)."""
    node, line = root, _line(root.start_mark)
    for part in where:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                return line
            line, node = _line(match[0].start_mark), match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = _line(node.start_mark)
        else:
            return line
    return line


# -- loading and checking ----------
def load_space(path: str | Path, confirm: bool = False) -> Space:
    """Read, validate and cross-check a space file; raises SpaceError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpaceError("", f"cannot read: {exc.strerror}", None, path) from None
    root = _compose(text, path)
    data = _construct(root, text, path)
    if not isinstance(data, dict):
        raise SpaceError(
            "", f"expected a mapping of keys, got a {type(data).__name__}", _line(root.start_mark), path
        )

    def fail(where: KeyPath, message: str) -> SpaceError:
        return SpaceError(_dotted(where), message, node_line(root, where), path)

    try:
        space = Space.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in {"int", "list[int]"}))
        message = (
            "unknown key"
            if error["type"] == "extra_forbidden"
            else error["msg"].removeprefix("Value error, ")
        )
        if error["type"] != "extra_forbidden" and not isinstance(error.get("input"), dict | list):
            message += f" (got {error.get('input')!r})"
        raise fail(where, message) from None
    _check(space, fail)
    cells = resolve_cells(space, fail)
    size = len(cells) * len(space.seeds) if space.search == "grid" else space.samples
    if size > space.max_trials and not confirm:
        where = ("max_trials",) if "max_trials" in data else ("replicates",)
        raise fail(where, f"{size} trials exceed max_trials={space.max_trials}; pass --yes to confirm")
    space._cells = cells
    return space


def _check(space: Space, fail) -> None:
    if space.trainer not in TRAINERS:
        raise fail(("trainer",), f"unknown trainer {space.trainer!r}; known: {', '.join(sorted(TRAINERS))}")
    known = get_trainer(space.trainer).known_keys()
    for section in ("base", "factors", "ranges"):
        for key in getattr(space, section):
            if key not in known:
                raise fail(
                    (section, key), "unknown trial-config key (see python -m trainers.train --print-config)"
                )
            if key == "seed" and section != "base":
                raise fail((section, key), "the seed is not a factor: use replicates")
    for key, values in space.factors.items():
        if not values:
            raise fail(("factors", key), "needs at least one value")
        if len({repr(v) for v in values}) != len(values):
            raise fail(("factors", key), "repeats a value")
    for i, cell in enumerate(space.cells):
        for key in cell:
            if key != "name" and key not in known:
                raise fail(("cells", i, key), "unknown trial-config key")
            if key == "seed":
                raise fail(("cells", i, key), "the seed is not a cell value: use replicates")
    if space.search == "grid" and space.ranges:
        raise fail(("ranges",), "ranges are for search: random or optuna (grid uses factors)")
    if space.search != "grid":
        if not space.ranges:
            raise fail(("ranges",), f"search: {space.search} needs ranges")
        if space.samples is None:
            raise fail(("samples",), f"search: {space.search} needs samples")


def resolve_cells(space: Space, fail) -> list[Cell]:
    """Factorial cells then extra cells, each validated against the trainer's config."""
    cells: list[Cell] = []
    if space.search == "grid":
        keys = list(space.factors)
        for combo in itertools.product(*(space.factors[k] for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            name = ",".join(f"{k}={v}" for k, v in values.items()) or "base"
            cells.append(Cell(name, values, {k: ("factors", k) for k in keys}))
        if space.cells and not keys:
            cells = []
        for i, extra in enumerate(space.cells):
            values = {k: v for k, v in extra.items() if k != "name"}
            name = str(extra.get("name", f"cell{i}"))
            cells.append(Cell(name, values, {k: ("cells", i, k) for k in values}))
    else:
        cells.append(Cell("sampled", {}, {}))
    names = [c.name for c in cells]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise fail(
                ("cells", i - (len(names) - len(space.cells)), "name"), f"cell name {name!r} is used twice"
            )
    build = get_trainer(space.trainer).build_config
    base_sources = {k: ("base", k) for k in space.base}
    for cell in cells:
        try:
            config = build(space.base, cell.values)
        except ValueError as exc:  # ConfigError
            key = getattr(exc, "key", "")
            sources = {**base_sources, **cell.sources}
            where = sources.get(key) or next(
                (src for k, src in reversed(sources.items()) if k.startswith(key + ".")), ("base",)
            )
            raise fail(where, getattr(exc, "message", str(exc))) from None
        cell.control = getattr(getattr(config, "model", None), "control", "none") != "none"
    if space.baseline is not None and space.baseline not in names:
        raise fail(("baseline",), f"no cell named {space.baseline!r}")
    return cells


# -- expansion ----------
def expand(space: Space) -> list[TrialSpec]:
    """Grid mode: every cell x every seed, cells in file order, replicates inner."""
    specs = []
    for ci, cell in enumerate(space._cells):
        for ri, seed in enumerate(space.seeds):
            overrides = {**space.base, **cell.values, "seed": seed}
            specs.append(TrialSpec(f"c{ci:03d}-r{ri:02d}", cell.name, ci, ri, seed, overrides, cell.control))
    return specs


def sample_random(space: Space, rng_seed: int) -> list[TrialSpec]:
    """Random mode: `samples` trials, values drawn from the ranges (deterministic in rng_seed)."""
    rng = random.Random(rng_seed)
    specs = []
    for i in range(space.samples or 0):
        values = {key: _draw(spec, rng) for key, spec in space.ranges.items()}
        name = ",".join(f"{k}={_short(v)}" for k, v in values.items())
        seed = space.seed + i
        overrides = {**space.base, **values, "seed": seed}
        control = overrides.get("model.control", "none") != "none"
        specs.append(TrialSpec(f"s{i:04d}", name, i, 0, seed, overrides, control))
    return specs


def _draw(spec: Range, rng: random.Random) -> Any:
    import math

    if spec.choices is not None:
        return rng.choice(spec.choices)
    low, high = (math.log(spec.low), math.log(spec.high)) if spec.log else (spec.low, spec.high)
    value = rng.uniform(low, high)
    value = math.exp(value) if spec.log else value
    return int(round(value)) if spec.integer else value


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def factor_names(space: Space) -> list[str]:
    """Keys that vary between trials: factors, keys set by extra cells, and sampled ranges."""
    names = list(space.factors)
    for cell in space.cells:
        names += [k for k in cell if k != "name" and k not in names]
    return names + [k for k in space.ranges if k not in names]


def trial_table(specs: list[TrialSpec]) -> str:
    width = max([len(s.cell) for s in specs] + [4])
    lines = [f"{'trial':<10} {'cell':<{width}} {'seed':>6}  control"]
    lines += [f"{s.trial_key:<10} {s.cell:<{width}} {s.seed:>6}  {'yes' if s.control else ''}" for s in specs]
    lines.append(f"{len(specs)} trials in {len({s.cell for s in specs})} cells")
    return "\n".join(lines)

"""The space file's schema (pydantic), and its validation errors turned into one line at the right key."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sweep.space.source import Document, SpaceError, dotted, locate


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


def entry_values(entry: CellEntry) -> dict[str, Any]:
    """An extra cell's trial-config keys (everything but its name)."""
    return dict(entry.model_extra or {})


class Space(_Schema):
    """The space file's schema. Rules spanning several fields are checked by `load_space`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=100)
    description: str | None = None
    trainer: str = Field(min_length=1)
    base_from: str | None = Field(None, min_length=1)  # another space file whose `base:` this one starts from
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


def suggest(name: Any, candidates: list[str] | set[str]) -> str:
    """` (did you mean 'x'?)` for a near miss, else ""."""
    close = difflib.get_close_matches(str(name), sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(error: dict) -> str:
    """A pydantic error as a short message, with the offending value where it helps."""
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        return "unknown key" + suggest(loc[-1], _allowed_keys(loc[:-1]))
    if kind == "missing":
        return "required"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if kind != "value_error" and not isinstance(value, dict | list):
        message += f" (got {value!r})"
    return message


def schema_error(doc: Document, exc: ValidationError) -> SpaceError:
    """The first error in file order, keyed by the YAML path that holds the bad value."""
    found = []
    for order, error in enumerate(exc.errors(include_url=False)):
        parts = tuple(part for part in error["loc"] if part != "[key]")
        line, depth, source = locate(doc.root, parts)
        # a missing key has no node: name it in full; otherwise keep only the part of the path that exists in
        # the file (pydantic may append names the user never wrote)
        key = dotted(parts if error["type"] == "missing" else parts[:depth])
        found.append((line, order, SpaceError(_describe(error), key, line, source)))
    return min(found, key=lambda item: item[:2])[2]

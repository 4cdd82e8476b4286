"""What a sweep set out to compare, recorded on its parent run: the analysis inputs, written down once.

The driver builds a `SweepDesign` from the space file when the sweep starts and logs it to the parent run
(`design.json`, plus readable params). The statistics, `sweep.report` and the notebook read it back from
there (`sweep.results.load_sweep`), so that all three group by the same factors and compare every cell with
the same baseline as the driver did.

* `factors`: the keys the statistics group by: the space's factors, keys of extra cells that differ between
  natural cells (so a cells-only space such as `mitigations.yaml` still has its factors), and sampled ranges.
* `cells`: every grid cell with its settings (base + its own values, as the trial config normalised them).
* `baseline`: the declared `baseline`, else the first natural cell in file order (grid only; random and
  optuna samples are each their own cell and are not compared with one another).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sweep.space import SpaceFile, factor_names

ARTIFACT = "design.json"


class CellDesign(BaseModel):
    """One grid cell: its name, its own values, its full settings and whether it is a detector control."""

    model_config = ConfigDict(frozen=True)

    name: str
    values: dict[str, Any]  # the cell's own keys, as written (factor levels, or an extra cell's keys)
    settings: dict[str, Any]  # base + values, as the trial config normalised them (no seed)
    control: bool


class SweepDesign(BaseModel):
    """A sweep's analysis inputs (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    sweep_id: str
    space: str
    trainer: str
    search: Literal["grid", "random", "optuna"]
    factors: list[str]
    levels: dict[str, list[Any]] = Field(default_factory=dict)  # the space's declared factor levels
    cells: list[CellDesign] = Field(default_factory=list)  # grid only
    baseline: str | None = None
    baseline_declared: bool = False
    seeds: list[int] = Field(default_factory=list)  # grid: every cell runs these
    samples: int | None = None  # random / optuna
    ranges: dict[str, dict[str, Any]] = Field(default_factory=dict)
    objective: dict[str, Any] | None = None
    legacy: bool = False  # read back from a parent run that predates design.json: factors from params

    @property
    def control_cells(self) -> list[str]:
        return [cell.name for cell in self.cells if cell.control]

    @property
    def n_trials(self) -> int:
        return len(self.cells) * len(self.seeds) if self.search == "grid" else self.samples or 0

    @classmethod
    def from_space(cls, space: SpaceFile, sweep_id: str) -> SweepDesign:
        cells = [
            CellDesign(name=cell.name, values=cell.values, settings=cell.overrides, control=cell.control)
            for cell in space.grid_cells
        ]
        natural = [cell.name for cell in cells if not cell.control]
        baseline = space.baseline or (natural[0] if natural and space.search == "grid" else None)
        return cls(
            sweep_id=sweep_id,
            space=space.name,
            trainer=space.trainer,
            search=space.search,
            factors=factor_names(space),
            levels=dict(space.factors),
            cells=cells,
            baseline=baseline,
            baseline_declared=space.baseline is not None,
            seeds=list(space.seeds),
            samples=space.samples,
            ranges={key: spec.model_dump(exclude_defaults=True) for key, spec in space.ranges.items()},
            objective=space.objective.model_dump() if space.objective else None,
        )

    def same_experiment(self, other: SweepDesign) -> bool:
        """Whether two designs describe the same trials (a resumed sweep must not change them). Compared in
        their recorded (JSON) form: a setting validated to a tuple reads back from design.json as a list."""
        ignore = {"sweep_id", "legacy"}
        return self.model_dump(mode="json", exclude=ignore) == other.model_dump(mode="json", exclude=ignore)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SweepDesign:
        return cls.model_validate(json.loads(text))

    def params(self) -> dict[str, Any]:
        """The design as parent-run params, for reading in the MLflow UI (design.json is what code reads)."""
        return {
            "space": self.space,
            "trainer": self.trainer,
            "search": self.search,
            "trials": self.n_trials,
            "seeds": self.seeds,
            "baseline": self.baseline or "",
            "baseline_declared": self.baseline_declared,
            "factors": self.factors,
            "control_cells": self.control_cells,
            **{f"factor.{key}": levels for key, levels in self.levels.items()},
            **{f"range.{key}": spec for key, spec in self.ranges.items()},
        }

    @classmethod
    def from_legacy_params(cls, sweep_id: str, params: dict[str, str]) -> SweepDesign:
        """A parent run written before design.json: factors from its `factor.*` params, no baseline unless a
        `baseline` param exists (old sweeps never wrote one)."""
        return cls(
            sweep_id=sweep_id,
            space=params.get("space", ""),
            trainer=params.get("trainer", ""),
            search=params.get("search", "grid"),
            factors=[key.removeprefix("factor.") for key in params if key.startswith("factor.")],
            baseline=params.get("baseline") or None,
            baseline_declared=bool(params.get("baseline")),
            legacy=True,
        )

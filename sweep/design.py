"""What a sweep set out to compare, recorded on its parent run: the analysis inputs, written down once.

The driver builds a `SweepDesign` from the space file when the sweep starts and logs it to the parent run
(`design.json`, plus readable params). The statistics, `sweep.report` and the notebook read it back from
there (`sweep.results.load_sweep`), so that all three group by the same factors and compare every cell with
the same baseline as the driver did.

* `factors`: the keys the statistics group by: the space's factors, keys of extra cells that differ between
  natural cells (so a cells-only space such as `mitigations.yaml` still has its factors), and sampled ranges.
* `cells`: every grid cell with its settings (base + its own values, as the trial config normalised them)
  and its run kind (natural, mitigation, induced or control: `sweep.kinds`).
* `baseline`: the declared `baseline`, else the first natural cell in file order (else the first cell that
  is no control; grid only; random and optuna samples are each their own cell and are not compared with one
  another). Each family of kinds is compared with its own baseline (`baselines`, by the rule in
  `sweep.kinds`): a mitigation cell with the natural baseline, an induced cell with the induced one.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sweep.kinds import RATE_KINDS, family_baselines
from sweep.registry import get_trainer
from sweep.space import SpaceFile, factor_names
from trainers.config import ConfigError

ARTIFACT = "design.json"


class CellDesign(BaseModel):
    """One grid cell: its name, its own values, its full settings, its run kind and whether it is a detector
    control (kind `control`)."""

    model_config = ConfigDict(frozen=True)

    name: str
    values: dict[str, Any]  # the cell's own keys, as written (factor levels, or an extra cell's keys)
    settings: dict[str, Any]  # base + values, as the trial config normalised them (no seed)
    control: bool
    kind: str = ""  # `sweep.kinds`; "" in a design.json written before kinds: derived from the settings


def _derived_kind(trainer: str, cell: CellDesign) -> str:
    """The run kind of a cell recorded before designs held kinds: its settings' kind as the trainer reads it
    now (keys renamed since are read under their new names), else whether it was a control."""
    try:
        spec = get_trainer(trainer)
        settings = {spec.renamed_keys.get(key, key): value for key, value in cell.settings.items()}
        return spec.run_kind(spec.build_config(settings))
    except (KeyError, ConfigError):
        return "control" if cell.control else "natural"


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

    @model_validator(mode="before")
    @classmethod
    def _kinds(cls, data: Any) -> Any:
        """Cells read from a design.json written before kinds get theirs from their settings."""
        if not isinstance(data, dict) or not data.get("cells"):
            return data
        cells = [CellDesign.model_validate(cell) for cell in data["cells"]]
        trainer = data.get("trainer", "")
        cells = [c if c.kind else c.model_copy(update={"kind": _derived_kind(trainer, c)}) for c in cells]
        return {**data, "cells": cells}

    @property
    def control_cells(self) -> list[str]:
        return [cell.name for cell in self.cells if cell.control]

    @property
    def kinds(self) -> dict[str, str]:
        """Every cell's run kind, by cell name."""
        return {cell.name: cell.kind for cell in self.cells}

    def cells_of(self, kind: str) -> list[str]:
        """The names of the cells of one run kind, in file order."""
        return [cell.name for cell in self.cells if cell.kind == kind]

    @property
    def baselines(self) -> dict[str, str]:
        """The baseline cell of each family of kinds that has cells (`sweep.kinds.family_baselines`); none
        without a baseline (a random or optuna search, a legacy design)."""
        if self.baseline is None:
            return {}
        return family_baselines(((cell.name, cell.kind) for cell in self.cells), self.baseline)

    @property
    def n_trials(self) -> int:
        return len(self.cells) * len(self.seeds) if self.search == "grid" else self.samples or 0

    @classmethod
    def from_space(cls, space: SpaceFile, sweep_id: str) -> SweepDesign:
        cells = [
            CellDesign(
                name=cell.name,
                values=cell.values,
                settings=cell.overrides,
                control=cell.control,
                kind=cell.kind,
            )
            for cell in space.grid_cells
        ]
        first = family_baselines(((cell.name, cell.kind) for cell in cells), None)
        default = first.get("natural", first.get("induced")) if space.search == "grid" else None
        # A declared baseline left out by --cells is another part's: this part compares with its default.
        declared = space.baseline if space.baseline in {cell.name for cell in cells} else None
        baseline = declared or default
        return cls(
            sweep_id=sweep_id,
            space=space.name,
            trainer=space.trainer,
            search=space.search,
            factors=factor_names(space),
            levels=dict(space.factors),
            cells=cells,
            baseline=baseline,
            baseline_declared=declared is not None,
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
            **{f"{kind}_cells": self.cells_of(kind) for kind in RATE_KINDS if self.cells_of(kind)},
            **{f"baseline.{family}": cell for family, cell in self.baselines.items()},
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

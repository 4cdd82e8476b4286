"""From a validated space to trials: grid expansion, random draws, the factors a sweep varies, a table."""

from __future__ import annotations

import math
import random
from typing import Any

from tabulate import tabulate

from sweep.kinds import KINDS
from sweep.space.configs import Place, SpaceFile, TrialSpec, base_layer, build, cell_name, settled
from sweep.space.schema import Range, entry_values


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
            kind=cell.kind,
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
    base = base_layer(model)
    width = _width(model.samples or 0, 3)
    specs = []
    for i in range(model.samples or 0):
        values = {key: _draw(rng, spec) for key, spec in model.ranges.items()}
        places = {key: Place(f"ranges.{key}", ("ranges", key)) for key in values}
        name = cell_name(values, digits=3)
        config = build(space.doc, trainer, [base, (values, places)], f" (sample {name})")
        overrides, kind = settled(trainer, config, list(dict.fromkeys([*model.base, *values])))
        seed = model.seed + i
        specs.append(TrialSpec(f"s{i:0{width}d}", name, i, 0, seed, {**overrides, "seed": seed}, kind))
    return specs


def base_overrides(space: SpaceFile) -> dict[str, Any]:
    """`base` as the trial config validated it (types cleaned, corpus paths absolute): what an Optuna trial
    starts from, since Ray runs each trial in its own working folder, not where the driver was started."""
    config = build(space.doc, space.trainer_spec, [base_layer(space.model)])
    return settled(space.trainer_spec, config, list(space.model.base))[0]


def trial_specs(space: SpaceFile) -> list[TrialSpec]:
    """The trials a sweep runs: grid expanded, random drawn ([] for optuna, which proposes its own)."""
    return expand(space) if space.model.search == "grid" else sample_random(space, space.seed)


def factor_names(space: SpaceFile) -> list[str]:
    """The keys a sweep varies: its factors, keys of extra cells that differ between natural (non-control)
    cells, and its ranges. Keys that vary only among controls (model.control itself) are left out."""
    names = list(space.model.factors)
    natural = [cell for cell in space.grid_cells if not cell.control]
    for entry in space.model.cells:
        for key in entry_values(entry):
            levels = {repr(cell.overrides.get(key, space.defaults.get(key))) for cell in natural}
            if key not in names and len(levels) > 1:
                names.append(key)
    return names + [key for key in space.model.ranges if key not in names]


def trial_table(specs: list[TrialSpec]) -> str:
    """A plain-text table of trials (key, cell, seed, kind) for --dry-run, with a count at the end: cells by
    kind (`sweep.kinds`), in the order natural, mitigation, induced, control."""
    if not specs:
        return "no trials"
    rows = [(s.trial_key, s.cell, s.seed, s.kind) for s in specs]
    headers = ("trial", "cell", "seed", "kind")
    table = tabulate(rows, headers=headers, tablefmt="plain", disable_numparse=True)
    kinds = {s.cell_index: s.kind for s in specs}
    by_kind = ", ".join(f"{n} {kind}" for kind in KINDS if (n := sum(k == kind for k in kinds.values())))
    return table + "\n" + f"{len(specs)} trials in {len(kinds)} cells ({by_kind})"

"""The space file: load, validate and expand a sweep description (YAML) into trials.

Everything here runs before a sweep starts and must stay fast (no ray, mlflow or torch imports): a bad file
is refused with one line naming the file, the line and the dotted key (`space.yaml:7: factors.model.pos_enc:
...`).

Loading goes in three steps, one module each. `source` composes the text into a node tree that remembers
lines. `schema` validates the constructed data (pydantic). `checks` applies the rules that span fields: the
search mode's requirements, trial-config keys, and every grid cell's merged config, built by the trainer's own
`build_config` (`configs`) so that a bad value is reported against the YAML key that supplied it. `trials`
expands a validated space into trials.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from sweep.space import checks
from sweep.space.configs import Cell, SpaceFile, TrialSpec, base_layer, build, grid_cells
from sweep.space.schema import CellEntry, MlflowSettings, Objective, Range, Resources, Space, schema_error
from sweep.space.source import SpaceError, parse, read_text
from sweep.space.trials import base_overrides, expand, factor_names, sample_random, trial_specs, trial_table
from trainers.config import flatten

__all__ = [
    "base_overrides",
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
    "trial_specs",
    "trial_table",
]


# -- loading ------------------------------------------------------------------------------------------------
def load_space(path: str | Path, confirm: bool = False) -> SpaceFile:
    """Read and validate a space file; SpaceError (file, line, key) on any problem.

    `confirm` lets through a sweep larger than `max_trials` (the CLI's --yes).
    """
    path = Path(path)
    text = read_text(path)
    doc, data = parse(text, str(path))
    try:
        space = Space.model_validate(data)
    except ValidationError as exc:
        raise schema_error(doc, exc) from None
    trainer = checks.check_trainer(doc, space)
    checks.check_mode(doc, space)
    checks.check_keys(doc, space, set(trainer.known_keys()))
    defaults = flatten(trainer.build_config())
    if space.search == "grid":
        checks.check_levels(doc, space)
        seeds, cells = checks.seeds_of(space), checks.n_cells(space)
        # before building any cell's config: a mistyped grid may be huge
        checks.check_size(doc, space, cells * len(seeds), f"{cells} cells x {len(seeds)} seeds", confirm)
        build(doc, trainer, [base_layer(space)])
        built = grid_cells(doc, space, trainer)
        checks.check_baseline(doc, space, built)
        return SpaceFile(space, path, text, trainer, seeds, built, defaults, doc)
    checks.check_size(doc, space, space.samples, f"samples: {space.samples}", confirm)
    build(doc, trainer, [base_layer(space)])
    checks.check_ranges(doc, space, trainer)
    loaded = SpaceFile(space, path, text, trainer, [], [], defaults, doc)
    if space.search == "random":
        sample_random(loaded, space.seed)  # the driver samples with this seed: refuse a bad combination now
    return loaded

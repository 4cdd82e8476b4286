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

import dataclasses
from pathlib import Path

from pydantic import ValidationError

from sweep.space import checks
from sweep.space.configs import Cell, SpaceFile, TrialSpec, base_layer, build, grid_cells
from sweep.space.schema import (
    CellEntry,
    MlflowSettings,
    Objective,
    Range,
    Resources,
    Space,
    schema_error,
    suggest,
)
from sweep.space.source import Document, SpaceError, parse, read_text
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
    "select_cells",
    "trial_specs",
    "trial_table",
]


# -- loading ------------------------------------------------------------------------------------------------
def load_space(path: str | Path, confirm: bool = False) -> SpaceFile:
    """Read and validate a space file; SpaceError (file, line, key) on any problem.

    `confirm` lets through a sweep larger than `max_trials` (the CLI's --yes).
    """
    return _load(Path(path), confirm, ())


def select_cells(space: SpaceFile, names: list[str]) -> SpaceFile:
    """The space narrowed to the grid cells `names` (the CLI's --cells), their file order and trial keys
    kept: a study too long for one sitting runs a few cells at a time, each part a sweep of its own, and
    `sweep.report --sweep A --sweep B` reads the parts as one study. SpaceError naming an unknown cell."""
    if space.model.search != "grid":
        raise SpaceError(
            f"selects grid cells; this is a {space.model.search} search", "--cells", None, str(space.path)
        )
    known = [cell.name for cell in space.grid_cells]
    for name in names:
        if name not in known:
            listed = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
            hint = suggest(name, known) or f" (cells: {listed})"
            raise SpaceError(f"no cell named {name!r}" + hint, "--cells", None, str(space.path))
    return dataclasses.replace(space, grid_cells=[cell for cell in space.grid_cells if cell.name in names])


def _validate(doc: Document, data: dict) -> Space:
    try:
        return Space.model_validate(data)
    except ValidationError as exc:
        raise schema_error(doc, exc) from None


def _load(path: Path, confirm: bool, chain: tuple[Path, ...]) -> SpaceFile:
    text = read_text(path)
    doc, data = parse(text, str(path))
    space = _validate(doc, data)
    base_files: list[tuple[Path, str]] = []
    if space.base_from is not None:
        parent = _load_base_from(doc, path, space, chain)
        doc = doc.with_base_of(parent.doc)
        space = _validate(doc, {**data, "base": {**parent.model.base, **space.base}})
        base_files = [(parent.path, parent.text), *parent.base_files]
    trainer = checks.check_trainer(doc, space)
    checks.check_mode(doc, space)
    checks.check_keys(doc, space, set(trainer.known_keys()), trainer.renamed_keys)
    defaults = flatten(trainer.build_config())
    if space.search == "grid":
        checks.check_levels(doc, space)
        seeds, cells = checks.seeds_of(space), checks.n_cells(space)
        # before building any cell's config: a mistyped grid may be huge
        checks.check_size(doc, space, cells * len(seeds), f"{cells} cells x {len(seeds)} seeds", confirm)
        build(doc, trainer, [base_layer(space)])
        built = grid_cells(doc, space, trainer)
        checks.check_baseline(doc, space, built)
        return SpaceFile(space, path, text, trainer, seeds, built, defaults, doc, base_files)
    checks.check_size(doc, space, space.samples, f"samples: {space.samples}", confirm)
    build(doc, trainer, [base_layer(space)])
    checks.check_ranges(doc, space, trainer)
    loaded = SpaceFile(space, path, text, trainer, [], [], defaults, doc, base_files)
    if space.search == "random":
        sample_random(loaded, space.seed)  # the driver samples with this seed: refuse a bad combination now
    return loaded


def _load_base_from(doc: Document, path: Path, space: Space, chain: tuple[Path, ...]) -> SpaceFile:
    """The space file that `base_from` names (relative to this file), itself valid, of the same trainer."""
    target = path.parent / space.base_from
    here = (*chain, path.resolve())
    if target.resolve() in here:
        names = " -> ".join(p.name for p in (*here, target.resolve()))
        raise doc.error(("base_from",), f"a cycle of base_from ({names})")
    if not target.is_file():
        raise doc.error(("base_from",), f"no space file {str(target)!r}")
    parent = _load(target, True, here)  # its size does not matter: only its base is used
    if parent.model.trainer != space.trainer:
        message = f"must be {parent.model.trainer!r}, the trainer of {space.base_from!r} (whose base it uses)"
        raise doc.error(("trainer",), message)
    return parent

"""Which runs a sweep may pool and compare: the run kinds (`trainers.config.run_kind`) and their families.

A run is `natural` (no intervention), `mitigation` (one of the paper's mitigations on natural training),
`induced` (training pushed along the paper's mechanism, mitigated or not) or `control` (reversed by
construction). The statistics (`sweep.stats`), the report and the design all follow this one rule:

* **A rate never pools two kinds.** The natural rate counts natural runs only, mitigation and induced runs
  each have their own rate, and a control cell's reversed / decided is the detector's sensitivity.
* **A comparison stays within a family.** The `natural` family is natural and mitigation cells: a mitigation
  cell is compared with the natural baseline (the paper's comparison: natural training plus a mitigation).
  The `induced` family is the induced cells: each (mitigated or not) is compared with the induced baseline.
  The Fisher tests, the logistic regression, the factor-level (marginal) rates and the per-factor
  time-to-flip curves are computed within one family; a natural cell is never compared with an induced one.
* **Each family has its own baseline**: the declared `baseline` when it belongs to that family, else the
  family's first cell of its own kind in file order (the first natural cell; the first induced cell), else
  its first cell. Controls belong to no family.

An undecided run is counted by its reason (`trainers.detector.verdict.UNDECIDED_REASONS`) wherever runs are
counted: `reasons_text` writes such counts the one way the progress view, the tables and the report show them.

Light on purpose (no pandas): the design and the progress view import it while a sweep runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from trainers.config import RUN_KINDS
from trainers.detector.verdict import UNDECIDED_REASONS

KINDS: tuple[str, ...] = RUN_KINDS  # natural, mitigation, induced, control
RATE_KINDS = tuple(kind for kind in KINDS if kind != "control")  # kinds whose runs give a reversal rate
FAMILIES: dict[str, tuple[str, ...]] = {"natural": ("natural", "mitigation"), "induced": ("induced",)}
FAMILY_TEXT = {"natural": "natural and mitigation", "induced": "induced"}  # the runs a family holds, in words


def family_of(kind: str) -> str | None:
    """The family a kind is compared within (None for a control)."""
    return next((family for family, kinds in FAMILIES.items() if kind in kinds), None)


def family_baselines(cells: Iterable[tuple[str, str]], declared: str | None) -> dict[str, str]:
    """The baseline cell of every family that has cells, from (cell name, kind) pairs in file order and the
    declared baseline (see the module docstring). Families without cells are absent."""
    cells = list(cells)
    kind_of = dict(cells)
    baselines = {}
    for family, kinds in FAMILIES.items():
        members = [name for name, kind in cells if kind in kinds]
        if not members:
            continue
        if declared is not None and kind_of.get(declared) in kinds:
            baselines[family] = declared
        else:
            own = [name for name in members if kind_of[name] == family]
            baselines[family] = (own or members)[0]
    return baselines


def reasons_text(counts: Mapping[str, Any]) -> str:
    """`sink 1, focus 1`: the undecided reasons counted in `counts` (keys `undecided_<reason>`), the most
    frequent first ("" when none)."""
    found = [(reason, int(counts.get(f"undecided_{reason}", 0))) for reason in UNDECIDED_REASONS]
    return ", ".join(f"{reason} {n}" for reason, n in sorted(found, key=lambda item: -item[1]) if n)

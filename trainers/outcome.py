"""What one trial found, as one typed record: the trial writes it, everything downstream reads it.

`Trial.finish` builds a `TrialOutcome` from the detector's verdict and writes it once, into `result.json`. The
Ray trainable reports it, the sweep's recorder logs it to the trial's MLflow run under the fixed names below,
and `TrialOutcome.read` / `TrialOutcome.from_mlflow` read it back, for the statistics, `sweep.report` and the
notebook. Nothing downstream recomputes a label or a figure from curves.

Numeric verdict figures (the backward phase, the flip mechanism, the last evaluation's directions, ...) travel
generically in `figures`: the names are declared in `trainers.reported.VERDICT_FIGURES`, and a new figure is
one line there plus its computation in `trainers.detector.verdict.verdict`.

On an MLflow run (names fixed here, read back by `from_mlflow`):

* tags `label` (normal / reversed / undecided / failed), `kind` (natural / mitigation / induced / control,
  `trainers.config.run_kind`), for an undecided trial `reason` (`trainers.detector.verdict.UNDECIDED_REASONS`)
  and for a failed trial `error` (last line);
* metrics `verdict/decided` (0/1, every finished or failed trial), `verdict/reversed` (0/1, decided trials
  only, so that its mean over any group of runs is that group's reversal rate among decided runs, the rate
  of `sweep.stats`), `verdict/shifted`, `verdict/flip_block`, `verdict/time_to_flip` (when there is one),
  `verdict/reason_code` (0 decided, else the reason's code), `verdict/<figure>` for every figure, and
  `trial/*` for what the trial cost.

Light on purpose (pydantic only): the driver imports it without torch.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainers.config import RunKind
from trainers.detector.verdict import LABELS, REASON_CODES, UNDECIDED_REASONS
from trainers.reported import is_verdict_figure

RESULT_FILE = "result.json"
ATTENTION_MAPS = "attention_maps"  # one cross-attention image per evaluation: attention_maps/step_000050.png
ATTENTION_MAP_KEY = "attention"  # the MLflow image key those images are logged under, by step

ENDED_LABELS = (*LABELS, "failed")  # every label a trial can end with: the detector's, or failed
Label = Literal[(*ENDED_LABELS, "incomplete")]  # incomplete: read back from a run that has not ended
DECIDED = tuple(label for label in LABELS if label != "undecided")  # the labels a reversal rate counts

# Names the fixed fields use on an MLflow run; no figure may take one of them.
_FIXED_METRICS = ("decided", "reversed", "reason_code", "shifted", "flip_block", "time_to_flip")
_COST_FIELDS = ("train_seconds", "detector_seconds", "detector_share", "steps_per_second")


class TrialCost(BaseModel):
    """What the trial cost: seconds training and in the detector, and training speed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_seconds: float = 0.0
    detector_seconds: float = 0.0
    detector_share: float = 0.0
    steps_per_second: float = 0.0
    device: str = ""


class TrialOutcome(BaseModel):
    """One trial's answer: its label and the figures behind it.

    `label` is the detector's verdict, or `failed` (the trial crashed: `failure` says how), or `incomplete`
    (read back from a run that has not ended). `figures` holds the verdict's numeric figures by name (see
    `trainers.reported.VERDICT_FIGURES`); a figure the run could not compute is absent, never NaN.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: Label
    kind: RunKind = "natural"  # trainers.config.run_kind: never pooled across kinds
    reason: str | None = None  # why an undecided trial is undecided (UNDECIDED_REASONS); None otherwise
    steps_done: int = 0
    early_stopped: bool = False
    flip_block: int | None = None  # first block from which every later block reads reversed
    time_to_flip: int | None = None  # first step from which the label stays reversed
    shifted: bool = False  # monotonic attention that misses the true spans (see trainers.detector.evaluate)
    figures: dict[str, float] = Field(default_factory=dict)
    cost: TrialCost = Field(default_factory=TrialCost)
    failure: str | None = None  # a failed trial's error, last line

    @field_validator("reason")
    @classmethod
    def _known_reason(cls, reason: str | None) -> str | None:
        if reason is not None and reason not in UNDECIDED_REASONS:
            raise ValueError(f"unknown reason {reason!r}; one of {UNDECIDED_REASONS}")
        return reason

    @field_validator("figures", mode="before")
    @classmethod
    def _finite_numbers(cls, figures: dict[str, Any]) -> dict[str, float]:
        clash = sorted(set(figures) & set(_FIXED_METRICS))
        if clash:
            raise ValueError(f"figure names {clash} are taken by the outcome's own fields")
        return {
            name: float(value)
            for name, value in figures.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        }

    # -- built by the trial ---------------------------------------------------------------------------------
    @classmethod
    def from_verdict(
        cls, verdict: dict[str, Any], *, kind: RunKind, steps_done: int, early_stopped: bool, cost: TrialCost
    ) -> TrialOutcome:
        """The outcome of a finished trial from `trainers.detector.verdict.verdict`'s dict: its label, flip
        block, time to flip and shifted flag, and every other number as a figure."""
        fixed = {"label", "reason", "flip_block", "time_to_flip", "shifted", "step"}  # step: = steps_done
        figures = {name: value for name, value in verdict.items() if name not in fixed}
        return cls(
            label=verdict["label"],
            kind=kind,
            reason=verdict.get("reason"),
            steps_done=steps_done,
            early_stopped=early_stopped,
            flip_block=verdict.get("flip_block"),
            time_to_flip=verdict.get("time_to_flip"),
            shifted=bool(verdict.get("shifted", False)),
            figures=figures,
            cost=cost,
        )

    @classmethod
    def failed(cls, error: str, *, kind: RunKind = "natural") -> TrialOutcome:
        """The outcome of a crashed trial (an exception, a NaN loss): `failure` is the error's last line."""
        lines = [line for line in error.strip().splitlines() if line.strip()]
        return cls(label="failed", kind=kind, failure=(lines[-1] if lines else "unknown error")[:500])

    # -- properties the statistics use ----------------------------------------------------------------------
    @property
    def control(self) -> bool:
        """Time reversed by construction: tests the detector, never pooled with any other kind."""
        return self.kind == "control"

    @property
    def decided(self) -> bool:
        """Reversed or normal: the trial counts in a reversal rate."""
        return self.label in DECIDED

    @property
    def undeclared_figures(self) -> list[str]:
        """Figures whose names `trainers.reported` does not declare (a new figure left undocumented)."""
        return [name for name in self.figures if not is_verdict_figure(name)]

    def row(self) -> dict[str, Any]:
        """One flat row for a trials table: label, kind, control, reason, steps (done), flip block, time to
        flip, shifted, early_stopped, failure, then every figure by name (None / NaN where absent)."""
        return {
            "label": self.label,
            "kind": self.kind,
            "control": self.control,
            "reason": self.reason,
            "steps": self.steps_done,
            "flip_block": math.nan if self.flip_block is None else self.flip_block,
            "time_to_flip": math.nan if self.time_to_flip is None else self.time_to_flip,
            "shifted": self.shifted,
            "early_stopped": self.early_stopped,
            "failure": self.failure,
            **self.figures,
        }

    # -- result.json ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def read(cls, path: str | Path) -> TrialOutcome:
        """The outcome in a trial's `result.json` (the file, or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULT_FILE
        return cls.model_validate(json.loads(path.read_text())["outcome"])

    # -- MLflow ---------------------------------------------------------------------------------------------
    def mlflow_tags(self) -> dict[str, str]:
        tags = {"label": self.label, "kind": self.kind}
        if self.reason is not None:
            tags["reason"] = self.reason
        if self.failure is not None:
            tags["error"] = self.failure
        return tags

    def mlflow_metrics(self) -> dict[str, float]:
        """The outcome as numeric run metrics (summary values: a sweep logs them at step 0, which the MLflow
        UI charts as one bar per run, or per group of runs)."""
        metrics: dict[str, float] = {"verdict/decided": float(self.decided)}
        if self.decided:  # absent otherwise: a group's mean is then reversed / decided, like sweep.stats
            metrics["verdict/reversed"] = float(self.label == "reversed")
        if self.label == "failed":
            return metrics
        metrics["verdict/reason_code"] = REASON_CODES.get(self.reason, 0.0)
        metrics["verdict/shifted"] = float(self.shifted)
        if self.flip_block is not None:
            metrics["verdict/flip_block"] = float(self.flip_block)
        if self.time_to_flip is not None:
            metrics["verdict/time_to_flip"] = float(self.time_to_flip)
        metrics.update({f"verdict/{name}": value for name, value in self.figures.items()})
        metrics["trial/steps_done"] = float(self.steps_done)
        metrics["trial/early_stopped"] = float(self.early_stopped)
        metrics.update({f"trial/{name}": float(getattr(self.cost, name)) for name in _COST_FIELDS})
        return metrics

    @classmethod
    def from_mlflow(cls, tags: dict[str, str], metrics: dict[str, float], status: str) -> TrialOutcome:
        """The outcome recorded on a trial's MLflow run (tags, latest metric values, run status).

        A run that ended FAILED is `failed`; one without a label yet is `incomplete`. Runs recorded before
        `verdict/decided` existed carry their shifted flag as a tag; that is read too.
        """
        # Runs recorded before the kind existed carry only whether they were a control.
        kind = tags.get("kind") or ("control" if tags.get("control") == "True" else "natural")
        if status == "FAILED" or tags.get("label") == "failed":
            return cls(label="failed", kind=kind, failure=tags.get("error") or "unknown error")
        label = tags.get("label")
        if label not in ("normal", "reversed", "undecided"):
            return cls(label="incomplete", kind=kind)

        def whole(name: str) -> int | None:
            value = metrics.get(name)
            return None if value is None or not math.isfinite(value) else int(value)

        shifted = metrics.get("verdict/shifted")
        figures = {
            name.removeprefix("verdict/"): value
            for name, value in metrics.items()
            if name.startswith("verdict/") and name.removeprefix("verdict/") not in _FIXED_METRICS
        }
        return cls(
            label=label,
            kind=kind,
            reason=tags.get("reason") if label == "undecided" else None,
            steps_done=whole("trial/steps_done") or whole("final/steps_done") or 0,
            early_stopped=bool(metrics.get("trial/early_stopped", 0.0)),
            flip_block=whole("verdict/flip_block"),
            time_to_flip=whole("verdict/time_to_flip"),
            shifted=bool(shifted) if shifted is not None else tags.get("shifted") == "True",
            figures=figures,
            cost=TrialCost(**{name: metrics.get(f"trial/{name}", 0.0) for name in _COST_FIELDS}),
        )


_STEP_FILE = re.compile(r"step_(\d+)\.png")


def attention_map_path(out_dir: str | Path, step: int) -> Path:
    """Where a trial saves the cross-attention image of its evaluation at `step`."""
    return Path(out_dir) / ATTENTION_MAPS / f"step_{step:06d}.png"


def attention_maps(out_dir: str | Path) -> dict[int, Path]:
    """The per-evaluation cross-attention images a trial saved, by step."""
    folder = Path(out_dir) / ATTENTION_MAPS
    found = (_STEP_FILE.fullmatch(path.name) for path in folder.glob("step_*.png")) if folder.is_dir() else ()
    return {int(match[1]): folder / match[0] for match in found if match}

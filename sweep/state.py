"""The sweep state file (`<storage>/<sweep id>/flipsweep.json`): what `--resume` needs to continue a sweep.

Written atomically (a temporary file in the same folder, flushed to disk, then renamed over the old one), so a
driver killed while writing leaves the previous state or the new one, never half of one. Reading is guarded:
an unreadable state file (truncated by an older writer, edited by hand, from another version) is a
`StateError` naming the file, and `find_resumable` skips such files and says which.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

STATE_FILE = "flipsweep.json"
HEARTBEAT_SECONDS = 5.0


class StateError(Exception):
    """A state file cannot be used; `str()` is one line naming the file and why."""


class SweepState(BaseModel):
    """Where a sweep is recorded and how far it got."""

    model_config = ConfigDict(extra="ignore")

    name: str  # the space's name
    sweep_id: str
    tracking_uri: str
    experiment: str
    space_file: str
    parent_run_id: str | None = None  # None until the parent run exists
    status: Literal["starting", "running", "interrupted", "complete"] = "starting"
    created: float
    # The wall time of all its parts (a resumed sweep is run in several): the running part rewrites it every
    # `HEARTBEAT_SECONDS`, so a driver killed outright loses at most that much of it.
    wall_seconds: float | None = None
    parts: int = 1


def write_state(sweep_dir: Path, state: SweepState) -> None:
    """Replace the sweep's state file atomically."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=sweep_dir, prefix=f".{STATE_FILE}.", delete=False) as tmp:
        tmp.write(state.model_dump_json(indent=2) + "\n")
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, sweep_dir / STATE_FILE)


def read_state(sweep_dir: Path) -> SweepState:
    """The sweep's state; StateError if the file is missing, not JSON or not a state."""
    path = sweep_dir / STATE_FILE
    try:
        return SweepState.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise StateError(f"no sweep state at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"unreadable sweep state {path} ({_reason(exc)})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise StateError(f"unreadable sweep state {path} ({where}: {first['msg']})") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc.msg} at line {exc.lineno}"
    return type(exc).__name__ + (f": {exc.strerror}" if getattr(exc, "strerror", None) else "")


def new_state(sweep_dir: Path, name: str, tracking_uri: str, experiment: str, space_file: Path) -> SweepState:
    return SweepState(
        name=name,
        sweep_id=sweep_dir.name,
        tracking_uri=tracking_uri,
        experiment=experiment,
        space_file=str(space_file.resolve()),
        created=time.time(),
    )


def find_resumable(root: Path, name: str, sweep_id: str) -> tuple[Path, SweepState, list[StateError]]:
    """The sweep to resume: `sweep_id`, or ("latest") the newest unfinished sweep of the space `name`.

    Returns its folder, its state and the unreadable state files skipped on the way; StateError (one line)
    when there is nothing to resume.
    """
    if sweep_id != "latest":
        state = read_state(root / sweep_id)  # a named sweep with a broken state: refuse, do not guess
        if state.status == "complete":
            raise StateError(f"sweep {sweep_id} is complete; there is nothing to resume")
        return root / sweep_id, state, []
    found, skipped = [], []
    for path in sorted(root.glob(f"*/{STATE_FILE}")):
        try:
            state = read_state(path.parent)
        except StateError as exc:
            skipped.append(exc)
            continue
        if state.name == name and state.status != "complete":
            found.append((state.created, path.parent, state))
    if not found:
        also = "; skipped " + "; ".join(map(str, skipped)) if skipped else ""
        raise StateError(f"no unfinished sweep of {name!r} under {root} to resume{also}")
    _, sweep_dir, state = max(found, key=lambda item: item[0])
    return sweep_dir, state, skipped

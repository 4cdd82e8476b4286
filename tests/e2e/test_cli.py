"""The driver's command line on bad input: exit code 2, one line naming the key and line, nothing written.

One real interpreter per behaviour (a bad space, a dry run, an unreachable server, --help); the same entry
point, `sweep.run.main`, checks every bad and every shipped space in this process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((ROOT / "tests" / "sweep" / "bad_spaces").glob("*.yaml"))


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": ""}
    command = [sys.executable, "-m", "sweep.run", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def expectation(path: Path) -> tuple[str, str]:
    match = re.match(r"# expect: key=(\S*) line=(\S+)", path.read_text().splitlines()[0])
    assert match, f"{path.name} lacks its '# expect:' line"
    return match.group(1), match.group(2)


def test_corpus_is_large_enough():
    assert len(BAD) >= 20


def run_in_process(args: list[str], cwd: Path, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """`python -m sweep.run ARGS` in `cwd`, as this process's call of `sweep.run.main`."""
    import sweep.run

    def no_sweep(space):
        raise AssertionError(f"{args}: the space passed validation and would have run")

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(sweep.run, "prepare_data", no_sweep)  # the step before the driver
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = sweep.run.main(args)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def assert_refused(path: Path, done: subprocess.CompletedProcess, cwd: Path) -> None:
    """Exit 2, one line naming the file's line and the key, and nothing written where it ran."""
    key, line = expectation(path)
    assert done.returncode == 2, (path.name, done.stdout, done.stderr)
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1, (path.name, message)
    assert f"{path.name}:{line}:" in message or line == "none", (path.name, message)
    assert key in message, (path.name, message)
    assert list(cwd.iterdir()) == [], (path.name, list(cwd.iterdir()))  # no mlflow.db, no results


def test_a_bad_space_on_the_command_line_exits_2_and_writes_nothing(tmp_path):
    path = ROOT / "tests" / "sweep" / "bad_spaces" / "unknown_factor.yaml"
    assert_refused(path, run_cli([str(path)], tmp_path), tmp_path)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_every_bad_space_exits_2_and_writes_nothing(path, tmp_path, monkeypatch, capsys):
    assert_refused(path, run_in_process([str(path)], tmp_path, monkeypatch, capsys), tmp_path)


def test_unreachable_tracking_server_stops_before_training(tmp_path):
    space = ROOT / "search_spaces" / "quick.yaml"
    done = run_cli([str(space), "--tracking-uri", "http://127.0.0.1:9"], tmp_path)
    assert done.returncode == 3
    assert "unreachable" in done.stderr and "127.0.0.1:9" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_dry_run_on_the_command_line_prints_the_trials_and_writes_nothing(tmp_path):
    done = run_cli([str(ROOT / "search_spaces" / "quick.yaml"), "--dry-run"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "trials" in done.stdout and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("space", sorted((ROOT / "search_spaces").rglob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_spaces_are_valid(space, tmp_path, monkeypatch, capsys):
    done = run_in_process([str(space), "--dry-run"], tmp_path, monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    assert "trials" in done.stdout


def test_help_documents_every_exit_code(tmp_path):
    from sweep.exit_codes import MEANING, Exit

    done = run_cli(["--help"], tmp_path)
    assert done.returncode == 0
    lines = done.stdout.split("exit codes:")[1].splitlines()
    for code in Exit:
        assert any(line.split()[:1] == [str(code.value)] and MEANING[code] in line for line in lines), code

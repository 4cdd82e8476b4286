"""What a person sees of Ray during a real local sweep: no token-authentication notice, and a trial whose
worker the OS killed mid-trial told in one line while Tune runs it again from its checkpoint (the traceback
kept in the trial's error.txt), with its outcome recorded once."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import TINY
from tests.e2e.test_sweep import runs, sweep, wait_for_a_checkpoint, write_space

pytestmark = pytest.mark.slow


def trial_worker(driver: subprocess.Popen) -> psutil.Process:
    """The Ray worker process that runs the sweep's one trial (Ray names it after the trainable's actor)."""
    deadline = time.time() + 120
    while time.time() < deadline:
        for process in psutil.Process(driver.pid).children(recursive=True):
            try:
                if "ImplicitFunc" in " ".join(process.cmdline()):
                    return process
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.5)
    raise AssertionError("no trial worker found within 120 s")


def test_a_worker_killed_mid_trial_is_one_line_and_the_trial_resumes_from_its_checkpoint(tmp_path):
    space = write_space(
        tmp_path / "space.yaml",
        base={**TINY, "train.steps": 200},
        factors={"model.ffn_scale": [1.0]},
        max_failures=1,
    )
    driver = sweep(tmp_path, space, wait=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_a_checkpoint(tmp_path, driver)
        worker = trial_worker(driver)
        worker.send_signal(signal.SIGKILL)  # as the OS does to a process it must stop (out of memory)
        out, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    screen = out + err
    assert driver.returncode == 0, screen[-3000:]
    assert "Token authentication is enabled" not in screen  # Ray's notice of its own default
    assert "Traceback" not in screen and "ActorDiedError" not in screen, screen[-3000:]
    (said,) = [line for line in screen.splitlines() if "running it again from its last checkpoint" in line]
    assert said.startswith("model.ffn_scale=1.0 seed 0 (c000-r00): its worker process died"), said
    assert "(retry 1 of 1)" in said
    error_file = Path(said.rsplit("details in ", 1)[1])
    assert error_file.is_relative_to(tmp_path / "results")  # in the sweep's own folder
    assert "Failure # 1" in error_file.read_text()  # the details: every failure, in the trial's error.txt
    # Ray's raylet pushes one line of its own about the lost worker to the driver's stdout (no switch in
    # Ray 2.60); nothing else of Ray's is shown.
    ray_lines = [line for line in screen.splitlines() if "(raylet)" in line]
    assert len(ray_lines) <= 1, ray_lines
    _, parents, children = runs(tmp_path)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    assert children[0].data.tags["label"] in {"normal", "reversed", "undecided"}
    assert children[0].data.tags["kind"] == children[0].data.params["kind"] == "natural"
    assert children[0].data.metrics["trial/steps_done"] == 200.0

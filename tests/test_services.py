"""Real services, started by the tests on 127.0.0.1 and stopped by process group: an MLflow tracking server,
a Ray head node, and two sweeps writing to one store at once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_sweep import ROOT, runs, sweep, write_space

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float) -> float:
    started = time.time()
    while time.time() - started < seconds:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.time() - started
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    command = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    server = subprocess.Popen(
        command, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        startup = wait_for(f"http://127.0.0.1:{port}/health", 120)
        print(f"mlflow server up in {startup:.1f} s")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the whole group: uvicorn workers and job runners too
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def rest(server: str, endpoint: str, payload: dict) -> dict:
    request = urllib.request.Request(
        f"{server}/api/2.0/mlflow/{endpoint}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_sweep_against_a_tracking_server(tmp_path, mlflow_server):
    started = time.time()
    done = sweep(tmp_path, write_space(tmp_path / "space.yaml"), "--tracking-uri", mlflow_server)
    print(f"sweep against the server: {time.time() - started:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    url = f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=test"
    with urllib.request.urlopen(url, timeout=30) as response:
        experiment = json.loads(response.read())["experiment"]
    found = rest(mlflow_server, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in found]
    parents = [r for r, t in zip(found, tags, strict=True) if t.get("flipsweep.role") == "parent"]
    children = [(r, t) for r, t in zip(found, tags, strict=True) if t.get("flipsweep.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    parent_id = parents[0]["info"]["run_id"]
    assert all(t["mlflow.parentRunId"] == parent_id for _, t in children)
    assert {r["info"]["status"] for r, _ in children} == {"FINISHED"}
    assert parents[0]["info"]["status"] == "FINISHED"
    # Artifacts travel through the server's proxy into its own artifact folder.
    assert list((tmp_path / "artifacts").rglob("rate_by_factor.png"))
    assert list((tmp_path / "artifacts").rglob("attention.png"))


@pytest.fixture
def ray_head(tmp_path):
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": ""}
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-cpus",
        "2",
        "--include-dashboard",
        "false",
        "--disable-usage-stats",
    ]
    subprocess.run(command, check=True, capture_output=True, env=env, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        # `ray start` daemonises its processes in their own sessions; `ray stop` ends them all.
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120)


def test_sweep_on_a_ray_cluster(tmp_path, ray_head):
    space = write_space(tmp_path / "space.yaml")
    # A head started with defaults uses token auth; a driver connecting by address must opt in to send it.
    done = sweep(tmp_path, space, env={"RAY_ADDRESS": ray_head, "RAY_AUTH_MODE": "token"})
    assert done.returncode == 0, done.stderr[-3000:]
    _, parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 2
    assert {c.info.status for c in children} == {"FINISHED"}


def test_two_sweeps_into_one_store_do_not_mix(tmp_path):
    first = write_space(tmp_path / "first.yaml", name="first", factors={"model.ffn_scale": [0.5]})
    second = write_space(tmp_path / "second.yaml", name="second", factors={"model.ffn_scale": [1.0]})
    # Create the store first: two clients creating the same sqlite schema at once is a known MLflow race.
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
    a = sweep(tmp_path, first, "--num-cpus", "1", wait=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    b = sweep(tmp_path, second, "--num-cpus", "1", wait=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for driver in (a, b):
        _, err = driver.communicate(timeout=600)
        assert driver.returncode == 0, err[-3000:]
    _, parents, children = runs(tmp_path)
    assert len(parents) == 2 and len(children) == 2
    by_parent = {p.info.run_id: p.data.tags["flipsweep.sweep_id"] for p in parents}
    for child in children:
        sweep_id = by_parent[child.data.tags["mlflow.parentRunId"]]
        assert child.data.tags["flipsweep.sweep_id"] == sweep_id
        expected = "0.5" if sweep_id.startswith("first") else "1.0"
        assert child.data.params["model.ffn_scale"] == expected


def test_mlflow_ui_shows_the_reversal_rate_plot(tmp_path, mlflow_server):
    """A real browser opens the sweep's parent run in the MLflow UI and finds the reversal-rate plot."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    done = sweep(tmp_path, write_space(tmp_path / "space.yaml"), "--tracking-uri", mlflow_server)
    assert done.returncode == 0, done.stderr[-3000:]
    _, parents, _ = runs(mlflow_server)
    parent = parents[0]
    url = f"{mlflow_server}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}/artifacts"
    screenshots = ROOT / "test-artifacts"
    screenshots.mkdir(exist_ok=True)
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_text("plots", exact=True).first.click(timeout=60_000)
            page.get_by_text("rate_by_factor.png").first.click(timeout=30_000)
            # The preview is an <img> (its src may be a blob: URL); wait until one has really loaded.
            loaded = "() => [...document.images].some(img => img.complete && img.naturalWidth > 300)"
            try:
                page.wait_for_function(loaded, timeout=60_000)
            finally:
                page.screenshot(path=str(screenshots / "mlflow_ui_parent_run.png"))
        finally:
            browser.close()

"""Real services, started by the tests on 127.0.0.1 and stopped by process group: an MLflow tracking server,
a Ray head node, and two sweeps writing to one store at once."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ALIGNING
from tests.e2e.test_sweep import ROOT, runs, sweep, write_space

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e-services")]  # its server: one worker
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


@pytest.fixture(scope="module")
def server_folder(tmp_path_factory) -> Path:
    """The tracking server's own folder: its store and its artifact folder."""
    return tmp_path_factory.mktemp("mlflow-server")


@pytest.fixture(scope="module")
def mlflow_server(server_folder):
    port = free_port()
    command = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{server_folder / 'server.db'}",
        "--artifacts-destination",
        str(server_folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    server = subprocess.Popen(
        command,
        cwd=server_folder,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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


@pytest.fixture(scope="module")
def served_sweep(mlflow_server, tmp_path_factory):
    """One sweep recorded through the server, read by the tests below: two FFN scales x (natural, detector
    control), long enough to align, so that natural runs end normal and controls reversed."""
    tmp_path = tmp_path_factory.mktemp("served-sweep")
    space = write_space(
        tmp_path / "space.yaml",
        base={**ALIGNING, "model.control_block": 2},
        factors={"model.ffn_scale": [0.5, 1.0], "model.control": ["none", "reverse_encoder"]},
    )
    started = time.time()
    done = sweep(tmp_path, space, "--tracking-uri", mlflow_server)
    print(f"sweep against the server: {time.time() - started:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_sweep_against_a_tracking_server(mlflow_server, server_folder, served_sweep):
    url = f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=test"
    with urllib.request.urlopen(url, timeout=30) as response:
        experiment = json.loads(response.read())["experiment"]
    found = rest(mlflow_server, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in found]
    parents = [r for r, t in zip(found, tags, strict=True) if t.get("flipsweep.role") == "parent"]
    children = [(r, t) for r, t in zip(found, tags, strict=True) if t.get("flipsweep.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents[0]["info"]["run_id"]
    assert all(t["mlflow.parentRunId"] == parent_id for _, t in children)
    assert {r["info"]["status"] for r, _ in children} == {"FINISHED"}
    assert parents[0]["info"]["status"] == "FINISHED"
    # Artifacts travel through the server's proxy into its own artifact folder.
    assert list((server_folder / "artifacts").rglob("rate_by_factor.png"))
    assert list((server_folder / "artifacts").rglob("attention.png"))


def stop_processes_naming(folder: str) -> None:
    """Kill every process whose command line names `folder`, and their children (a Ray head's services
    carry its session folder in their arguments; its workers are the raylet's children)."""
    import psutil

    named = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(folder in part for part in (p.info["cmdline"] or []))
    ]
    family = {p.pid: p for p in named}
    family.pop(os.getpid(), None)  # never the caller, should its own arguments name the folder
    for process in named:
        with contextlib.suppress(psutil.Error):
            family.update({c.pid: c for c in process.children(recursive=True)})
    for process in family.values():
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(list(family.values()), timeout=30)


@pytest.fixture
def ray_head():
    port = free_port()
    # A folder of its own (short: Ray's socket paths must stay under 108 characters) names this head's
    # processes, so that exactly they are stopped: `ray stop` would end every Ray on the machine.
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
    # Token auth, with a token of its own: whether `ray start` turns it on by default depends on whether
    # ~/.ray/auth_token exists (an earlier local Ray writes it), and the test must not depend on that.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**os.environ, "RAY_ADDRESS": "", **auth}
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
        "--temp-dir",
        temp_dir,
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, env=env, timeout=120)
        yield {"RAY_ADDRESS": f"127.0.0.1:{port}", **auth}
    finally:
        stop_processes_naming(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_sweep_on_a_ray_cluster(tmp_path, ray_head):
    space = write_space(tmp_path / "space.yaml")
    # A head with token auth: a driver connecting by address must opt in and hold the cluster's token.
    done = sweep(tmp_path, space, env=ray_head)
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


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The card of one chart in the runs' chart view: the nearest ancestor of its exact title that holds a plot.
CHART_CARD = """title => {
    const heading = [...document.querySelectorAll('*')].find(
        e => e.children.length === 0 && e.textContent.trim() === title);
    let card = heading;
    while (card && !card.querySelector('svg.main-svg')) card = card.parentElement;
    return card ? card.innerText : null;
}"""


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def _close_assistant(page) -> None:
    """MLflow 3 opens an assistant panel beside the runs; close it where it is shown."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def test_mlflow_ui_charts_reversal_rate_per_factor_level_and_steps_through_attention(
    mlflow_server, served_sweep, browser
):
    """In the MLflow UI's chart view, grouped by a factor, each level shows the mean of `verdict/reversed`
    (its reversal rate among decided runs); an image grid steps through the cross-attention maps; the parent
    run's reversal-rate plot opens."""
    # The served sweep's natural runs end normal and its controls reversed, so each FFN level's mean is a real
    # average of different outcomes.
    _, parents, children = runs(mlflow_server)
    parent, experiment = parents[0], parents[0].info.experiment_id
    expected = {}
    for level in ("0.5", "1.0"):
        values = [
            c.data.metrics["verdict/reversed"]
            for c in children
            if c.data.params["model.ffn_scale"] == level and "verdict/reversed" in c.data.metrics
        ]
        expected[level] = f"{sum(values) / len(values):.2f}"
    ARTIFACTS = ROOT / "test-artifacts"
    ARTIFACTS.mkdir(exist_ok=True)
    chart_view = f"{mlflow_server}/#/experiments/{experiment}/runs?workflowType=machine_learning"
    chart_view += "&compareRunsMode=CHART"

    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(chart_view)
    page.get_by_role("button", name="Group by").click(timeout=60_000)
    _close_assistant(page)
    page.get_by_role("button", name="Group by").click()
    page.keyboard.type("model.ffn_scale")
    page.get_by_role("menu").get_by_text("model.ffn_scale", exact=True).click()
    page.keyboard.press("Escape")
    page.get_by_placeholder("Search metric charts").fill("verdict/reversed")
    page.wait_for_function(f"() => ({CHART_CARD})('verdict/reversed')?.includes('{expected['0.5']}')")
    card = page.evaluate(CHART_CARD, "verdict/reversed")
    page.screenshot(path=str(ARTIFACTS / "mlflow_ui_reversal_rate_by_ffn_scale.png"))
    for level, mean in expected.items():
        assert mean in card and level in card, (level, mean, card)

    # The cross-attention image of every evaluation, stepped through in an image grid (a fresh page: the UI
    # keeps the grouping in the page's storage).
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(chart_view)
    page.get_by_role("button", name="Group by").click(timeout=60_000)  # the page is ready
    page.keyboard.press("Escape")
    _close_assistant(page)
    page.locator("button[data-component-id$='runnamecellrenderer.tsx_46']").first.click()  # show the trials
    page.get_by_role("button", name="Add chart").first.click()
    page.get_by_role("menuitem", name="Image grid").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Images", exact=True).last.click()
    page.get_by_role("option", name="attention").click()
    page.keyboard.press("Escape")
    dialog.get_by_role("switch").click()  # hide the run parameters: just the images
    slider = dialog.get_by_role("slider")
    shown = []
    for _ in range(2):
        slider.focus()
        page.keyboard.press("ArrowRight")
        step = slider.get_attribute("aria-valuenow")
        loaded = f"""() => {{
            const images = [...document.querySelectorAll('[role=dialog] img')];
            return images.length === 4 && images.every(
                img => img.complete && img.naturalWidth > 0 && img.src.includes('step%2B{step}%2B'));
        }}"""
        page.wait_for_function(loaded, timeout=60_000)
        shown.append(step)
    page.screenshot(path=str(ARTIFACTS / "mlflow_ui_attention_steps.png"))
    assert shown == ["50", "100"]  # detector.every: one image per evaluation, each run's own

    page.goto(f"{mlflow_server}/#/experiments/{experiment}/runs/{parent.info.run_id}/artifacts")
    page.get_by_text("plots", exact=True).first.click(timeout=60_000)
    page.get_by_text("rate_by_factor.png").first.click(timeout=30_000)
    # The preview is an <img> (its src may be a blob: URL); wait until one has really loaded.
    page.wait_for_function("() => [...document.images].some(img => img.complete && img.naturalWidth > 300)")
    page.screenshot(path=str(ARTIFACTS / "mlflow_ui_parent_run.png"))

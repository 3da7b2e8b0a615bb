"""The web app in a real browser: app.py on a free localhost port with the demo configs, driven
by headless Chromium (Debian's ``chromium`` through playwright; no browser is downloaded).

Skipped when chromium, gradio or playwright is absent; under CI (``$CI`` set) that is a failure.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, require

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("HI3D_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STARTUP_S, STAGE1_S = 120, 240
STAGE2_S, MESH_S = 300, 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"app.py did not answer on {url} within {STARTUP_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    require(Path(CHROMIUM).is_file(), f"chromium ({CHROMIUM}; apt-get install chromium)")
    require(importlib.util.find_spec("gradio") is not None, "gradio (pip install -e .[app])")
    require(importlib.util.find_spec("playwright") is not None, "playwright (pip install -e .[browser-test])")
    folder = tmp_path_factory.mktemp("app")
    port = free_port()
    log = folder / "app.log"
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    with log.open("w") as stream:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--demo", "--device", "cpu", "--port", str(port), "--output_root",
             str(folder / "outputs")], cwd=ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def page(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        try:
            tab = context.new_page()
            tab.goto(app_url)
            tab.wait_for_selector("#input_file input[type=file]", state="attached", timeout=60_000)
            yield tab
        finally:
            context.close()


def status_text(page) -> str:
    return page.locator("#status").inner_text()


def wait_for_status(page, text: str, timeout_s: float) -> None:
    page.wait_for_function("text => document.querySelector('#status').innerText.includes(text)", arg=text,
                           timeout=timeout_s * 1000)


def test_stage1_in_the_browser_shows_16_views(page, tmp_path):
    assert "untrained" in page.locator("#notice").inner_text()
    page.set_input_files("#input_file input[type=file]", str(ROOT / "demo" / "object_a_elev10.png"))
    wait_for_status(page, "accepted", 30)
    steps = page.locator("#steps input[type=number]")
    steps.fill("2")
    steps.press("Enter")
    start = time.monotonic()
    page.click("#run_orbit")
    page.wait_for_function("document.querySelectorAll('#orbit_gallery img').length >= 16", timeout=STAGE1_S * 1000)
    wait_for_status(page, "Stage 1 done", 30)
    print(f"stage 1 in the browser: {time.monotonic() - start:.1f} s; {status_text(page)}")
    assert page.locator("#orbit_gallery img").count() == 16
    assert page.locator("#orbit_video video").count() == 1
    page.wait_for_timeout(500)  # let the thumbnails paint
    shot = tmp_path / "app_stage1.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("HI3D_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["HI3D_SCREENSHOT_DIR"]) / shot.name)


def test_all_three_steps_in_the_browser_end_with_the_model_and_its_named_download(page, tmp_path):
    """Its screenshot (``HI3D_SCREENSHOT_DIR=DIR``), scaled to 1000 px wide with 256 colours, is docs/app.png."""
    page.set_input_files("#input_file input[type=file]", str(ROOT / "demo" / "object_a_elev10.png"))
    wait_for_status(page, "accepted", 30)
    steps = page.locator("#steps input[type=number]")
    steps.fill("2")
    steps.press("Enter")
    page.click("#run_orbit")
    wait_for_status(page, "Stage 1 done", STAGE1_S)
    page.click("#run_refine")
    wait_for_status(page, "Stage 2 done", STAGE2_S)
    assert page.locator("#refined_gallery img").count() == 16
    page.click("#run_mesh")
    # the progress bar over the viewer follows the reconstruction's steps
    page.wait_for_function("document.querySelector('#model3d').innerText.includes('3D model: step')",
                           timeout=MESH_S * 1000)
    wait_for_status(page, "3D model done", MESH_S)
    print(status_text(page))
    page.wait_for_selector("#model3d canvas", timeout=30_000)
    name = page.locator("#glb_file td.filename")
    assert name.get_attribute("aria-label") == "mesh.glb"
    # the whole name is on screen: Gradio shrinks the name (stem, then extension) when its column is narrow
    clipped = name.evaluate("cell => [...cell.querySelectorAll('.stem, .ext')].some(s => s.scrollWidth > s.clientWidth)")
    assert not clipped and "".join(name.inner_text().split()) == "mesh.glb"
    page.wait_for_timeout(2000)  # let the thumbnails and the 3D view paint
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("HI3D_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["HI3D_SCREENSHOT_DIR"]) / shot.name)


def test_a_non_image_upload_shows_an_error_and_the_app_stays_up(page, tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_text("this is text, not an image")
    page.set_input_files("#input_file input[type=file]", str(fake))
    wait_for_status(page, "Error", 30)
    assert "not a known image format" in status_text(page)
    page.click("#run_orbit")  # running anyway is refused in the page too
    page.wait_for_timeout(1000)
    wait_for_status(page, "not a known image format", 30)
    assert page.locator("#orbit_gallery img").count() == 0
    page.click("#input_file button[aria-label=Clear]")
    wait_for_status(page, "Upload an image", 30)
    page.set_input_files("#input_file input[type=file]", str(ROOT / "demo" / "object_c_elev0.png"))
    wait_for_status(page, "accepted", 30)  # the server still answers

"""The running app in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Starts ``streamlit run streamlit_app.py`` on a free port with a temporary CVS_HOME (tiny test models,
plus the shipped demo models when they are present), then: Compare on a sample, a PCK threshold
change, and the CLAHE lab's slider → new image latency (DESIGN §8: ≤ 150 ms ROI, ≤ 500 ms full
cephalogram), printed and written to tests/artifacts/clahe_latency.json. Screenshots go to
tests/artifacts/; with ``CVS_UPDATE_SCREENSHOTS=1`` also to docs/screenshots/ (the README's).

Never downloads a browser: skipped when /usr/bin/chromium is absent (``make browser`` installs it).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
DOCS_SHOTS = ROOT / "docs" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                       "(apt-get install chromium chromium-driver, or `make browser`); never downloaded"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from test_app import make_tiny_models

    home = tmp_path_factory.mktemp("cvs_browser_home")
    old = os.environ.get("CVS_HOME")
    make_tiny_models(home)
    if old is None:
        os.environ.pop("CVS_HOME", None)
    else:
        os.environ["CVS_HOME"] = old
    port = _free_port()
    env = dict(os.environ, CVS_HOME=str(home), PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "streamlit_server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                             "--server.headless", "true", "--browser.gatherUsageStats", "false",
                             "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read().strip() == b"ok":
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("streamlit did not come up:\n" + (ARTIFACTS / "streamlit_server.log").read_text()[-3000:])
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1440, "height": 960}, device_scale_factor=1)
    pg = ctx.new_page()
    yield pg
    ctx.close()


def shot(page, name: str, full_page: bool = True):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    size = page.viewport_size
    if full_page:  # Streamlit scrolls inside its main container: grow the viewport to the content
        height = page.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                               " return m ? m.scrollHeight : document.body.scrollHeight; }")
        page.set_viewport_size({"width": size["width"], "height": min(max(int(height), size["height"]), 4000)})
        page.wait_for_timeout(800)
    page.screenshot(path=str(path), full_page=full_page)
    page.set_viewport_size(size)
    if os.environ.get("CVS_UPDATE_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_SHOTS / f"{name}.png")


def wait_idle(page, timeout_ms: int = 120_000):
    """Until the script run finished (no 'running' status widget) and plots have drawn."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"] [data-testid=\"stStatusWidgetRunningIcon\"]')"
        " && !document.querySelector('[data-testid=\"stSpinner\"]')", timeout=timeout_ms)
    page.wait_for_timeout(600)


def slider_thumb(page, label: str):
    return page.locator(f'[data-testid="stSlider"] input[type="range"][aria-label^="{label}"]').first


def test_home_and_models_pages(server, page):
    page.goto(server + "/")
    page.get_by_text("Read the results with care").wait_for(timeout=60_000)
    wait_idle(page)
    shot(page, "home")
    page.goto(server + "/models")
    page.get_by_text("Upload a model").first.wait_for(timeout=60_000)
    wait_idle(page)
    shot(page, "models")


def test_compare_on_a_sample(server, page):
    page.goto(server + "/compare")
    page.locator('[data-testid="stMetricValue"]:has-text("CS")').first.wait_for(timeout=120_000)
    wait_idle(page)
    values = page.locator('[data-testid="stMetricValue"]').all_inner_texts()
    assert sum(v.startswith("CS") for v in values) >= 2, values
    assert page.locator(".js-plotly-plot").count() >= 1
    shot(page, "compare")
    page.get_by_role("tab", name="Landmarks").click()
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30_000)
    page.get_by_role("tab", name="CVM stage").click()
    page.get_by_text("Growth:").first.wait_for(timeout=30_000)
    page.wait_for_timeout(400)
    shot(page, "compare_stage")
    # Models are loaded now: time switching to another sample until both models' results are shown.
    page.get_by_role("tab", name="Overlay").click()
    before = page.locator('[data-testid="stMetricValue"]').all_inner_texts()
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Sample").first.click()
    option = page.get_by_role("option", name="LC (11)")
    t0 = time.perf_counter()
    option.click()
    page.wait_for_function(
        "old => { const v = [...document.querySelectorAll('[data-testid=\"stMetricValue\"]')].map(e => e.innerText);"
        " return v.join('|') !== old.join('|') && !document.querySelector("
        "'[data-testid=\"stStatusWidget\"] [data-testid=\"stStatusWidgetRunningIcon\"]'); }",
        arg=before, polling="raf", timeout=60_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    seconds = time.perf_counter() - t0
    values = page.locator('[data-testid="stMetricValue"]').all_inner_texts()
    assert sum(v.startswith("CS") for v in values) >= 2, values
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "compare_latency.json").write_text(json.dumps({"sample_switch_s": seconds}))
    print(f"\nCompare: new sample → both models' landmarks and stages shown in {seconds:.2f} s "
          "(models already loaded; target < 2 s)")


def test_pck_threshold_slider(server, page):
    page.goto(server + "/evaluation")
    page.locator('[data-testid="stMetricLabel"]:has-text("PCK @")').first.wait_for(timeout=120_000)
    wait_idle(page)
    label_before = page.locator('[data-testid="stMetricLabel"]:has-text("PCK @")').first.inner_text()
    thumb = slider_thumb(page, "Threshold")
    thumb.focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    page.wait_for_function(
        "old => [...document.querySelectorAll('[data-testid=\"stMetricLabel\"]')]"
        ".some(e => e.innerText.includes('PCK @') && e.innerText !== old)", arg=label_before, timeout=30_000)
    page.locator('[data-testid="stMetricLabel"]:has-text("PCK @ 2.5")').first.wait_for(timeout=30_000)
    wait_idle(page)
    label_after = page.locator('[data-testid="stMetricLabel"]:has-text("PCK @")').first.inner_text()
    assert label_after != label_before
    shot(page, "evaluation")


def _measure_latency(page, n: int) -> list[float]:
    """Slider key press → the 'after' image's new src is loaded and decoded, in ms (Python-side clock,
    so the figure includes Playwright's own round trip: an upper bound)."""
    thumb = slider_thumb(page, "Clip limit")
    img = ".st-key-lab_after img"
    page.wait_for_selector(img, timeout=60_000)
    out = []
    for i in range(n):
        thumb.focus()
        old = page.locator(img).get_attribute("src")
        t0 = time.perf_counter()
        page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        page.wait_for_function(
            "old => { const i = document.querySelector('.st-key-lab_after img');"
            " return i && i.src !== old && i.complete && i.naturalWidth > 0; }",
            arg=old, polling="raf", timeout=20_000)
        out.append((time.perf_counter() - t0) * 1e3)
        page.wait_for_timeout(150)
    return out


def test_clahe_lab_latency(server, page):
    # measure once the server's background TensorFlow import (the sidebar's device probe) is done
    deadline = time.time() + 120
    while True:
        page.goto(server + "/clahe_lab")
        page.wait_for_selector(".st-key-lab_after img", timeout=120_000)
        wait_idle(page)
        if page.locator('[data-testid="stSidebar"]').get_by_text("backend").count() or time.time() > deadline:
            break
        page.wait_for_timeout(2000)
    results = {}
    roi = _measure_latency(page, 12)
    results["roi_ms"] = {"median": statistics.median(roi), "max": max(roi), "all": [round(v, 1) for v in roi]}
    shot(page, "clahe_lab")
    page.get_by_text("Sample full cephalogram").click()
    page.wait_for_function("() => { const i = document.querySelector('.st-key-lab_after img');"
                           " return i && i.naturalWidth > 300; }", timeout=60_000)
    wait_idle(page)
    full = _measure_latency(page, 8)
    results["full_ms"] = {"median": statistics.median(full), "max": max(full), "all": [round(v, 1) for v in full]}
    (ARTIFACTS / "clahe_latency.json").write_text(json.dumps(results, indent=2))
    print(f"\nCLAHE lab slider → new image (browser): ROI median {results['roi_ms']['median']:.0f} ms "
          f"(max {results['roi_ms']['max']:.0f}; target ≤ 150), full cephalogram median "
          f"{results['full_ms']['median']:.0f} ms (max {results['full_ms']['max']:.0f}; target ≤ 500)")
    # Latency is reported, not asserted (machines are noisy); the test fails if an image never updates.
    assert len(roi) == 12 and len(full) == 8


def test_training_page(server, page):
    page.goto(server + "/training")
    page.get_by_text("Start a new run").first.wait_for(timeout=60_000)
    wait_idle(page)
    shot(page, "training")

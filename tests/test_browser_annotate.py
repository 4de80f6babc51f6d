"""The Annotate page in a real headless Chromium (Debian's /usr/bin/chromium via Playwright; never
downloaded): open the bundled samples as a dataset, drag landmark 10 by a known offset, reload the
page, check the dataset's CSV holds the new coordinate (± 1 px in the image's frame) with status
"corrected", then undo and check the old coordinate is back.

The server runs ``tests/annotate_app.py`` (a one-page router) with a temporary CVS_HOME and the
shipped ``unet_heatmap`` model (skipped when its weights are absent).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from app_helpers import (ARTIFACTS, ROOT, browser_page, free_port, launch_chromium, needs_chromium, serve_streamlit,
                         wait_idle)

PORT = 8521

pytestmark = [
    pytest.mark.browser,
    needs_chromium(),
    pytest.mark.skipif(not (ROOT / "models" / "unet_heatmap" / "model.keras").is_file(),
                       reason="needs the shipped unet_heatmap model (make run / cvs ensure-models)"),
]




@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("cvs_annotate_home")


@pytest.fixture(scope="module")
def server(home):
    yield from serve_streamlit("tests/annotate_app.py", free_port(PORT), home, "annotate_server.log", timeout_s=60)


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@pytest.fixture
def page(browser):
    yield from browser_page(browser, 1440, 1000)


def _csv_point(home: Path, image: str, index1: int) -> tuple[float, float, str]:
    """(x, y, status) of landmark ``index1`` of ``image`` in the dataset's labels.csv, read from disk."""
    import pandas as pd

    frame = pd.read_csv(home / "datasets" / "samples" / "labels.csv")
    row = frame[frame["image_name"] == image].iloc[0]
    return float(row[f"{index1}_x"]), float(row[f"{index1}_y"]), str(row["status"])


def _current_image(page) -> str:
    text = page.locator('[data-testid="stCaptionContainer"]').filter(has_text="px · status").first.inner_text()
    return text.split(" · ")[0].strip()


def test_drag_landmark_10_reload_and_undo(server, page, home):
    page.goto(server + "/")  # the test router opens on Annotate
    wait_idle(page)
    page.screenshot(path=str(ARTIFACTS / "annotate_start.png"), full_page=True)
    page.get_by_role("button", name="Use the bundled samples").click()
    page.locator('[data-testid="landmark-10"]').wait_for(timeout=180_000)
    wait_idle(page)
    image = _current_image(page)
    x0, y0, status0 = _csv_point(home, image, 10)
    assert status0 == "predicted"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "annotate_before.png"), full_page=True)

    svg = page.locator('[data-testid="landmark-editor-svg"]')
    scale = float(svg.get_attribute("data-scale"))  # screen px per image px
    circle = page.locator('[data-testid="landmark-10"] circle')
    box = circle.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    dx_img, dy_img = 12.0, -8.0  # the known offset, in the image's pixels
    page.mouse.move(cx, cy)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(cx + dx_img * scale * k / 10, cy + dy_img * scale * k / 10)
    t0 = time.perf_counter()
    page.mouse.up()

    deadline = time.time() + 30
    while time.time() < deadline and _csv_point(home, image, 10)[2] != "corrected":
        time.sleep(0.05)
    save_s = time.perf_counter() - t0
    wait_idle(page)
    redraw_s = time.perf_counter() - t0
    page.reload()
    page.locator('[data-testid="landmark-10"]').wait_for(timeout=120_000)
    wait_idle(page)
    assert _current_image(page) == image, "the page did not resume on the image being corrected"
    x1, y1, status1 = _csv_point(home, image, 10)
    assert status1 == "corrected"
    assert abs(x1 - (x0 + dx_img)) <= 1.0 and abs(y1 - (y0 + dy_img)) <= 1.0, ((x0, y0), (x1, y1))
    page.screenshot(path=str(ARTIFACTS / "annotate_after.png"), full_page=True)

    page.locator('[data-testid="landmark-editor-svg"]').locator("xpath=..").get_by_role("button", name="↶ Undo").click()
    deadline = time.time() + 30
    while time.time() < deadline and _csv_point(home, image, 10)[2] != "predicted":
        time.sleep(0.2)
    x2, y2, status2 = _csv_point(home, image, 10)
    assert status2 == "predicted"
    assert abs(x2 - x0) <= 0.01 and abs(y2 - y0) <= 0.01

    # "Accept & next": one click per good prediction; time until the next image's points are shown
    wait_idle(page)
    t0 = time.perf_counter()
    page.get_by_role("button", name="Accept & next").click()
    page.wait_for_function("old => { const c = [...document.querySelectorAll('[data-testid=\"stCaptionContainer\"]')]"
                           ".find(e => e.innerText.includes('px · status')); return c && !c.innerText.startsWith(old); }",
                           arg=image, timeout=60_000)
    wait_idle(page)
    accept_s = time.perf_counter() - t0
    assert _csv_point(home, image, 10)[2] == "corrected"
    timings = {"drag_to_saved_s": round(save_s, 3), "drag_to_page_idle_s": round(redraw_s, 3),
               "accept_and_next_s": round(accept_s, 3)}
    (ARTIFACTS / "annotate_latency.json").write_text(__import__("json").dumps(timings, indent=2))
    print(f"\nAnnotate (headless Chromium, shared 2-core machine): drag → saved {save_s:.2f} s, "
          f"→ page idle {redraw_s:.2f} s (includes the 0.5 s settle wait); Accept & next → next image {accept_s:.2f} s")


def test_select_number_then_click_places_it(server, page, home):
    page.goto(server + "/")
    page.locator('[data-testid="landmark-7"]').wait_for(timeout=180_000)
    wait_idle(page)
    image = _current_image(page)
    svg = page.locator('[data-testid="landmark-editor-svg"]')
    # image px → screen px with the SVG's own transform (the user space is the image's pixel frame)
    x0, y0, _ = _csv_point(home, image, 7)
    target = (x0 - 6.0, y0 + 5.0)
    screen = svg.evaluate("(s, p) => { const q = s.createSVGPoint(); q.x = p[0]; q.y = p[1];"
                          " const r = q.matrixTransform(s.getScreenCTM()); return [r.x, r.y]; }", list(target))
    page.locator('button[data-num="7"]').click()
    page.mouse.click(screen[0], screen[1])
    deadline = time.time() + 30
    while time.time() < deadline and _csv_point(home, image, 7)[:2] == (x0, y0):
        time.sleep(0.2)
    x1, y1, status = _csv_point(home, image, 7)
    assert status == "corrected"
    assert abs(x1 - target[0]) <= 1.0 and abs(y1 - target[1]) <= 1.0, (target, (x1, y1))


def test_roi_box_drawn_by_dragging(server, page):
    page.goto(server + "/")
    wait_idle(page)
    page.locator('[data-testid="stSidebarNav"]').get_by_text("ROI box").click()
    page.get_by_text("ROI box 0 800 500 2000").wait_for(timeout=60_000)
    wait_idle(page)
    svg = page.locator('[data-testid="landmark-editor-svg"]')
    to_screen = ("(s, p) => { const q = s.createSVGPoint(); q.x = p[0]; q.y = p[1];"
                 " const r = q.matrixTransform(s.getScreenCTM()); return [r.x, r.y]; }")
    a = svg.evaluate(to_screen, [100, 700])
    b = svg.evaluate(to_screen, [700, 1900])
    page.mouse.move(*a)
    page.mouse.down()
    for k in range(1, 9):
        page.mouse.move(a[0] + (b[0] - a[0]) * k / 8, a[1] + (b[1] - a[1]) * k / 8)
    page.mouse.up()
    page.locator("code").filter(has_text="ROI box").filter(has_not_text="0 800 500 2000").wait_for(timeout=30_000)
    got = [int(v) for v in page.locator("code").filter(has_text="ROI box").inner_text().split()[2:]]
    scale = float(svg.get_attribute("data-scale"))
    tol = 1.0 / scale + 1  # one screen pixel in image pixels, plus rounding
    assert all(abs(g - e) <= tol for g, e in zip(got, [100, 700, 700, 1900])), (got, tol)
    page.screenshot(path=str(ARTIFACTS / "roi_box.png"), full_page=True)

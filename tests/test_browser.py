"""The running app in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Starts ``streamlit run streamlit_app.py`` on port 8517 (``CVS_BROWSER_PORT``) with a temporary
CVS_HOME (tiny test models, plus the shipped demo models when they are present), then visits every
page at 1280 px width: each test waits for the elements it checks (Playwright's ``expect`` /
``wait_for``), never for "idleness"; no page may scroll sideways; the app makes no request outside
127.0.0.1. Latencies (CLAHE lab, PCK slider) are printed and written to tests/artifacts/, not
asserted. Screenshots go to tests/artifacts/; with ``CVS_UPDATE_SCREENSHOTS=1`` also to
docs/screenshots/ (the README's).

Never downloads a browser: skipped when /usr/bin/chromium is absent (``make browser`` installs it).
"""
from __future__ import annotations

import json
import os
import statistics
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from app_helpers import (ARTIFACTS, LOCAL_HOSTS, ROOT, browser_page, launch_chromium, make_tiny_models, needs_chromium,
                         screenshot, serve_streamlit)

PORT = int(os.environ.get("CVS_BROWSER_PORT", "8517"))
WIDTH = 1280

pytestmark = [
    pytest.mark.browser,
    needs_chromium(),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("cvs_browser_home")
    old = os.environ.get("CVS_HOME")
    make_tiny_models(home)
    if old is None:
        os.environ.pop("CVS_HOME", None)
    else:
        os.environ["CVS_HOME"] = old
    yield from serve_streamlit("streamlit_app.py", PORT, home, "streamlit_server.log")


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@pytest.fixture
def page(browser):
    """A 1280-px-wide page that records every request it makes (``page.outside`` lists non-local ones)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=120_000)
    yield from browser_page(browser, WIDTH, 900, record_outside=True)


def shot(page, name: str, full_page: bool = True):
    screenshot(page, name, full_page=full_page)


def check_layout(page):
    """No sideways scroll at 1280 px, and no request outside 127.0.0.1 so far (e.g. the favicon)."""
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= WIDTH, f"the page scrolls sideways: scrollWidth {width} > {WIDTH}"
    assert not page.outside, f"requests outside 127.0.0.1: {page.outside}"


def no_exception(page):
    assert page.locator('[data-testid="stException"]').count() == 0, \
        page.locator('[data-testid="stException"]').first.inner_text()


def slider_thumb(page, label: str):
    return page.locator(f'[data-testid="stSlider"] [role="slider"][aria-label^="{label}"], '
                        f'[data-testid="stSlider"] input[type="range"][aria-label^="{label}"]').first


def metric_values(page) -> list[str]:
    return page.locator('[data-testid="stMetricValue"]').all_inner_texts()


def test_home_page_and_sidebar_probe(server, page):
    from playwright.sync_api import expect

    page.goto(server + "/")
    expect(page.get_by_text("Read the results with care")).to_be_visible()
    expect(page.locator('[data-testid="stImage"] img').first).to_be_visible()
    # bug 12: the device probe finishes and the sidebar says so without a reload
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("backend")).to_be_visible(timeout=180_000)
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("probing device")).to_have_count(0)
    favicon = page.evaluate("() => [...document.querySelectorAll('link[rel*=icon]')].map(l => l.href)")
    assert favicon and all(urllib.parse.urlparse(h).hostname in LOCAL_HOSTS or h.startswith("data:")
                           for h in favicon), favicon
    no_exception(page)
    check_layout(page)
    shot(page, "home")


def test_compare_on_a_sample(server, page):
    from playwright.sync_api import expect

    page.goto(server + "/compare")
    stages = page.locator('[data-testid="stMetricValue"]', has_text="CS")
    expect(stages.nth(1)).to_be_visible(timeout=240_000)            # two models' stages at least
    expect(page.locator(".js-plotly-plot .main-svg").first).to_be_visible()  # the overlay is drawn
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("Loaded:")).to_be_visible()
    no_exception(page)
    check_layout(page)
    shot(page, "compare")
    page.get_by_role("tab", name="Landmarks").click()
    table = page.locator('[data-testid="stDataFrame"]').first
    expect(table).to_be_visible()
    box = table.bounding_box()
    assert box["x"] + box["width"] <= WIDTH, box
    page.get_by_role("tab", name="CVM stage").click()
    expect(page.get_by_text("Growth:").first).to_be_visible()
    check_layout(page)
    shot(page, "compare_stage")
    # Models are loaded now: time switching to another sample until both models' results are new.
    page.get_by_role("tab", name="Overlay").click()
    before = metric_values(page)
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Sample").first
    option = _open_sample_list(page, box, "LC (11)", exact=False)  # "LC (11) … labelled"
    t0 = time.perf_counter()
    option.click()
    # bug 2: LC (11)'s landmarks 17–19 lie below the ROI: the page says so
    expect(page.get_by_text("fall outside the ROI").first).to_be_visible(timeout=120_000)
    page.wait_for_function("old => [...document.querySelectorAll('[data-testid=\"stMetricValue\"]')]"
                           ".map(e => e.innerText).join('|') !== old.join('|')", arg=before, timeout=60_000)
    seconds = time.perf_counter() - t0
    expect(stages.nth(1)).to_be_visible()
    no_exception(page)
    print(f"\nCompare: new sample → warning and new numbers shown in {seconds:.2f} s (models already loaded)")
    # More new images: the time from picking one to both models' new numbers, and each card's
    # model time ("… · N ms") next to the same call in this plain test process (reported, not asserted).
    # "first": some card's numbers changed (cards are drawn as each model finishes); "both": every
    # model's card (its "… · N ms" caption) differs from the previous image's.
    switch_s, first_s, card_ms = [], [], {}
    for sample in _unlabelled_samples()[:4]:
        before, cards_before = metric_values(page), _card_times(page)
        option = _open_sample_list(page, box, sample.rsplit(".", 1)[0])
        t0 = time.perf_counter()
        option.click()
        page.wait_for_function("old => [...document.querySelectorAll('[data-testid=\"stMetricValue\"]')]"
                               ".map(e => e.innerText).join('|') !== old.join('|')", arg=before, timeout=120_000)
        first_s.append(time.perf_counter() - t0)
        switch_s.append(_until_every_card_changed(page, cards_before, t0))
        expect(stages.nth(1)).to_be_visible()
        for name, ms in _card_times(page).items():
            card_ms.setdefault(name, []).append((sample, ms))
    no_exception(page)
    result = {"sample_switch_s": seconds, "new_image_s": [round(v, 3) for v in switch_s],
              "new_image_median_s": float(np.nanmedian(switch_s)),
              "new_image_first_card_s": [round(v, 3) for v in first_s],
              "new_image_first_card_median_s": statistics.median(first_s),
              "in_app_vs_plain": _in_app_vs_plain(card_ms)}
    (ARTIFACTS / "compare_latency.json").write_text(json.dumps(result, indent=2))
    print(f"Compare: new image → both models' numbers: median {result['new_image_median_s']:.2f} s over "
          f"{len(switch_s)} images (first card: median {result['new_image_first_card_median_s']:.2f} s)")
    for name, r in result["in_app_vs_plain"].items():
        print(f"  {name}: model time on the card median {r['app_ms']:.0f} ms vs {r['plain_ms']:.0f} ms in a plain "
              f"process after a pause (ratio {r['ratio']:.2f}; back to back {r['plain_back_to_back_ms']:.0f} ms)")


def _until_every_card_changed(page, cards_before: dict, t0: float, timeout_s: float = 60.0) -> float:
    """Seconds from ``t0`` until every model's card time differs from ``cards_before`` (NaN when one
    never does: two runs can take the same whole number of milliseconds)."""
    while time.perf_counter() - t0 < timeout_s:
        now = _card_times(page)
        if now.keys() >= cards_before.keys() and all(now[m] != v for m, v in cards_before.items()):
            return time.perf_counter() - t0
        page.wait_for_timeout(20)
    return float("nan")


def _open_sample_list(page, box, name: str, exact: bool = True):
    """Open the Sample menu ``box`` until the option ``name`` shows (a rerun finishing at that moment
    may close the list again; three tries) and return that option."""
    from playwright.sync_api import expect

    option = page.get_by_role("option", name=name, exact=exact)
    for _ in range(3):
        box.click()
        try:
            expect(option).to_be_visible(timeout=10_000)
            break
        except AssertionError:
            page.keyboard.press("Escape")
    return option


def _unlabelled_samples() -> list[str]:
    """Bundled ROI samples other than LC (1) / LC (11) (those were shown already)."""
    names = sorted(p.name for p in (ROOT / "data" / "samples" / "roi").glob("*.jpg"))
    return [n for n in names if n not in ("LC (1).jpg", "LC (11).jpg")]


def _card_times(page) -> dict[str, float]:
    """Model name → the "… · N ms" of its Compare card (the Prediction's total time)."""
    import re

    out = {}
    texts = page.evaluate(
        "() => [...document.querySelectorAll('[data-testid=\"stMetricLabel\"]')]"
        ".filter(e => e.innerText.includes('CVM stage')).map(e => {"
        " let n = e; while (n && !(n.innerText || '').includes('●')) n = n.parentElement;"
        " return n ? n.innerText : ''; })")
    for text in texts:  # the card: "● name … N/19 landmarks · codec · W×H input · N ms"
        name = re.search(r"●\s*(\S+)", text)
        ms = re.search(r"·\s*(\d+) ms", text)
        if name and ms:
            out[name.group(1)] = float(ms.group(1))
    return out


def _in_app_vs_plain(card_ms: dict) -> dict:
    """For each model: the median card time in the app against ``Predictor.predict`` on the same
    images in this plain process, timed like the app's calls (one call per image after a 1-s pause,
    two rounds: a model call after idle is slower than back-to-back ones) and back to back (median
    of 5), with the ratio app / plain-after-pause."""
    from cvs_core.imaging import read_image
    from cvs_core.predict import Predictor, configure_for_interactive_use

    configure_for_interactive_use()  # as the app does
    out = {}
    for name, items in card_ms.items():
        try:
            predictor = Predictor.load(name)
        except Exception as exc:  # noqa: BLE001 - a test-only model of another CVS_HOME: report, go on
            print(f"  {name}: not loadable here ({exc})")
            continue
        images = [read_image(ROOT / "data" / "samples" / "roi" / sample).as_uint8() for sample, _ in items]
        predictor.predict(images[0])
        tight = [statistics.median(predictor.predict(im).ms["total"] for _ in range(5)) for im in images]
        paused = []
        for im in images * 2:
            time.sleep(1.0)
            paused.append(predictor.predict(im).ms["total"])
        app_ms, plain_ms = statistics.median(v for _, v in items), statistics.median(paused)
        out[name] = {"app_ms": app_ms, "plain_ms": plain_ms, "plain_back_to_back_ms": statistics.median(tight),
                     "ratio": app_ms / max(plain_ms, 1e-9)}
        del predictor
    return out


def test_pck_threshold_slider(server, page):
    from playwright.sync_api import expect

    page.goto(server + "/evaluation")
    label = page.locator('[data-testid="stMetricLabel"]', has_text="PCK @").first
    expect(label).to_be_visible(timeout=240_000)
    expect(page.get_by_text("The study reported")).to_be_visible()
    expect(page.get_by_text("were in the shipped demo models' training data")).to_be_visible()
    # On a fresh server the sidebar's device probe finishes after the first page and re-runs the app
    # once: measure after that (a key press during that rerun can be lost)
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("backend")).to_be_visible(timeout=180_000)
    page.wait_for_timeout(1500)
    thumb = slider_thumb(page, "Threshold")
    expect(thumb).to_be_visible()
    times = []
    for i in range(10):
        old = label.inner_text()
        thumb.focus()
        t0 = time.perf_counter()
        page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        page.wait_for_function(
            "old => { const e = document.querySelector('[data-testid=\"stMetricLabel\"]');"
            " return [...document.querySelectorAll('[data-testid=\"stMetricLabel\"]')]"
            ".some(x => x.innerText.includes('PCK @') && x.innerText !== old); }",
            arg=old, polling="raf", timeout=30_000)
        times.append((time.perf_counter() - t0) * 1e3)
        page.wait_for_timeout(200)
    expect(label).to_contain_text("PCK @ 2")
    median = statistics.median(times)
    (ARTIFACTS / "pck_latency.json").write_text(json.dumps({"median_ms": median, "all": [round(t, 1) for t in times]}))
    print(f"\nPCK slider → new numbers (browser, st.fragment): median {median:.0f} ms, max {max(times):.0f} ms "
          "(target ≤ 200 ms; measured on a shared machine)")
    assert len(times) == 10
    no_exception(page)
    check_layout(page)
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


def _boxes_do_not_overlap(page, selectors: list[str]):
    boxes = [page.locator(sel).first.bounding_box() for sel in selectors]
    for (a, sa), (b, sb) in zip(zip(boxes, selectors), zip(boxes[1:], selectors[1:])):
        assert a["x"] + a["width"] <= b["x"] + 1, f"{sa} {a} overlaps {sb} {b}"


def test_clahe_lab(server, page):
    from playwright.sync_api import expect

    page.goto(server + "/clahe_lab")
    expect(page.locator(".st-key-lab_after img")).to_be_visible(timeout=120_000)
    imgs = [".st-key-lab_before img", ".st-key-lab_after img", ".st-key-lab_diff img"]
    _boxes_do_not_overlap(page, imgs)  # bug 6
    check_layout(page)
    results = {}
    roi = _measure_latency(page, 12)
    results["roi_ms"] = {"median": statistics.median(roi), "max": max(roi), "all": [round(v, 1) for v in roi]}
    # bug 5: saving shows the settings at once
    page.get_by_role("button", name="Use these settings").click()
    expect(page.locator(".st-key-lab_in_use").get_by_text("clahe_clip=")).to_be_visible()
    shot(page, "clahe_lab")
    page.get_by_text("Sample full cephalogram").click()
    page.wait_for_function("() => { const i = document.querySelector('.st-key-lab_after img');"
                           " return i && i.naturalWidth > 300; }", timeout=60_000)
    _boxes_do_not_overlap(page, imgs)  # bug 6: the full cephalogram's images stay in their columns
    check_layout(page)
    full = _measure_latency(page, 8)
    results["full_ms"] = {"median": statistics.median(full), "max": max(full), "all": [round(v, 1) for v in full]}
    (ARTIFACTS / "clahe_latency.json").write_text(json.dumps(results, indent=2))
    print(f"\nCLAHE lab slider → new image (browser): ROI median {results['roi_ms']['median']:.0f} ms "
          f"(max {results['roi_ms']['max']:.0f}; target ≤ 150), full cephalogram median "
          f"{results['full_ms']['median']:.0f} ms (max {results['full_ms']['max']:.0f}; target ≤ 500)")
    assert len(roi) == 12 and len(full) == 8
    no_exception(page)


def test_training_and_models_pages(server, page):
    from playwright.sync_api import expect

    page.goto(server + "/training")
    expect(page.get_by_text("Start a new run").first).to_be_visible(timeout=60_000)
    expect(page.get_by_role("button", name="Start training")).to_be_visible()
    no_exception(page)
    check_layout(page)
    shot(page, "training")
    page.goto(server + "/models")
    expect(page.get_by_text("Upload a model").first).to_be_visible(timeout=60_000)
    expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
    expect(page.get_by_text("Weights sha256")).to_be_visible()  # a model's details are shown
    no_exception(page)
    check_layout(page)
    shot(page, "models")

"""Cold start of the app itself (issue 15): from ``streamlit run`` to the first page and to the first
Compare result, in a real headless Chromium.

Each run starts a fresh server (``streamlit run streamlit_app.py`` on 127.0.0.1, a temporary
CVS_HOME: only the shipped demo models) with the browser already running, then times from the
server process's start:

- ``health_s``: ``/_stcore/health`` answers;
- ``home_s``: the Home page's text is visible (first useful page);
- ``compare_first_s``: a new tab on Compare shows its first model's CVM stage;
- ``compare_both_s``: both models' stages are shown.

``--page compare`` opens Compare as the very first page instead of Home first (the U-Net/Inception
loads then start with that page rather than after Home). Prints one JSON line per run and the
medians; ``--json`` writes them. Needs Debian's /usr/bin/chromium and Playwright (never downloads a
browser). Run: ``python bench/cold_start_app.py [--runs 3] [--page home|compare] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(browser, first_page: str = "home", timeout_s: float = 300.0) -> dict:
    port = _free_port()
    home = tempfile.mkdtemp(prefix="cvs_cold_")
    env = dict(os.environ, CVS_HOME=home, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    url = f"http://127.0.0.1:{port}"
    out: dict = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--server.fileWatcherType", "none"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        while True:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=1).read().strip() == b"ok":
                    break
            except OSError:
                time.sleep(0.05)
            if proc.poll() is not None or time.perf_counter() - t0 > timeout_s:
                raise RuntimeError("the server did not come up")
        out["health_s"] = time.perf_counter() - t0
        ms = int(timeout_s * 1000)
        page = ctx.new_page()
        if first_page == "home":
            page.goto(url + "/")
            page.get_by_text("Read the results with care").wait_for(timeout=ms)
            out["home_s"] = time.perf_counter() - t0
            page = ctx.new_page()
        page.goto(url + "/compare")
        stages = page.locator('[data-testid="stMetricValue"]', has_text="CS")
        stages.first.wait_for(timeout=ms)
        out["compare_first_s"] = time.perf_counter() - t0
        stages.nth(1).wait_for(timeout=ms)
        out["compare_both_s"] = time.perf_counter() - t0
    finally:
        ctx.close()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return {k: round(v, 2) for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--page", choices=("home", "compare"), default="home",
                    help="the first page the browser opens (default: Home, then Compare in a new tab)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    runs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        for _ in range(args.runs):
            r = one_run(browser, args.page)
            print(json.dumps(r), flush=True)
            runs.append(r)
        browser.close()
    medians = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
    print("median " + json.dumps(medians))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median": medians, "first_page": args.page}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

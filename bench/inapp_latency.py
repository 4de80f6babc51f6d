"""Model-call latency inside a Streamlit server vs a plain Python process (issue 15, item 1).

Root cause this bench demonstrates: after **every** script run Streamlit calls
``keras.backend.clear_session()`` (``streamlit/runtime/scriptrunner/script_runner.py``,
``_clean_problem_modules``), which calls ``tf.python.eager.context.context().clear_kernel_cache()``.
That empties TensorFlow's eager kernel cache, which holds the *instantiated* ``tf.function`` graphs,
so the first model call of the next script run instantiates the graph again (Grappler pass, kernel
creation: ≈ 1.3–3 s for InceptionResNetV2 on 2 cores). A plain process never clears the cache.

Fix for the app (process-wide, once): :func:`keep_tf_kernels_across_reruns` — replace Streamlit's
``_clean_problem_modules`` by one that keeps the Keras session (and still closes matplotlib figures).
Engines other than TensorFlow (``Predictor(engine="onnx" | "openvino")``) are not affected at all.

What it does: writes a minimal Streamlit script into a temporary folder (one Predictor via
``st.cache_resource``, one ``predict`` on a fresh image per script run, its ``ms["inference"]``
appended to a JSON-lines log), serves it with ``streamlit run`` on ``--port`` (8531 by default), and
drives ``--reruns`` reruns either in headless Chromium (Playwright with Debian's /usr/bin/chromium,
never downloaded) clicking a button, or with Streamlit's AppTest (``--driver apptest``). The same
calls then run in this plain process. Modes: ``stock`` (the app as it was) and ``patched`` (with
:func:`keep_tf_kernels_across_reruns`).

Run: ``python bench/inapp_latency.py [--model inception_resnet_v2] [--engine tf] [--reruns 8]
[--driver browser|apptest] [--modes stock,patched] [--json out.json]``; prints medians and the
in-app / plain-process ratio (target ≤ 1.2×).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def keep_tf_kernels_across_reruns() -> bool:
    """The app's fix (``app_pages/tf_patch.py``), imported from there so the bench measures it."""
    sys.path.insert(0, str(REPO))
    from app_pages.tf_patch import keep_tf_kernels_across_reruns as patch
    return patch()


APP = """
import json, os, sys, time
import numpy as np
import streamlit as st

sys.path.insert(0, {repo!r})
sys.path.insert(0, {bench!r})
if {patched!r}:
    from inapp_latency import keep_tf_kernels_across_reruns
    keep_tf_kernels_across_reruns()

@st.cache_resource
def load():
    from cvs_core.predict import Predictor
    kw = {{}} if {engine!r} == "tf" else {{"engine": {engine!r}}}
    return Predictor.load({model!r}, **kw)

@st.cache_resource
def sample():
    from cvs_core.imaging import read_image
    return read_image({sample!r}).as_uint8()

p = load()
n = st.session_state.get("n", 0)
st.session_state["n"] = n + 1
img = sample().astype(np.int16) + np.random.default_rng(n).integers(-3, 4, sample().shape)
img = np.clip(img, 0, 255).astype(np.uint8)
pred = p.predict(img)
with open({log!r}, "a") as f:
    f.write(json.dumps({{"run": n, "inference_ms": pred.ms["inference"], "total_ms": pred.ms["total"]}}) + "\\n")
st.button("Rerun")
st.write(f"run {{n}} done: {{pred.ms['inference']:.1f}} ms")
"""


def _sample_path() -> Path:
    return sorted((REPO / "data" / "samples" / "roi").glob("*.jpg"))[0]


def _write_app(folder: Path, model: str, engine: str, patched: bool) -> tuple[Path, Path]:
    log = folder / f"log_{engine}_{'patched' if patched else 'stock'}.jsonl"
    app = folder / f"app_{engine}_{'patched' if patched else 'stock'}.py"
    app.write_text(textwrap.dedent(APP.format(repo=str(REPO), bench=str(REPO / "bench"), patched=patched,
                                              engine=engine, model=model, sample=str(_sample_path()),
                                              log=str(log))))
    return app, log


def _read_log(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _drive_browser(app: Path, log: Path, reruns: int, port: int, timeout: float = 300.0) -> None:
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(REPO / "tests"))
    from app_helpers import free_port, streamlit_server  # the tests' server start + health wait

    with streamlit_server(str(app), free_port(port), None, app.with_suffix(".server.log"), timeout_s=60) as server:
        url = server.url
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page()
            page.goto(url)
            page.get_by_text("run 0 done").wait_for(timeout=timeout * 1e3)
            for k in range(1, reruns + 1):
                time.sleep(0.3)
                page.get_by_role("button", name="Rerun").click()
                page.get_by_text(f"run {k} done").wait_for(timeout=timeout * 1e3)
            browser.close()


def _drive_apptest(app: Path, reruns: int) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(app), default_timeout=300)
    for _ in range(reruns + 1):
        at.run()
        time.sleep(0.3)


def plain_process(model: str, engine: str, runs: int) -> list[float]:
    """The same per-run call (fresh noisy image, one ``predict``) in this process: inference ms."""
    import numpy as np

    from cvs_core.imaging import read_image
    from cvs_core.predict import Predictor

    sys.path.insert(0, str(REPO))
    from bench.timing import interleaved_rounds

    kw = {} if engine == "tf" else {"engine": engine}
    p = Predictor.load(model, **kw)
    base = read_image(_sample_path()).as_uint8()

    def call(n):
        img = np.clip(base.astype(np.int16) + np.random.default_rng(n).integers(-3, 4, base.shape), 0, 255)
        return p.predict(img.astype(np.uint8)).ms["inference"]

    timed = interleaved_rounds({"plain": call}, runs + 1, pause_s=0.3, keep_results=True)
    return timed.results["plain"][1:]


def run(model: str = "inception_resnet_v2", engine: str = "tf", reruns: int = 8, driver: str = "browser",
        modes: tuple[str, ...] = ("stock", "patched"), port: int = 8531) -> dict:
    """Median in-app inference ms per mode (runs after the first, which loads the model), the plain
    process median, and their ratios."""
    if driver == "browser" and not CHROMIUM.exists():
        raise SystemExit("needs Debian's chromium at /usr/bin/chromium (never downloaded); use --driver apptest")
    result: dict = {"model": model, "engine": engine, "driver": driver, "reruns": reruns, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="cvs_inapp_") as tmp:
        for i, mode in enumerate(modes):
            app, log = _write_app(Path(tmp), model, engine, patched=(mode == "patched"))
            if driver == "browser":
                _drive_browser(app, log, reruns, port + i)
            else:
                _drive_apptest(app, reruns)
            ms = [r["inference_ms"] for r in _read_log(log)][1:]
            result[mode] = {"inference_ms": [round(v, 1) for v in ms], "median_ms": statistics.median(ms)}
    plain = plain_process(model, engine, reruns)
    result["plain"] = {"inference_ms": [round(v, 1) for v in plain], "median_ms": statistics.median(plain)}
    for mode in modes:
        result[mode]["ratio_vs_plain"] = result[mode]["median_ms"] / result["plain"]["median_ms"]
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="inception_resnet_v2")
    ap.add_argument("--engine", default="tf")
    ap.add_argument("--reruns", type=int, default=8)
    ap.add_argument("--driver", choices=("browser", "apptest"), default="browser")
    ap.add_argument("--modes", default="stock,patched")
    ap.add_argument("--port", type=int, default=8531)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    res = run(args.model, args.engine, args.reruns, args.driver, tuple(args.modes.split(",")), args.port)
    print(f"model {res['model']} · engine {res['engine']} · driver {res['driver']} · {res['cpu_count']} cores")
    print(f"  plain process : median {res['plain']['median_ms']:7.1f} ms  {res['plain']['inference_ms']}")
    for mode in args.modes.split(","):
        r = res[mode]
        print(f"  in-app {mode:<7}: median {r['median_ms']:7.1f} ms  ({r['ratio_vs_plain']:.2f}× plain)  "
              f"{r['inference_ms']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

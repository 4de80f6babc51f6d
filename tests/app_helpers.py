"""Helpers shared by the app tests (AppTest and browser): tiny registered models."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def make_tiny_models(home: Path) -> list[str]:
    """Register ``tiny_unet`` (untrained unet_heatmap, 96×40) and ``mean_shape`` (regressor that always
    answers the mean shape) under ``home/models``. Returns their names."""
    import keras

    from cvs_core import registry
    from cvs_core.codecs import HeatmapCodec, RegressionCodec
    from cvs_core.landmarks import MEAN_SHAPE_ROI, ROI_SIZE
    from cvs_core.networks import build_model
    from cvs_core.preprocess import PreprocessConfig, apply_affine, resize_affine

    os.environ["CVS_HOME"] = str(home)
    size = (96, 40)
    pre = PreprocessConfig(input_size=size, resize_first=False)
    keras.utils.set_random_seed(0)
    unet = build_model("unet_heatmap", input_size=size, base_filters=4, depth=2)
    head = unet.get_layer("heatmaps")  # positive bias: every heatmap has a positive peak, so 19 points decode
    kernel, bias = head.get_weights()
    head.set_weights([kernel, np.full_like(bias, 0.5)])
    registry.save_model_folder(unet, registry.user_models_dir() / "tiny_unet", registry.base_manifest(
        "tiny_unet", "unet_heatmap", dict(input_size=size, base_filters=4, depth=2), pre, HeatmapCodec(input_size=size),
        metrics={}, training={"data": {"note": "untrained test model"}}))

    codec = RegressionCodec(input_size=size, normalize=True)
    target = codec.encode(apply_affine(resize_affine(ROI_SIZE, size), np.asarray(MEAN_SHAPE_ROI)))
    inp = keras.Input((*size, 1))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    out = keras.layers.Dense(38, name="coords")(x)
    reg = keras.Model(inp, out)
    reg.get_layer("coords").set_weights([np.zeros((1, 38), np.float32), np.asarray(target, np.float32)])
    registry.save_model_folder(reg, registry.user_models_dir() / "mean_shape", registry.base_manifest(
        "mean_shape", "mean_shape_regressor", {}, pre, codec, metrics={}, training={}))
    return ["tiny_unet", "mean_shape"]


# ----------------------------------------------------------------------------- browser tests
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; never downloaded
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port(preferred: int) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def serve_streamlit(script: str, port: int, home: Path, log_name: str, timeout_s: float = 90):
    """Start ``streamlit run script`` (relative to the repository) on 127.0.0.1:``port`` with
    ``CVS_HOME=home``; a generator that yields the base URL once ``/_stcore/health`` answers and
    stops the server (its whole process group) afterwards. Use it as a pytest fixture body."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    import pytest

    env = dict(os.environ, CVS_HOME=str(home), PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / log_name
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    up = False
    while time.time() < deadline and proc.poll() is None:
        try:
            up = urllib.request.urlopen(url + "/_stcore/health", timeout=2).read().strip() == b"ok"
        except OSError:
            pass
        if up:
            break
        time.sleep(0.3)
    if not up:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        pytest.fail(f"streamlit did not come up on port {port}:\n" + log_path.read_text(errors="replace")[-3000:])
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def launch_chromium():
    """A generator yielding a headless Debian Chromium (Playwright) and closing it afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()

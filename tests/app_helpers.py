"""Helpers shared by the app tests (AppTest and browser): tiny registered models."""
from __future__ import annotations

import contextlib
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


def free_port(preferred: int = 0) -> int:
    """``preferred`` when it is free on 127.0.0.1, else (or with 0) any free port."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerDidNotStart(RuntimeError):
    """``streamlit run`` exited, or ``/_stcore/health`` did not answer in time (the message has the log's tail)."""


class StreamlitServer:
    """A running ``streamlit run`` (see :func:`streamlit_server`): ``url``, ``pid`` (the process group
    leader; its children are the server's), ``log_path``."""

    def __init__(self, url: str, pid: int, log_path: Path):
        self.url, self.pid, self.log_path = url, pid, log_path


@contextlib.contextmanager
def streamlit_server(script: str, port: int, home: Path | None, log_path: Path, timeout_s: float = 90,
                     env: dict[str, str] | None = None):
    """Start ``streamlit run script`` (relative to the repository, or absolute) on 127.0.0.1:``port``
    with ``CVS_HOME=home`` (None: this process's) plus ``env``, the repository as working directory
    (its ``.streamlit/config.toml`` applies) and the server's output in ``log_path``; a context manager that
    gives a :class:`StreamlitServer` once ``/_stcore/health`` answers and stops the server (its whole
    process group) afterwards. Raises :class:`ServerDidNotStart` when it does not come up in
    ``timeout_s``. Usable from scripts (the benches) as well as from pytest fixtures."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    full_env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    if home is not None:
        full_env["CVS_HOME"] = str(home)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
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
            why = (f"exited with code {proc.returncode}" if proc.poll() is not None
                   else f"did not answer in {timeout_s:.0f} s")
            raise ServerDidNotStart(f"streamlit on port {port} {why}:\n" + log_path.read_text(errors="replace")[-3000:])
        yield StreamlitServer(url, proc.pid, log_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def serve_streamlit(script: str, port: int, home: Path, log_name: str, timeout_s: float = 90,
                    env: dict[str, str] | None = None):
    """:func:`streamlit_server` as a pytest fixture body: a generator that yields the base URL (the
    log goes to ``tests/artifacts/log_name``); the test fails with the log's tail when the server
    does not come up."""
    import pytest

    try:
        with streamlit_server(script, port, home, ARTIFACTS / log_name, timeout_s, env) as server:
            yield server.url
    except ServerDidNotStart as exc:
        pytest.fail(str(exc))


def launch_chromium():
    """A generator yielding a headless Debian Chromium (Playwright) and closing it afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


# ----------------------------------------------------------------------------- websocket client
class StreamlitClient:
    """A minimal browser stand-in on Streamlit's websocket (``/_stcore/stream``): BackMsg protobufs
    out, ForwardMsg protobufs in — what the frontend sends for a rerun (``BackMsg.rerun_script``,
    a :class:`ClientState`) and for the menu's "Clear cache" (``BackMsg.clear_cache = true``).

    Page selection works like the frontend's first load of ``/<page>``: the first rerun sends
    ``page_name`` = the page's URL path (``"compare"``) and an empty ``page_script_hash``;
    ``st.navigation`` resolves the page by its ``url_pathname`` and answers with a
    ``ForwardMsg.navigation`` holding that page's script hash, which :meth:`recv` keeps in
    ``page_script_hash`` and later reruns (fragment auto-reruns included) send instead of the name.
    Widgets keep their default values unless a request sets them (``request_run(widgets=…)``)."""

    def __init__(self, url: str | int, open_timeout: float = 30):
        """``url``: the server's base URL (``http://127.0.0.1:8501``) or just a port on 127.0.0.1."""
        from websockets.sync.client import connect

        base = f"http://127.0.0.1:{url}" if isinstance(url, int) else url.rstrip("/")
        self.ws = connect("ws" + base.removeprefix("http") + "/_stcore/stream", subprotocols=["streamlit"],
                          origin=base, open_timeout=open_timeout, max_size=None)
        self.page_script_hash = ""
        self.widgets: dict[str, tuple[str, object]] = {}  # widget id → (WidgetState field, value)

    def send(self, **fields):
        """One BackMsg with these fields set (``clear_cache=True`` …); ``rerun_script=True`` is
        :meth:`request_run` for the current page."""
        from streamlit.proto.BackMsg_pb2 import BackMsg

        if fields.pop("rerun_script", False):
            self.request_run()
        if fields:
            msg = BackMsg()
            for k, v in fields.items():
                setattr(msg, k, v)
            self.ws.send(msg.SerializeToString())

    def request_run(self, page_name: str = "", fragment_id: str = "", is_auto_rerun: bool = False,
                    widgets: dict[str, tuple[str, object]] | None = None):
        """Ask for a script run: of the page at URL path ``page_name`` (e.g. ``"compare"``), else of the
        current page (``page_script_hash``, the app's default page before any navigation); with
        ``fragment_id``, only that fragment (what the frontend sends for ``st.fragment(run_every=…)``).
        ``widgets``: values the user set, widget id (from the widget's element) → (``WidgetState``
        field, value), e.g. ``("string_value", "Phantom")`` for a radio, ``("double_value", 8.0)`` for a
        number input; kept and sent again with every later request, as the frontend does."""
        from streamlit.proto.BackMsg_pb2 import BackMsg

        self.widgets.update(widgets or {})
        msg = BackMsg()
        run = msg.rerun_script
        run.query_string = ""
        run.page_name = page_name
        run.page_script_hash = "" if page_name else self.page_script_hash
        run.fragment_id = fragment_id
        run.is_auto_rerun = is_auto_rerun
        for wid, (kind, value) in self.widgets.items():
            setattr(run.widget_states.widgets.add(id=wid), kind, value)
        self.ws.send(msg.SerializeToString())

    def recv(self, timeout: float | None = None):
        """The next ForwardMsg, parsed, and its raw bytes. Raises ``TimeoutError`` after ``timeout`` s
        and ``websockets.exceptions.ConnectionClosed`` when the server closed the socket."""
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        raw = self.ws.recv(timeout=timeout)
        msg = ForwardMsg()
        msg.ParseFromString(raw)
        if msg.WhichOneof("type") == "navigation" and msg.navigation.page_script_hash:
            self.page_script_hash = msg.navigation.page_script_hash
        return msg, raw

    def rerun(self, timeout: float = 90.0, page_name: str = "") -> bytes:
        """Run the current page (or ``page_name``) to its end (past ``st.rerun()``s); returns the raw
        ForwardMsgs of that run joined (their text is in clear)."""
        import time

        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self.request_run(page_name)
        got, end = [], time.monotonic() + timeout
        while time.monotonic() < end:
            msg, raw = self.recv(timeout=max(0.1, end - time.monotonic()))
            got.append(raw)
            if msg.WhichOneof("type") == "script_finished" and msg.script_finished in (
                    ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_WITH_COMPILE_ERROR):
                return b"".join(got)
        raise TimeoutError(f"the script run did not finish in {timeout:.0f} s")

    def close(self):
        self.ws.close()

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
    """``streamlit run script`` (relative to the repository, or absolute) on 127.0.0.1:``port`` with
    ``CVS_HOME=home`` (None: this process's) plus ``env``, the repository as working directory (its
    ``.streamlit/config.toml`` applies), started in its own process group (session) and logged to
    ``log`` (a path, or a name under ``tests/artifacts``; appended with ``append_log``). The
    constructor returns once ``/_stcore/health`` answers and raises :class:`ServerDidNotStart` with the
    log's tail otherwise. ``url``, ``pid`` (the process group leader), ``log_path``.

    ``stop()`` ends it politely (SIGTERM to the group, SIGKILL after 15 s); ``kill(sig)`` sends one
    signal to the group and waits for the server process to exit — a crash or an operator's
    ``kill -9``. Processes the server started in sessions of their own (training runs) are not in
    its group and are not signalled."""

    def __init__(self, script: str, port: int, home: Path | None, log: str | Path, timeout_s: float = 90,
                 env: dict[str, str] | None = None, append_log: bool = False):
        import subprocess
        import sys
        import time
        import urllib.request

        full_env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
        if home is not None:
            full_env["CVS_HOME"] = str(home)
        self.log_path = Path(log) if Path(log).is_absolute() else ARTIFACTS / log
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab" if append_log else "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.time() + timeout_s
        up = False
        while time.time() < deadline and self.proc.poll() is None:
            try:
                up = urllib.request.urlopen(self.url + "/_stcore/health", timeout=2).read().strip() == b"ok"
            except OSError:
                pass
            if up:
                break
            time.sleep(0.3)
        if not up:
            why = (f"exited with code {self.proc.returncode}" if self.proc.poll() is not None
                   else f"did not answer in {timeout_s:.0f} s")
            self.kill()
            raise ServerDidNotStart(f"streamlit on port {port} {why}:\n"
                                    + self.log_path.read_text(errors="replace")[-3000:])

    def kill(self, sig: int | None = None, timeout_s: float = 30) -> int:
        """Send ``sig`` (default SIGKILL) to the server's process group; wait for the server to exit
        (SIGKILL after ``timeout_s``). Returns its exit code."""
        import signal
        import subprocess

        sig = signal.SIGKILL if sig is None else sig
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._log.close()
        return self.proc.returncode

    def stop(self) -> int:
        import signal

        return self.kill(signal.SIGTERM, timeout_s=15)


@contextlib.contextmanager
def streamlit_server(script: str, port: int, home: Path | None, log_path: Path, timeout_s: float = 90,
                     env: dict[str, str] | None = None):
    """A :class:`StreamlitServer` as a context manager (stopped afterwards). Usable from scripts (the
    benches) as well as from pytest fixtures."""
    server = StreamlitServer(script, port, home, log_path, timeout_s, env)
    try:
        yield server
    finally:
        server.stop()


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


# ----------------------------------------------------------------------------- training runs (the run tests)
def tiny_config(epochs: int = 1, phantoms: int = 8, val_phantoms: int = 2, **kw):
    """A TrainConfig that trains in seconds: ``unet_heatmap`` with 4 base filters and depth 2 on a
    96×40 (rows × columns) input, batch 4, ``phantoms`` fresh phantoms an epoch. ``kw``: other
    TrainConfig fields (patience, lr, name …)."""
    from cvs_core.preprocess import PreprocessConfig
    from cvs_core.train import TrainConfig

    return TrainConfig(model="unet_heatmap", phantoms=phantoms, val_phantoms=val_phantoms, epochs=epochs,
                       batch_size=4, builder_kwargs=dict(base_filters=4, depth=2),
                       preprocess=PreprocessConfig(input_size=(96, 40), resize_first=False).to_dict(), **kw)


def wait_for_run(run_id: str, statuses, timeout: float = 150.0, poll_s: float = 0.3) -> dict:
    """Poll ``runs.run_info`` until the run's status is one of ``statuses``; returns that info.
    Fails with the run's log tail after ``timeout`` seconds."""
    import time

    from cvs_core import runs

    deadline = time.time() + timeout
    info = runs.run_info(run_id)
    while info["status"] not in statuses and time.time() < deadline:
        time.sleep(poll_s)
        info = runs.run_info(run_id)
    assert info["status"] in statuses, f"run {run_id} stayed {info['status']!r}; log:\n{runs.log_tail(run_id, 40)}"
    return info


# ----------------------------------------------------------------------------- browser pages (test_browser*.py)
DOCS_SHOTS = ROOT / "docs" / "screenshots"
LOCAL_HOSTS = ("127.0.0.1", "localhost")


def needs_chromium():
    """The ``skipif`` mark of every browser test: Debian's Chromium is never downloaded."""
    import pytest

    return pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                              "(apt-get install chromium chromium-driver, or `make browser`); never downloaded")


def browser_page(browser, width: int = 1280, height: int = 900, record_outside: bool = False):
    """A generator yielding a new page (own browser context, ``width``×``height`` CSS px, device scale
    1) and closing its context afterwards; a ``page`` fixture's body. With ``record_outside``,
    ``page.outside`` lists every http(s)/ws(s) request to a host other than 127.0.0.1/localhost."""
    import urllib.parse

    ctx = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
    page = ctx.new_page()
    if record_outside:
        page.outside = []

        def on_request(req):
            url = urllib.parse.urlparse(req.url)
            if url.scheme in ("http", "https", "ws", "wss") and url.hostname not in LOCAL_HOSTS:
                page.outside.append(req.url)

        page.on("request", on_request)
    try:
        yield page
    finally:
        ctx.close()


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Until the app has rendered and no script run or spinner is showing, plus 0.5 s."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"] [data-testid=\"stStatusWidgetRunningIcon\"]')"
        " && !document.querySelector('[data-testid=\"stSpinner\"]')", timeout=timeout_ms)
    page.wait_for_timeout(500)


def screenshot(page, name: str, full_page: bool = True, settle_ms: int = 500) -> Path:
    """``tests/artifacts/<name>.png``; with ``full_page`` the viewport first grows to the content's
    height (at most 4000 px: Streamlit scrolls inside its main container) and waits ``settle_ms`` for
    charts to re-lay out. Also copied to docs/screenshots/ with ``CVS_UPDATE_SCREENSHOTS=1``."""
    import shutil

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    size = page.viewport_size
    if full_page:
        height = page.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                               " return m ? m.scrollHeight : document.body.scrollHeight; }")
        page.set_viewport_size({"width": size["width"], "height": min(max(int(height), size["height"]), 4000)})
        page.wait_for_timeout(settle_ms)
    page.screenshot(path=str(path), full_page=full_page)
    page.set_viewport_size(size)
    if os.environ.get("CVS_UPDATE_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_SHOTS / f"{name}.png")
    return path

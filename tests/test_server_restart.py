"""The app server restarted during a training run (issue 14): the run keeps training and the new
server lists it correctly — running while it runs, then succeeded with its metrics.

A real ``streamlit run streamlit_app.py`` (temporary CVS_HOME) and a real headless Chromium (Debian's
/usr/bin/chromium via Playwright; never downloaded): the run is started by clicking "Start training"
on the Training page, so the training process is the server's child. Then the server is stopped
with SIGTERM (an operator's restart), a new server comes up on the same CVS_HOME and shows the run
running; that one is killed with SIGKILL (a crash), a third comes up and shows it running, and
finally, once training ends, succeeded with the best validation MRE of its metrics.

The training process is held with SIGSTOP while the servers restart (and continued with SIGCONT
afterwards), so the run is certainly mid-training during the restarts however slow this machine is.
A stopped process still receives signals: a SIGKILL ends it at once and a SIGTERM stays pending
(checked in /proc) — so a server whose signals reached its training run fails here at once (checked
by starting runs without ``start_new_session``: the run ended "cancelled")."""
from __future__ import annotations

import contextlib
import os
import signal
import time

import pandas as pd
import pytest
from app_helpers import StreamlitServer, browser_page, free_port, launch_chromium, needs_chromium, wait_for_run

PORT = 8527
EPOCHS = 3

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    needs_chromium(),
]


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "cvs"
    h.mkdir()
    monkeypatch.setenv("CVS_HOME", str(h))  # this process reads the same runs as the servers
    yield h
    from cvs_core import runs

    for r in runs.list_runs():  # after a failed check: no training process left behind (or stopped)
        if r["alive"] and r["pid"]:
            os.kill(r["pid"], signal.SIGKILL)


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@contextlib.contextmanager
def _training_page(browser, url: str):
    """A new browser session on the Training page of the server at ``url``."""
    from playwright.sync_api import expect

    with contextlib.contextmanager(browser_page)(browser, 1280, 1000) as page:
        page.goto(url + "/training")
        expect(page.get_by_text("Start a new run").first).to_be_visible(timeout=120_000)
        yield page


def _panel(page, run_id: str):
    """The run panel's headline: ``**<id>** · <icon> `<status>` · epoch e/n · best val MRE …``."""
    return page.locator('[data-testid="stMarkdown"]', has_text=run_id).filter(has_text="epoch")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def _survived(pid: int) -> bool:
    """The (stopped) training process is alive and no SIGTERM/SIGHUP/SIGINT waits for it (Linux
    ``/proc/<pid>/status``: SigPnd for the thread, ShdPnd for the process)."""
    if not _alive(pid):
        return False
    mask = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("SigPnd:", "ShdPnd:")):
            mask |= int(line.split()[1], 16)
    pending = {n + 1 for n in range(64) if mask >> n & 1}
    return not pending & {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}


def _shows_running(browser, url: str, run_id: str, epoch: int) -> None:
    """A new browser session on the server at ``url`` lists the run as running at ``epoch``."""
    from playwright.sync_api import expect

    with _training_page(browser, url) as page:
        panel = _panel(page, run_id)
        expect(panel).to_contain_text("running", timeout=60_000)
        expect(panel).to_contain_text(f"epoch {epoch}/{EPOCHS}")
        expect(page.get_by_role("button", name="Cancel run")).to_be_visible()
        assert page.get_by_role("button", name="Resume run").count() == 0  # not taken for interrupted
        assert page.locator('[data-testid="stException"]').count() == 0


def test_server_restarts_during_a_run_list_it_running_then_succeeded(home, browser):
    import psutil
    from playwright.sync_api import expect

    from cvs_core import runs

    t0 = time.time()
    port = free_port(PORT)
    log = "restart_server.log"
    server = StreamlitServer("streamlit_app.py", port, home, log)
    try:
        with _training_page(browser, server.url) as page:
            for label, value in (("Epochs", EPOCHS), ("Phantoms per epoch (fresh each epoch)", 16),
                                 ("Validation phantoms (fixed)", 4), ("Batch size", 16)):
                box = page.get_by_role("spinbutton", name=label, exact=True)
                box.fill(str(value))
                box.press("Tab")
            page.get_by_role("button", name="Start training").click()
            expect(page.get_by_text("Started run")).to_be_visible(timeout=60_000)
        listed = runs.list_runs()
        assert len(listed) == 1, listed
        run_id, pid = listed[0]["id"], listed[0]["pid"]
        assert psutil.Process(pid).ppid() == server.pid  # the server started the training process
        cfg = runs.read_json(runs.run_dir(run_id) / "config.json")
        assert (cfg["epochs"], cfg["phantoms"], cfg["val_phantoms"], cfg["batch_size"]) == (EPOCHS, 16, 4, 16)

        deadline = time.time() + 240  # mid-training: an epoch done, more to come
        while runs.run_info(run_id)["epoch"] < 1 and time.time() < deadline:
            assert runs.run_info(run_id)["status"] in runs.ACTIVE, runs.log_tail(run_id, 40)
            time.sleep(0.1)
        os.kill(pid, signal.SIGSTOP)  # this process only: its group is not the test's business
        epoch = runs.run_info(run_id)["epoch"]
        assert 1 <= epoch < EPOCHS, epoch
        t_started = time.time() - t0

        server.kill(signal.SIGTERM)  # an operator's restart
    except BaseException:
        server.kill()
        raise
    assert _survived(pid), "the server's SIGTERM reached the training process"

    server = StreamlitServer("streamlit_app.py", port, home, log, append_log=True)
    try:
        _shows_running(browser, server.url, run_id, epoch)
    finally:
        server.kill(signal.SIGKILL)  # a crash
    assert _survived(pid), "the training process died with the server (SIGKILL)"

    server = StreamlitServer("streamlit_app.py", port, home, log, append_log=True)
    try:
        _shows_running(browser, server.url, run_id, epoch)
        t_restarts = time.time() - t0 - t_started
        os.kill(pid, signal.SIGCONT)
        with _training_page(browser, server.url) as page:
            panel = _panel(page, run_id)
            expect(panel).to_contain_text("succeeded", timeout=240_000)  # the page refreshes itself
            expect(panel).to_contain_text(f"epoch {EPOCHS}/{EPOCHS}")
            info = runs.run_info(run_id)
            expect(panel).to_contain_text(f"best val MRE {info['best']:.2f} px")
            expect(page.get_by_role("button", name="Register as model")).to_be_visible()
            expect(page.locator('[data-testid="stPlotlyChart"]').first).to_be_visible()  # the curves
            assert page.locator('[data-testid="stException"]').count() == 0
    finally:
        server.stop()

    info = wait_for_run(run_id, runs.FINAL, timeout=10)
    assert info["status"] == "succeeded" and info["epoch"] == EPOCHS and info["model_dir"], info
    metrics = pd.read_csv(runs.run_dir(run_id) / "metrics.csv")
    assert list(metrics["epoch"]) == list(range(1, EPOCHS + 1))  # no epoch lost or repeated
    assert info["best"] == pytest.approx(metrics["val_mre_px"].min(), rel=1e-6)
    row = runs._db_get(run_id)
    assert row["status"] == "succeeded" and row["pid"] == pid and row["resumes"] == 0, row
    print(f"\nserver restart test: run started and 1 epoch done after {t_started:.1f} s; two restarts "
          f"(SIGTERM, SIGKILL) checked in {t_restarts:.1f} s; total {time.time() - t0:.1f} s")

"""Durable training runs: SIGKILL mid-epoch → interrupted → resume → the exported model is the best
checkpoint with its metrics intact; runs (also CLI runs outside $CVS_HOME) listed correctly by a
fresh process (an app restart)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app_helpers import tiny_config, wait_for_run
from cvs_core import runs
from cvs_core.train import read_best

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def durable_config(epochs: int, phantoms: int = 32):
    """The tiny config without early stopping or LR drops (every epoch runs), 4 validation phantoms."""
    return tiny_config(epochs, phantoms, val_phantoms=4, early_stopping_patience=100, reduce_lr_patience=100, lr=3e-3)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CVS_HOME", str(tmp_path / "cvs"))
    return tmp_path / "cvs"


def _env(home: Path) -> dict:
    env = dict(os.environ, CVS_HOME=str(home), PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    return env


def wait_epochs(d: Path, n: int, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (d / "state.json").is_file() and json.loads((d / "state.json").read_text()).get("epoch", 0) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} epochs after {timeout} s: {(d / 'log.txt').read_text()[-2000:]}")


def _weights(path: Path):
    import keras

    from cvs_core.networks import CUSTOM_OBJECTS
    return keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=False).get_weights()


def test_sigkill_mid_epoch_then_resume_exports_the_best_checkpoint(home):
    run_id = runs.start_run(durable_config(epochs=5, phantoms=48), owner="alice")  # 12 steps an epoch
    d = runs.run_dir(run_id)
    wait_epochs(d, 2)
    time.sleep(0.2)  # into the next epoch
    os.killpg(runs.run_info(run_id)["pid"], signal.SIGKILL)
    runs._CHILDREN.clear()  # as after an app restart: only the disk and the registry remain
    info = wait_for_run(run_id, runs.FINAL, timeout=30)
    assert info["status"] == "interrupted" and info["resumable"], info
    assert info["resume_command"] == f"cvs train --resume --out {d}"
    done_before = json.loads((d / "state.json").read_text())["epoch"]
    assert 2 <= done_before < 5
    # every checkpoint on disk is complete (no half-written file, no stray temporary)
    assert not list((d / "checkpoints").glob(".tmp-*"))
    best_before = read_best(d)
    assert best_before and (d / "checkpoints" / best_before["file"]).is_file()

    runs.resume_run(run_id, owner="alice")
    info = wait_for_run(run_id, ("succeeded", "failed", "interrupted"), timeout=240)
    assert info["status"] == "succeeded", runs.log_tail(run_id, 40)
    assert f"after epoch {done_before}" in runs.log_tail(run_id, 200)

    metrics = pd.read_csv(d / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3, 4, 5]  # no epoch lost or repeated across the kill
    best = read_best(d)
    assert best["score"] == pytest.approx(metrics["val_mre_px"].min(), rel=1e-6)
    assert best["epoch"] == int(metrics.loc[metrics["val_mre_px"].idxmin(), "epoch"])
    assert best["score"] <= best_before["score"]
    manifest = json.loads((d / "model" / "manifest.json").read_text())
    assert manifest["metrics"]["best_val_mre_px"] == pytest.approx(best["score"])
    assert manifest["metrics"]["best_epoch"] == best["epoch"]
    assert info["best"] == pytest.approx(best["score"])
    exported = _weights(d / "model" / "model.keras")
    best_w = _weights(d / "checkpoints" / best["file"])
    assert len(exported) == len(best_w) and all(np.array_equal(a, b) for a, b in zip(exported, best_w))
    last_w = _weights(d / "checkpoints" / "last.keras")
    if best["epoch"] != 5:  # then the last epoch's weights differ from the exported best
        assert not all(np.array_equal(a, b) for a, b in zip(exported, last_w))


def _list_in_new_process(home: Path) -> list[dict]:
    code = "import json; from cvs_core import runs; print(json.dumps(runs.list_runs()))"
    out = subprocess.run([sys.executable, "-c", code], env=_env(home), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_run_outside_home_is_listed_interrupted_and_resumed_by_one_command(home, tmp_path):
    out_dir = tmp_path / "elsewhere" / "my_run"
    cfg = tmp_path / "config.json"
    cfg.write_text(durable_config(epochs=4).to_json())
    cmd = [sys.executable, "-m", "cvs_core.cli", "train", "--config", str(cfg), "--out", str(out_dir), "--quiet"]
    proc = subprocess.Popen(cmd, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_epochs(out_dir, 1)
        listed = _list_in_new_process(home)  # the app (another process) sees the CLI run as running
        mine = [r for r in listed if r["dir"] == str(out_dir.resolve())]
        assert len(mine) == 1 and mine[0]["status"] == "running" and mine[0]["alive"], listed
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    listed = _list_in_new_process(home)
    mine = [r for r in listed if r["dir"] == str(out_dir.resolve())]
    assert mine and mine[0]["status"] == "interrupted", listed

    # the one-command resume (no --config needed: it is read from the run folder); while it runs,
    # the app (another process) shows it running — not "failed" because the first pid is dead
    res = subprocess.Popen([sys.executable, "-m", "cvs_core.cli", "train", "--resume", "--out", str(out_dir),
                            "--quiet"], env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.time() + 300
    while res.poll() is None and time.time() < deadline:
        listed = _list_in_new_process(home)
        seen += [r["status"] for r in listed if r["dir"] == str(out_dir.resolve())]
        time.sleep(0.5)
    err = res.communicate(timeout=300)[1]
    assert res.returncode == 0, err[-2000:]
    # "interrupted" until the new process has started Python and registered; from then on running
    assert "running" in seen and set(seen[seen.index("running"):]) <= {"running", "succeeded"}, seen
    listed = _list_in_new_process(home)
    mine = [r for r in listed if r["dir"] == str(out_dir.resolve())]
    assert mine[0]["status"] == "succeeded" and mine[0]["epoch"] == 4 and mine[0]["model_dir"], mine
    assert list(pd.read_csv(out_dir / "metrics.csv")["epoch"]) == [1, 2, 3, 4]
    row = runs._db_get(mine[0]["id"])
    assert row["status"] == "succeeded" and row["resumes"] == 1 and row["heartbeat"] > time.time() - 120

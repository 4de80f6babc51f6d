"""Multi-worker training (tf.distribute.MultiWorkerMirroredStrategy, TF_CONFIG) with two worker
processes on loopback: both finish, only the chief writes the run folder, the weights stay in sync."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cvs_core.preprocess import PreprocessConfig
from cvs_core.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_on_loopback(tmp_path):
    config = TrainConfig(model="unet_heatmap", phantoms=16, val_phantoms=4, epochs=2, batch_size=4,
                         distribute="multiworker", builder_kwargs=dict(base_filters=4, depth=2),
                         preprocess=PreprocessConfig(input_size=(96, 40), resize_first=False).to_dict())
    cfg = tmp_path / "config.json"
    cfg.write_text(config.to_json())
    out = tmp_path / "run"
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", CVS_HOME=str(tmp_path / "home"),
                   CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, "-m", "cvs_core.cli", "train", "--config", str(cfg),
                                       "--out", str(out)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=400)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    # both workers saw the same all-reduced loss and learning rate: one model trained jointly on
    # different batches (their validation errors differ a little: BatchNorm statistics are per worker)
    def losses(log):
        return [(ln.split()[1], ln.split()[2], ln.split()[-1]) for ln in log.splitlines() if ln.startswith("epoch ")]
    assert len(losses(logs[0])) == 2 and losses(logs[0]) == losses(logs[1]), (losses(logs[0]), losses(logs[1]))
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]  # written once, by the chief
    assert (out / "model" / "manifest.json").is_file()
    assert not list(out.glob(".worker-*"))  # the other worker's scratch folder is gone
    assert json.loads((out / "status.json").read_text())["status"] == "succeeded"
    run = json.loads((out / "run.json").read_text())
    assert run["pid"] == procs[0].pid  # the chief registered the run

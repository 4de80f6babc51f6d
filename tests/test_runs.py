"""Background training runs (cvs_core.runs): start, list, metrics, log, cancel, register, crash
detection, and the safe extraction of uploaded dataset zips."""
from __future__ import annotations

import io
import os
import signal
import socket
import time
import zipfile

import pytest

from app_helpers import tiny_config, wait_for_run
from cvs_core import registry, runs


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CVS_HOME", str(tmp_path / "cvs"))
    return tmp_path / "cvs"


def wait_running(run_id: str, timeout: float = 90.0) -> None:
    """Until train() has written 'running' (TF imported, SIGTERM handler installed)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if runs.run_info(run_id)["status"] == "running":
            return
        time.sleep(0.3)
    raise AssertionError(f"run never started: {runs.log_tail(run_id, 40)}")


def test_start_list_metrics_register(home):
    run_id = runs.start_run(tiny_config(epochs=2, name="tiny_run"))
    assert (home / "runs" / run_id / "run.json").is_file()
    listed = runs.list_runs()
    assert [r["id"] for r in listed] == [run_id]
    assert listed[0]["status"] in ("starting", "running")

    info = wait_for_run(run_id, runs.FINAL)
    assert info["status"] == "succeeded", runs.log_tail(run_id, 40)
    assert info["progress"] == 1.0 and info["epoch"] == 2 and info["epochs"] == 2
    assert info["best"] is not None and info["model_dir"]
    df = runs.read_metrics(run_id)
    assert list(df["epoch"]) == [1, 2] and "loss" in df and "val_mre_px" in df
    assert "epoch 2/2" in runs.log_tail(run_id, 50)

    folder = runs.register_run_model(run_id, "from_run")
    assert folder == registry.user_models_dir() / "from_run"
    assert "from_run" in [m.name for m in registry.list_models()]
    assert runs.run_info(run_id)["registered_as"] == "from_run"
    with pytest.raises(registry.ModelError):
        runs.register_run_model(run_id, "from_run")  # the name is taken now
    runs.delete_run(run_id)
    assert runs.list_runs() == []


def test_cancel_stops_the_process_group(home):
    run_id = runs.start_run(tiny_config(epochs=500, phantoms=64))
    wait_running(run_id)
    info = runs.cancel(run_id, wait_s=60)
    assert info["status"] == "cancelled", runs.log_tail(run_id, 40)
    assert not info["alive"]
    with pytest.raises(ValueError):
        runs.register_run_model(run_id, "nope")


def test_killed_run_shows_interrupted_even_after_app_restart(home):
    run_id = runs.start_run(tiny_config(epochs=500, phantoms=64))
    pid = runs.run_info(run_id)["pid"]
    time.sleep(1.0)
    os.killpg(pid, signal.SIGKILL)
    runs._CHILDREN.clear()  # as if the app had restarted: only the files on disk remain
    info = wait_for_run(run_id, runs.FINAL, timeout=20)
    assert info["status"] == "interrupted"
    assert "process exited" in info["status_text"] and info["resumable"]
    assert runs.run_info(run_id)["status"] == "interrupted"  # persisted
    assert runs._db_get(run_id)["status"] == "interrupted"  # and in the registry
    with pytest.raises(ValueError):
        runs.run_info("../etc")


def _zip(entries: dict, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_extract_dataset_zip(home, samples_dir):
    csv = (samples_dir / "train_data.csv").read_text().splitlines()
    rows = [csv[0]] + [r for r in csv[1:] if r.startswith("LC (1).jpg")]
    good = _zip({"set/labels.csv": "\n".join(rows) + "\n",
                 "set/images/LC (1).jpg": (samples_dir / "roi" / "LC (1).jpg").read_bytes()})
    csv_path, images = runs.extract_dataset_zip(good)
    assert csv_path.name == "labels.csv" and (images / "LC (1).jpg").is_file()
    assert str(csv_path).startswith(str(home / "uploads"))
    assert runs.extract_dataset_zip(good) == (csv_path, images)  # extracted once

    for bad, msg in [
        (_zip({"/etc/passwd.csv": "x"}), "absolute"),
        (_zip({"../evil.csv": "x"}), "outside"),
        (_zip({"a.csv": "image_name\n", "bomb.bin": b"\0" * 5_000_000}), "zip bomb"),
        (b"PK\x03\x04 definitely not a zip", "zip"),
        (_zip({"readme.txt": "no csv"}), "no .csv"),
    ]:
        with pytest.raises(runs.DatasetZipError, match=msg):
            runs.extract_dataset_zip(bad)
    assert not (home / "evil.csv").exists() and not (home / "uploads" / "evil.csv").exists()


def test_active_run_limit(home, monkeypatch):
    monkeypatch.setenv("CVS_MAX_ACTIVE_RUNS", "1")
    first = runs.start_run(tiny_config(epochs=50, phantoms=16))
    try:
        with pytest.raises(runs.RunLimitError, match="limit is 1"):
            runs.start_run(tiny_config())
    finally:
        runs.cancel(first, wait_s=30)
    wait_for_run(first, ("cancelled", "failed", "succeeded"))
    second = runs.start_run(tiny_config())  # a slot is free again
    runs.cancel(second, wait_s=30)


def test_per_user_run_limit(home, monkeypatch):
    monkeypatch.setenv("CVS_MAX_ACTIVE_RUNS", "10")
    monkeypatch.setenv("CVS_LIMIT_MAX_JOBS_PER_USER", "2")
    fake = [{"id": "a", "status": "running", "owner": "ann"}, {"id": "b", "status": "starting", "owner": "ann"},
            {"id": "c", "status": "succeeded", "owner": "bob"}]
    monkeypatch.setattr(runs, "list_runs", lambda: fake)
    with pytest.raises(runs.RunLimitError, match="2 active run\\(s\\); the limit is 2 per user"):
        runs.start_run(tiny_config(), owner="ann")
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())  # nothing was created


def _fake_run(home, run_id: str, host: str, heartbeat_age: float, status: str = "running"):
    import json as _json
    d = runs.runs_dir() / run_id
    d.mkdir(parents=True)
    (d / "config.json").write_text(tiny_config().to_json())
    (d / "status.json").write_text(_json.dumps({"status": status, "epoch": 3, "epochs": 10}))
    (d / "run.json").write_text(_json.dumps({"id": run_id, "pid": 999999, "host": host, "created": "2026-01-01T00:00:00"}))
    runs._db_upsert(run_id, dir=str(d), host=host, pid=999999, heartbeat=time.time() - heartbeat_age, status=status)
    return d


def test_runs_on_other_hosts_are_judged_by_their_heartbeat(home, monkeypatch):
    monkeypatch.setenv("CVS_HEARTBEAT_STALE_S", "30")
    _fake_run(home, "remote-fresh", "gpu-node-7", heartbeat_age=5)
    _fake_run(home, "remote-stale", "gpu-node-8", heartbeat_age=120)
    _fake_run(home, "local-dead", socket.gethostname(), heartbeat_age=1)  # pid 999999 does not exist here
    by_id = {r["id"]: r for r in runs.list_runs()}
    assert by_id["remote-fresh"]["status"] == "running" and by_id["remote-fresh"]["alive"]
    assert by_id["remote-stale"]["status"] == "interrupted" and by_id["remote-stale"]["resumable"]
    assert by_id["local-dead"]["status"] == "interrupted"
    assert runs._db_get("remote-stale")["status"] == "interrupted"
    with pytest.raises(ValueError, match="only an interrupted"):
        runs.resume_run("remote-fresh")
    runs.delete_run("local-dead")
    assert runs._db_get("local-dead") is None and "local-dead" not in {r["id"] for r in runs.list_runs()}

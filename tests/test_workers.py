"""cvs_core.workers: the same model in several processes gives the same landmarks as one Predictor,
reports a worker's errors with their message, and stops its processes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cvs_core import evaluate as ev
from cvs_core.workers import WorkerError, WorkerPool

N = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from cvs_core.synth import write_phantom_dataset

    folder = tmp_path_factory.mktemp("workers_data")
    write_phantom_dataset(folder, n=N, seed=41, progress=False)
    return ev.load_dataset(folder / "labels.csv", folder / "images")


@pytest.fixture(scope="module")
def pool(tiny_model_dir):
    with WorkerPool(tiny_model_dir, workers=2) as p:
        yield p


def test_pool_gives_the_in_process_landmarks(pool, tiny_model_dir, dataset):
    from cvs_core.predict import Predictor

    assert pool.workers == 2 and pool.threads >= 1
    one = ev.predict_dataset(Predictor(tiny_model_dir), dataset, batch_size=4, use_cache=False)
    seen = []
    many = ev.predict_dataset(pool, dataset, batch_size=4, use_cache=False, progress=lambda d, n: seen.append((d, n)))
    np.testing.assert_allclose(many.pred, one.pred, atol=1e-3, equal_nan=True)
    np.testing.assert_allclose(many.confidence, one.confidence, atol=1e-4, equal_nan=True)
    assert seen[0] == (0, N) and seen[-1] == (N, N)
    # the cache key does not depend on how the model was run
    assert ev.cache_key(pool, dataset) == ev.cache_key(Predictor(tiny_model_dir), dataset)


def test_a_bad_image_fails_with_its_message_and_the_pool_keeps_working(pool, dataset, tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"this is not a PNG")
    with pytest.raises(WorkerError, match="prediction failed in a worker"):
        pool.predict_paths([dataset.image_paths[0], bad, dataset.image_paths[1]], batch_size=1)
    full, in_roi, conf = pool.predict_paths(dataset.image_paths[:2])
    assert np.isfinite(in_roi).all() and full.shape == (2, 19, 2) and conf.shape == (2, 19)


def test_a_model_that_cannot_load_is_reported_and_nothing_keeps_running(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.keras").write_bytes(b"truncated")
    import multiprocessing

    before = {c.pid for c in multiprocessing.active_children()}
    with pytest.raises(WorkerError, match="could not load"):
        WorkerPool(broken, workers=2)
    assert {c.pid for c in multiprocessing.active_children()} <= before  # nothing of that pool left running
    with pytest.raises(ValueError, match="workers must be"):
        WorkerPool(tiny_model_dir, workers=0)


def test_the_number_of_workers_is_a_lab_limit(tiny_model_dir, monkeypatch):
    from cvs_core.limits import LimitError

    monkeypatch.setenv("CVS_LIMIT_MAX_EVAL_WORKERS", "1")
    with pytest.raises(LimitError, match="CVS_LIMIT_MAX_EVAL_WORKERS"):
        WorkerPool(tiny_model_dir, workers=2, start=False)


def test_close_stops_the_processes_and_a_dead_worker_is_reported(tiny_model_dir, dataset):
    import multiprocessing
    import os
    import signal

    lazy = WorkerPool(tiny_model_dir, workers=1, start=False)
    assert lazy._procs == []  # nothing started until the first prediction
    lazy.close()
    p = WorkerPool(tiny_model_dir, workers=1)
    pid = p._procs[0].pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerError, match="died"):
        p.predict_paths(dataset.image_paths[:2])
    # the failed call closed the pool: no stale reply can reach a later call, nothing is left running
    with pytest.raises(WorkerError, match="closed"):
        p.predict_paths(dataset.image_paths[:2])
    assert not [c for c in multiprocessing.active_children() if c.name == "cvs-eval-worker" and c.pid == pid]
    p.close()  # idempotent


def test_cli_workers_gives_the_same_report(tiny_model_dir, dataset, tmp_path, monkeypatch, capsys):
    from cvs_core.cli import main

    monkeypatch.setenv("CVS_HOME", str(tmp_path / "home"))
    csv = dataset.image_paths[0].parents[1] / "labels.csv"
    common = ["evaluate", "--model", str(tiny_model_dir), "--csv", str(csv), "--images",
              str(dataset.image_paths[0].parent), "--no-cache"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    assert main(common + ["--workers", "2", "--out", str(tmp_path / "two")]) == 0
    a = json.loads((tmp_path / "one" / "summary.json").read_text())["unet_heatmap"]
    b = json.loads((tmp_path / "two" / "summary.json").read_text())["unet_heatmap"]
    assert a["mre_px"] == pytest.approx(b["mre_px"], abs=1e-3) and a["n_images"] == b["n_images"] == N
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(common + ["--workers", "0", "--out", str(tmp_path / "zero")])
    assert "--workers must be between 1 and" in capsys.readouterr().err


def test_a_packed_model_is_unpacked_once_before_the_workers_start(tiny_model_dir, dataset, tmp_path):
    """Packed int8 weights (the shipped InceptionResNetV2) are unpacked by the pool itself, so two
    workers never rebuild the same model.keras at the same time."""
    from cvs_core import registry
    from cvs_core.packing import pack_weights

    folder = tmp_path / "packed"
    manifest = registry.read_manifest(tiny_model_dir)
    manifest["packed_weights"] = pack_weights(registry.load_keras_model(tiny_model_dir), folder)
    manifest.pop("weights_sha256")
    registry.write_manifest(folder, manifest)
    assert not (folder / "model.keras").exists()
    with WorkerPool(folder, workers=1) as p:
        assert (folder / "model.keras").is_file()
        _, in_roi, _ = p.predict_paths(dataset.image_paths[:2])
    assert np.isfinite(in_roi).all()

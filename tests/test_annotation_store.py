"""cvs_core.annotation_store: datasets of corrected landmarks (atomic saves, resume, status, undo,
export, least-confident ordering, bad input), on the bundled sample ROI images."""
from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvs_core import annotation_store as astore
from cvs_core.annotation_store import AnnotationStore, AnnotationStoreError
from cvs_core.annotations import read_annotations

ROOT = Path(__file__).resolve().parents[1]
ROI = ROOT / "data" / "samples" / "roi"
NAMES = ["LC (1).jpg", "LC (11).jpg", "LC (3).jpg"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CVS_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def store(home) -> AnnotationStore:
    s = AnnotationStore.create("lab one")
    for n in NAMES:
        s.add_image(n, (ROI / n).read_bytes())
    return s


def shape(offset: float = 0.0) -> np.ndarray:
    from cvs_core.landmarks import MEAN_SHAPE_ROI

    return np.asarray(MEAN_SHAPE_ROI, dtype=np.float64) + offset


def test_create_lists_images_in_natural_order_and_counts(store):
    assert store.image_names() == ["LC (1).jpg", "LC (3).jpg", "LC (11).jpg"]
    assert astore.list_datasets() == ["lab one"]
    assert store.counts() == {"total": 3, "predicted": 0, "corrected": 0, "skipped": 0, "unlabelled": 3}
    assert store.record("LC (3).jpg").status is None


def test_statuses_who_when_and_reopen(store):
    store.set_prediction("LC (1).jpg", shape(), np.full(19, 0.8), model="m1")
    store.set_prediction("LC (3).jpg", shape(1), np.full(19, 0.4), model="m1")
    rec = store.move_landmark("LC (1).jpg", 9, 150.25, 431.5, who="Ana")
    assert rec.status == "corrected" and rec.who == "Ana" and rec.when
    store.skip("LC (11).jpg", who="Ben")
    # a prediction never overwrites a correction
    assert store.set_prediction("LC (1).jpg", shape(5), np.full(19, 0.9)) is False
    again = AnnotationStore.open("lab one")
    assert again.counts() == {"total": 3, "predicted": 1, "corrected": 1, "skipped": 1, "unlabelled": 0}
    r1 = again.record("LC (1).jpg")
    assert r1.landmarks[9].tolist() == [150.25, 431.5] and r1.who == "Ana" and r1.model == "m1"
    assert np.allclose(np.delete(r1.landmarks, 9, axis=0), np.delete(shape(), 9, axis=0))
    assert again.record("LC (11).jpg").status == "skipped" and again.record("LC (11).jpg").who == "Ben"
    assert again.record("LC (3).jpg").confidence == pytest.approx(0.4)


def test_undo_is_per_image_and_survives_a_restart(store):
    store.set_prediction("LC (1).jpg", shape(), np.full(19, 0.8))
    store.set_prediction("LC (3).jpg", shape(), np.full(19, 0.8))
    store.move_landmark("LC (1).jpg", 0, 10, 20)
    store.move_landmark("LC (1).jpg", 0, 11, 21)
    store.move_landmark("LC (3).jpg", 3, 1, 2)
    reopened = AnnotationStore.open("lab one")
    assert reopened.undo_depth("LC (1).jpg") == 2
    assert reopened.undo("LC (1).jpg")
    assert reopened.landmarks("LC (1).jpg")[0].tolist() == [10, 20]
    assert reopened.undo("LC (1).jpg")
    rec = reopened.record("LC (1).jpg")
    assert rec.status == "predicted" and np.allclose(rec.landmarks, shape())
    assert reopened.undo("LC (1).jpg") is False
    assert reopened.landmarks("LC (3).jpg")[3].tolist() == [1, 2]  # the other image is untouched
    # undo of a skip on an image without landmarks removes the row again
    reopened.skip("LC (11).jpg")
    assert reopened.undo("LC (11).jpg") and reopened.record("LC (11).jpg").status is None


def test_resume_position(store):
    assert store.position is None
    store.set_position("LC (3).jpg")
    assert AnnotationStore.open("lab one").position == "LC (3).jpg"
    store.set_prediction("LC (11).jpg", shape(), 0.5)
    store.move_landmark("LC (11).jpg", 1, 5, 5)  # a correction moves the resume point too
    assert AnnotationStore.open("lab one").position == "LC (11).jpg"
    with pytest.raises(AnnotationStoreError, match="no image"):
        store.set_position("missing.png")


def test_next_image_least_confident_first(store):
    assert store.next_image() == "LC (1).jpg"  # nothing predicted: images without landmarks first
    store.set_prediction("LC (1).jpg", shape(), np.full(19, 0.9))
    store.set_prediction("LC (3).jpg", shape(), np.r_[np.full(18, 0.9), [0.1]])  # mean 0.8556
    store.set_prediction("LC (11).jpg", shape(), np.full(19, 0.3))
    assert store.next_image() == "LC (11).jpg"
    assert store.next_image(exclude="LC (11).jpg") == "LC (3).jpg"
    store.accept("LC (11).jpg")
    store.skip("LC (3).jpg")
    assert store.next_image() == "LC (1).jpg"
    assert store.next_image(exclude="LC (1).jpg") == "LC (1).jpg"  # only one left
    store.accept("LC (1).jpg")
    assert store.next_image() is None


def test_saves_are_atomic(store, monkeypatch):
    store.set_prediction("LC (1).jpg", shape(), 0.5)
    labels = store.folder / "labels.csv"
    before = labels.read_bytes()

    def crash(src, dst):
        raise OSError("disk full (simulated)")

    with monkeypatch.context() as m:
        m.setattr(astore.os, "replace", crash)
        with pytest.raises(OSError, match="simulated"):
            store.move_landmark("LC (1).jpg", 2, 1, 1)
    assert labels.read_bytes() == before  # the old file is intact, never half-written
    assert store.record("LC (1).jpg").status == "predicted"  # and the store went back to what is on disk
    assert AnnotationStore.open("lab one").record("LC (1).jpg").status == "predicted"
    tmp_left = [p.name for p in store.folder.iterdir() if p.name.endswith(".tmp")]
    assert len(tmp_left) == 1  # the temporary file of the failed write, not the real one


def test_export_csv_and_zip_round_trip(store):
    store.set_prediction("LC (1).jpg", shape(), np.full(19, 0.7), model="m")
    store.move_landmark("LC (1).jpg", 9, 151.5, 430.25, who="Ana")
    store.set_prediction("LC (3).jpg", shape(2), np.full(19, 0.6), model="m")
    csv = store.export_csv()
    aset = read_annotations(io.BytesIO(csv), check_bounds=False)
    assert aset.names == ["LC (1).jpg", "LC (3).jpg"]
    assert aset.landmarks[0, 9].tolist() == [151.5, 430.25]
    assert list(aset.extra["status"]) == ["corrected", "predicted"]
    only = read_annotations(io.BytesIO(store.export_csv(("corrected",))), check_bounds=False)
    assert only.names == ["LC (1).jpg"]
    blob = store.export_zip()
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert sorted(zf.namelist()) == sorted(["lab one/labels.csv"] + [f"lab one/images/{n}" for n in NAMES])
    from cvs_core.runs import extract_dataset_zip

    csv_path, image_dir = extract_dataset_zip(blob, store.folder.parent.parent / "x")
    assert (image_dir / "LC (3).jpg").read_bytes() == (ROI / "LC (3).jpg").read_bytes()
    assert read_annotations(csv_path, image_dir=image_dir).names == ["LC (1).jpg", "LC (3).jpg"]


def test_bad_labels_csv_is_reported_clearly(store):
    (store.folder / "labels.csv").write_text("image_name,1_x\nLC (1).jpg,3\n")
    with pytest.raises(AnnotationStoreError, match="labels file .* is broken") as err:
        AnnotationStore.open("lab one")
    assert "1_y" in str(err.value)
    store.set_prediction("LC (3).jpg", shape(), 0.5)  # (the in-memory store still works and rewrites it)
    frame = pd.read_csv(store.folder / "labels.csv")
    frame.loc[0, "status"] = "maybe"
    frame.to_csv(store.folder / "labels.csv", index=False)
    with pytest.raises(AnnotationStoreError, match="status 'maybe' is not one of"):
        AnnotationStore.open("lab one")
    (store.folder / "labels.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(AnnotationStoreError):
        AnnotationStore.open("lab one")


def test_bad_requests(store, home):
    with pytest.raises(AnnotationStoreError, match="invalid dataset name"):
        AnnotationStore.create("../up")
    with pytest.raises(AnnotationStoreError, match="exists already"):
        AnnotationStore.create("lab one")
    with pytest.raises(AnnotationStoreError, match="no landmarks yet"):
        store.move_landmark("LC (1).jpg", 0, 1, 1)
    store.set_prediction("LC (1).jpg", shape(), 0.5)
    with pytest.raises(AnnotationStoreError, match="outside 0..18"):
        store.move_landmark("LC (1).jpg", 19, 1, 1)
    with pytest.raises(AnnotationStoreError, match="finite"):
        store.move_landmark("LC (1).jpg", 1, float("nan"), 1)
    with pytest.raises(AnnotationStoreError, match="shaped"):
        store.set_prediction("LC (3).jpg", np.zeros((18, 2)), 0.5)
    with pytest.raises(AnnotationStoreError, match="not a supported image type"):
        store.add_image("notes.txt", b"hello")
    with pytest.raises(AnnotationStoreError, match="already in dataset"):
        store.add_image("LC (1).jpg", (ROI / "LC (1).jpg").read_bytes())
    with pytest.raises(AnnotationStoreError):
        store.add_image("broken.png", b"\x89PNG\r\n\x1a\nnot really")


def test_add_zip_is_safe_and_flattens(store):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("sub/dir/LC (2).jpg", (ROI / "LC (2).jpg").read_bytes())
        zf.writestr("readme.txt", "hi")
    added, notes = store.add_zip(buf.getvalue())
    assert added == ["LC (2).jpg"] and any("readme.txt" in n for n in notes)
    assert "LC (2).jpg" in store.image_names()
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.jpg", (ROI / "LC (2).jpg").read_bytes())
    with pytest.raises(AnnotationStoreError, match="outside"):
        store.add_zip(evil.getvalue())
    assert not (store.folder.parent / "escape.jpg").exists()
    with pytest.raises(AnnotationStoreError, match="not a valid zip"):
        store.add_zip(b"PK nonsense")


class _FakePrediction:
    def __init__(self, lm, conf):
        self.landmarks, self.confidence = lm, conf


class _FakePredictor:
    """Answers a fixed shape with a confidence per call order (stands in for a loaded model)."""
    name = "fake"

    def __init__(self):
        self.calls = []

    def predict_batch(self, images, roi=None):
        self.calls.append((len(images), roi, [im.shape for im in images]))
        return [_FakePrediction(shape(i), np.full(19, 0.2 + 0.3 * i)) for i in range(len(images))]


def test_predict_missing_stores_predictions_once(store):
    fake = _FakePredictor()
    seen = []
    assert astore.predict_missing(store, fake, batch=2, progress=lambda d, t: seen.append((d, t))) == 3
    assert [c[0] for c in fake.calls] == [2, 1] and fake.calls[0][1] is None
    assert fake.calls[0][2][0] == (600, 250)  # greyscale (H, W) of the ROI image
    assert seen == [(2, 3), (3, 3)]
    assert store.counts()["predicted"] == 3 and store.record("LC (1).jpg").model == "fake"
    assert astore.predict_missing(store, fake) == 0  # nothing left to predict


def test_finetune_config_reuses_the_base_models_settings(store):
    from cvs_core.registry import read_manifest, resolve_model

    if not (ROOT / "models" / "unet_heatmap" / "manifest.json").is_file():
        pytest.skip("needs the shipped unet_heatmap manifest")
    with pytest.raises(AnnotationStoreError, match="no corrected images"):
        astore.finetune_config(store)
    store.set_prediction("LC (1).jpg", shape(), 0.5)
    store.accept("LC (1).jpg")
    cfg = astore.finetune_config(store, astore.FinetuneSettings(epochs=2, name="mine"))
    base = read_manifest(resolve_model("unet_heatmap"))
    assert cfg.model == "unet_heatmap" and cfg.init_from == str(resolve_model("unet_heatmap"))
    assert cfg.preprocess == base["preprocess"] and cfg.builder_kwargs == base["builder_kwargs"]
    assert cfg.epochs == 2 and cfg.name == "mine" and cfg.images == str(store.images_dir)
    snap = read_annotations(cfg.csv, image_dir=cfg.images)
    assert snap.names == ["LC (1).jpg"] and list(snap.extra["status"]) == ["corrected"]
    assert cfg.preprocess["roi"] == "none"
    # a dataset of full cephalograms trains with the study crop, as predictions on it were made
    full = AnnotationStore.create("full", roi="seed")
    full.add_image("LC (1).jpg", (ROOT / "data" / "samples" / "original" / "LC (1).jpg").read_bytes())
    full.set_prediction("LC (1).jpg", shape() * 2 + (0, 800), 0.5)
    full.accept("LC (1).jpg")
    cfg = astore.finetune_config(full)
    assert cfg.preprocess["roi"] == "seed" and cfg.preprocess["roi_scale"] == 0.5


@pytest.mark.slow
def test_finetune_run_on_two_corrected_images_is_registered(store):
    """The library call behind the page's button: 2 corrected images, tiny settings, from the
    shipped U-Net; the finished model must be listed by the registry (hence by Compare)."""
    from cvs_core import runs
    from cvs_core.registry import list_models

    if not (ROOT / "models" / "unet_heatmap" / "model.keras").is_file():
        pytest.skip("needs the shipped unet_heatmap weights")
    truth = read_annotations(ROOT / "data" / "samples" / "train_data.csv", check_bounds=False)
    test = read_annotations(ROOT / "data" / "samples" / "test_data.csv", check_bounds=False)
    for aset in (truth, test):
        for n, lm in zip(aset.names, aset.landmarks):
            if n in ("LC (1).jpg", "LC (11).jpg"):
                store.set_landmarks(n, lm, who="test")
    assert store.counts()["corrected"] == 2
    run_id = astore.start_finetune(store, astore.FinetuneSettings(epochs=1, repeat=1, batch_size=2,
                                                                   name="lab_ft"))
    assert store.finetune_runs()[-1]["run"] == run_id
    deadline = time.time() + 420
    while time.time() < deadline and runs.run_info(run_id)["status"] in runs.ACTIVE:
        time.sleep(1.0)
    info = runs.run_info(run_id)
    assert info["status"] == "succeeded", runs.log_tail(run_id)
    info = astore.finish_finetune(run_id, "lab_ft", base="unet_heatmap")
    assert info["registered_as"] == "lab_ft"
    models = {m.name: m for m in list_models()}
    assert "lab_ft" in models and not models["lab_ft"].shipped
    manifest = models["lab_ft"].manifest
    assert manifest["training"]["config"]["init_from"].endswith("unet_heatmap")
    assert manifest["codec"]["shape_prior"] is True  # decode option carried over from the base
    assert astore.finish_finetune(run_id, "lab_ft")["registered_as"] == "lab_ft"  # idempotent
    json.dumps(info)
    assert os.path.isdir(info["model_dir"])

"""Dataset evaluation: streaming predictions, cache, scores, reports, ``cvs evaluate``."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cvs_core import evaluate as ev  # noqa: E402
from cvs_core.landmarks import N_LANDMARKS  # noqa: E402
from cvs_core.predict import Predictor  # noqa: E402

N = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return ev.phantom_dataset(N, seed=3, cache_dir=tmp_path_factory.mktemp("phantoms"))


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Predictor(tiny_model_dir)


class CountingPredictor:
    """Wraps a Predictor and counts the model calls (predict_batch)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict_batch(self, images, roi=None):
        self.calls += 1
        return self.inner.predict_batch(images, roi=roi)


def test_phantom_dataset_is_written_once(dataset, tmp_path):
    assert len(dataset) == N
    assert dataset.landmarks.shape == (N, N_LANDMARKS, 2)
    assert list(dataset.stages) == [1, 2, 3, 4, 5, 6]
    assert all(p.is_file() for p in dataset.image_paths)
    mtimes = [p.stat().st_mtime_ns for p in dataset.image_paths]
    again = ev.phantom_dataset(N, seed=3, cache_dir=dataset.image_paths[0].parents[2])
    assert [p.stat().st_mtime_ns for p in again.image_paths] == mtimes
    assert again.fingerprint() == dataset.fingerprint()


def test_samples_dataset():
    ds = ev.samples_dataset()
    assert ds.names == ["LC (1).jpg", "LC (11).jpg"]
    assert ds.landmarks.shape == (2, N_LANDMARKS, 2)
    assert all(p.is_file() for p in ds.image_paths)


def test_load_dataset_skips_missing_and_warns(samples_dir):
    ds = ev.load_dataset(samples_dir / "train_data.csv", samples_dir / "roi")
    assert ds.names == ["LC (1).jpg", "LC (11).jpg"]
    assert ds.stages is None
    assert any("not found" in w for w in ds.warnings)  # rows without images are skipped
    assert any("LC (11)" in w and "outside" in w for w in ds.warnings)  # C4 corners below the ROI
    with pytest.raises(ValueError, match="none of the images"):
        ev.load_dataset(samples_dir / "test_data.csv", samples_dir / "roi")


def test_predict_dataset_and_cache(predictor, dataset, tmp_path):
    counting = CountingPredictor(predictor)
    seen = []
    pset = ev.predict_dataset(counting, dataset, batch_size=4, cache_dir=tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert counting.calls == 2  # 6 images in batches of 4
    assert seen[0] == (0, N) and seen[-1] == (N, N)
    assert pset.pred.shape == (N, N_LANDMARKS, 2) and pset.confidence.shape == (N, N_LANDMARKS)
    assert not pset.cached and pset.ms_per_image > 0
    assert np.array_equal(pset.true, dataset.landmarks)
    # same as per-image prediction on the ROI frame
    first = predictor.predict(ev.read_grey(dataset.image_paths[0]))
    np.testing.assert_allclose(pset.pred[0], first.landmarks_roi, atol=1e-3)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    counting.calls = 0
    again = ev.predict_dataset(counting, dataset, batch_size=2, cache_dir=tmp_path)
    assert counting.calls == 0 and again.cached
    np.testing.assert_array_equal(again.pred, pset.pred)
    # another ROI setting is another cache entry
    ev.predict_dataset(counting, dataset, roi="none", cache_dir=tmp_path)
    assert counting.calls == 1
    # no cache: always runs
    counting.calls = 0
    ev.predict_dataset(counting, dataset, cache_dir=tmp_path, use_cache=False)
    assert counting.calls == 1


def test_cache_key_changes_with_images(predictor, dataset):
    key = ev.cache_key(predictor, dataset)
    assert key == ev.cache_key(predictor, dataset)
    assert key != ev.cache_key(predictor, dataset, roi="seed")
    other = ev.Dataset(names=dataset.names[:-1], image_paths=dataset.image_paths[:-1],
                       landmarks=dataset.landmarks[:-1], stages=None, spacing_mm=0.25, source="x")
    assert key != ev.cache_key(predictor, other)


def test_cache_key_changes_with_codec_tuning(predictor, dataset, monkeypatch):
    import dataclasses

    key = ev.cache_key(predictor, dataset)
    monkeypatch.setattr(predictor, "codec", dataclasses.replace(predictor.codec, prior_gate=2.0))
    assert ev.cache_key(predictor, dataset) != key


def test_score_keys_and_tables(dataset):
    rng = np.random.default_rng(0)
    pred = dataset.landmarks + rng.normal(0, 2.0, dataset.landmarks.shape)
    pred[0, 5] = np.nan  # one missing prediction
    pset = ev.PredictionSet("m", dataset.names, pred, np.ones((N, N_LANDMARKS)), dataset.landmarks, 5.0,
                            stages=dataset.stages)
    res = ev.score(pset, 0.25, 2.0)
    assert isinstance(res, ev.Score) and res.prediction_set is pset
    s = res.summary
    assert res.to_dict()["summary"] is s and res["per_image"] is res.per_image  # the old dict access
    for key in ("n_images", "mre_px", "mre_mm", "sdr", "pck", "pck_threshold_mm", "legacy", "stage_agreement",
                "ms_per_image", "spacing_mm", "n_missing"):
        assert key in s
    assert s["n_images"] == N and s["n_missing"] == 1
    assert set(s["sdr"]) == {"2.0", "2.5", "3.0", "4.0"}
    assert 0 < s["pck"] < 1
    assert "LEGACY" in s["legacy"]["note"]
    assert 0 < s["legacy"]["inception_pck"] <= 1 and s["legacy"]["unet_pck"] > 0.5
    sa = s["stage_agreement"]
    assert sa["true_landmarks_vs_label"] is not None and {"pred_vs_label", "pred_vs_true_landmarks"} <= set(sa)
    json.dumps(s)  # JSON-ready
    pi, pl = res.per_image, res.per_landmark
    assert len(pi) == N and {"model", "image_name", "mre_px", "mre_mm", "max_err_px", "stage_pred", "stage_true"} <= set(pi)
    assert np.isinf(pi["max_err_px"].iloc[0]) and pi["n_missing"].iloc[0] == 1
    assert len(pl) == N_LANDMARKS and {"landmark", "name", "mre_px", "sd_px", "pck"} <= set(pl)
    assert pl["n_missing"].sum() == 1
    # perfect predictions
    perfect = ev.score(ev.PredictionSet("p", dataset.names, dataset.landmarks.copy(), np.ones((N, 19)),
                                        dataset.landmarks, 1.0, stages=dataset.stages)).summary
    assert perfect["mre_px"] == 0 and perfect["pck"] == 1 and perfect["legacy"]["unet_pck"] == pytest.approx(1.0)
    assert perfect["stage_agreement"]["pred_vs_true_landmarks"] == 1.0


def test_score_without_labels_raises(dataset):
    pset = ev.PredictionSet("m", dataset.names, dataset.landmarks, np.ones((N, 19)), None, 1.0)
    with pytest.raises(ValueError, match="no labels"):
        ev.score(pset)


def test_cli_evaluate(tiny_model_dir, dataset, tmp_path, monkeypatch, capsys):
    from cvs_core.cli import main

    monkeypatch.setenv("CVS_HOME", str(tmp_path / "home"))
    out = tmp_path / "report"
    csv = dataset.image_paths[0].parents[1] / "labels.csv"
    images = dataset.image_paths[0].parent
    argv = ["evaluate", "--model", str(tiny_model_dir), "--model", str(tiny_model_dir), "--csv", str(csv),
            "--images", str(images), "--threshold", "2.5", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "unet_heatmap" in captured.out and f"{N}/{N}" in captured.err
    for name in ("per_image.csv", "per_landmark.csv", "summary.json", "pck_curve.png", "pck_curve.html",
                 "landmark_errors.png", "landmark_errors.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"unet_heatmap", "unet_heatmap_2"}  # same model twice: unique names
    s = summary["unet_heatmap"]
    assert s["n_images"] == N and s["pck_threshold_mm"] == 2.5 and s["spacing_mm"] == 0.25
    assert "note" in s["legacy"] and "pred_vs_label" in s["stage_agreement"]
    assert summary["unet_heatmap_2"]["cached"]  # second run of the same model hits the cache
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 2 * N
    assert len(pd.read_csv(out / "per_landmark.csv")) == 2 * N_LANDMARKS
    html = (out / "pck_curve.html").read_text()
    # self-contained: plotly.js inline, no <script src=…> from a CDN
    assert "<script src=" not in html and len(html) > 1_000_000
    assert list((tmp_path / "home" / "cache" / "predictions").glob("*.npz"))
    import cv2
    png = cv2.imread(str(out / "pck_curve.png"))
    assert png is not None and png.shape[0] > 300


def test_cli_evaluate_bad_model(dataset, tmp_path, monkeypatch, capsys):
    from cvs_core.cli import main

    monkeypatch.setenv("CVS_HOME", str(tmp_path / "home"))
    csv = dataset.image_paths[0].parents[1] / "labels.csv"
    rc = main(["evaluate", "--model", str(tmp_path / "nope"), "--csv", str(csv), "--images",
               str(dataset.image_paths[0].parent), "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "no model named" in capsys.readouterr().err

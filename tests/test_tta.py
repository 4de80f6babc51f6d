"""Test-time shifts (cvs_core.tta): image shifts, the shift-back median, and the Predictor opt-in."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cvs_core.tta import TestTimeShifts, combine, shift_image, shifted_batch  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(dx=st.integers(-6, 6), dy=st.integers(-6, 6), x=st.integers(7, 32), y=st.integers(7, 40))
def test_shift_moves_a_pixel_and_repeats_the_edge(dx, dy, x, y):
    image = np.zeros((48, 40, 3), np.float32)
    image[:, 0] = 0.25  # left edge column: what a right shift repeats into the uncovered strip
    image[y, x] = 1.0
    out = shift_image(image, dx, dy)
    assert out.shape == image.shape
    assert out[y + dy, x + dx, 0] == 1.0 and (out == 1.0).sum() == 3  # the pixel moved, once per channel
    if dx > 0:
        assert np.all(out[:, :dx] == 0.25)
    assert np.array_equal(shift_image(image, 0, 0), image)


def test_shift_larger_than_the_input_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        shift_image(np.zeros((10, 8, 1)), 8, 0)


@settings(max_examples=30, deadline=None)
@given(step=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_combine_undoes_the_shifts(step, seed):
    """Round trip: landmarks that move with each shifted copy come back to where they were."""
    shifts = TestTimeShifts(step)
    truth = np.random.default_rng(seed).uniform(0, 100, size=(3, 19, 2))
    copies = np.stack([t + off for t in truth for off in shifts.offsets])  # (3·5, 19, 2)
    np.testing.assert_allclose(combine(copies, shifts), truth, atol=1e-9)


def test_combine_is_a_median_and_skips_missing_copies():
    shifts = TestTimeShifts(2)
    pts = np.zeros((5, 19, 2)) + shifts.offsets[:, None, :]  # every copy says (0, 0) once shifted back
    pts[3] += 500.0  # one copy far off: the median ignores it
    pts[1, 4] = np.nan  # one copy lost landmark 5: the others decide
    pts[:, 7] = np.nan  # lost in every copy: stays missing
    out = combine(pts, shifts)[0]
    assert np.isnan(out[7]).all()
    np.testing.assert_allclose(np.delete(out, 7, axis=0), 0.0)


def test_off_means_the_plain_batch():
    shifts = TestTimeShifts()
    images = np.random.default_rng(0).random((2, 8, 6, 1)).astype(np.float32)
    assert shifts.offsets.shape == (1, 2)
    assert shifted_batch(images, shifts) is images
    pts = np.random.default_rng(1).random((2, 19, 2))
    np.testing.assert_array_equal(combine(pts, shifts), pts)


@pytest.mark.parametrize("bad", [-1, 65, 2.5, "3"])
def test_bad_step_is_refused(bad):
    with pytest.raises(ValueError, match="tta_step_px"):
        TestTimeShifts(bad)


@pytest.fixture(scope="module")
def tta_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny heatmap model with ``inference.tta_step_px = 3`` in its manifest."""
    folder = tmp_path_factory.mktemp("tta") / "tiny_tta"
    shutil.copytree(tiny_model_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inference"] = {"tta_step_px": 3}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_predictor_applies_the_manifest_shifts(tiny_model_dir, tta_model_dir):
    """A model whose manifest opts in runs 5 copies per image and returns the shifted-back median;
    ``tta=False`` gives the plain single call."""
    from cvs_core.predict import Predictor
    from cvs_core.synth import render_phantom

    plain, shifted = Predictor(tiny_model_dir), Predictor(tta_model_dir)
    assert shifted.tta == TestTimeShifts(3) and plain.tta == TestTimeShifts(0)

    images = [render_phantom(7 + i).image for i in range(2)]
    seen = []
    run = shifted._run
    shifted._run = lambda batch, copies=1: seen.append((len(batch), copies)) or run(batch, copies)
    got = shifted.predict_batch(images)
    assert seen == [(10, 5)]  # 2 images × 5 copies, one batch

    # the same thing by hand: each copy through the plain model, decoded, shifted back, median
    x = np.stack([p.preprocessed.image for p in plain.predict_batch(images)])
    by_hand = []
    for img in x:
        copies = [plain.codec.decode(plain._run(shift_image(img, dx, dy)[None])[0])[0] - (dx, dy)
                  for dx, dy in TestTimeShifts(3).offsets]
        by_hand.append(np.median(copies, axis=0))
    for g, h, pre in zip(got, by_hand, [p.preprocessed for p in got]):
        np.testing.assert_allclose(g.landmarks, pre.to_original(h), atol=1e-3)
        assert g.raw.shape == plain.predict(images[0]).raw.shape

    off = shifted.predict_batch(images, tta=False)
    for o, p in zip(off, plain.predict_batch(images)):
        np.testing.assert_allclose(o.landmarks, p.landmarks, atol=1e-4)


def test_chunks_keep_the_copies_of_an_image_together(tta_model_dir):
    """With ``max_batch=2`` (the CPU default) the 5 copies of an image still go through one model call
    (one call of 5 is faster than 2 + 2 + 1 for the InceptionResNetV2), with the same landmarks."""
    from cvs_core.predict import Predictor
    from cvs_core.synth import render_phantom

    whole, chunked = Predictor(tta_model_dir, max_batch=0), Predictor(tta_model_dir, max_batch=2)
    calls = []
    inner = chunked._call
    chunked._call = lambda x: calls.append(len(x)) or inner(x)
    images = [render_phantom(30 + i).image for i in range(3)]
    got = chunked.predict_batch(images)
    assert calls == [5, 5, 5]
    for g, w in zip(got, whole.predict_batch(images)):
        np.testing.assert_allclose(g.landmarks, w.landmarks, atol=1e-3)
    calls.clear()
    chunked.predict_batch(images, tta=False)
    assert calls == [2, 1]  # without shifts: chunks of max_batch images as before


def test_models_page_line_describes_the_shifts():
    from cvs_core.model_view import describe_inference

    assert describe_inference({}) is None and describe_inference({"inference": {"tta_step_px": 0}}) is None
    line = describe_inference({"inference": {"tta_step_px": 5}})
    assert "5 copies" in line and "±5 model px" in line
    assert "not understood" in describe_inference({"inference": {"tta_step_px": -3}})


def test_shipped_inception_opts_in_and_the_unet_does_not(repo_root):
    """The shipped manifests say which model runs with shifts (docs/benchmarks.md: they help the
    regression model on held-out phantoms and real images, and cost the heatmap U-Net accuracy)."""
    def manifest(name):
        return json.loads((repo_root / "models" / name / "manifest.json").read_text())

    assert TestTimeShifts.from_manifest(manifest("inception_resnet_v2")).step_px > 0
    assert TestTimeShifts.from_manifest(manifest("unet_heatmap")).step_px == 0


def test_cached_evaluations_keep_shifted_and_plain_runs_apart(tiny_model_dir, tta_model_dir, tmp_path):
    from cvs_core import evaluate
    from cvs_core.predict import Predictor

    dataset = evaluate.phantom_dataset(3, seed=5)
    shifted, plain = Predictor(tta_model_dir), Predictor(tiny_model_dir)
    assert evaluate.cache_key(shifted, dataset) != evaluate.cache_key(shifted, dataset, tta=False)
    assert evaluate.cache_key(plain, dataset) == evaluate.cache_key(plain, dataset, tta=False)
    on = evaluate.predict_dataset(shifted, dataset, cache_dir=tmp_path)
    off = evaluate.predict_dataset(shifted, dataset, cache_dir=tmp_path, tta=False)
    assert not off.cached and not np.allclose(on.pred, off.pred)  # not served from the other's cache
    np.testing.assert_allclose(off.pred, evaluate.predict_dataset(plain, dataset, use_cache=False).pred, atol=1e-4)


def test_cli_no_tta_flag(tta_model_dir, tiny_model_dir, tmp_path, capsys):
    import cv2

    from cvs_core.cli import main
    from cvs_core.synth import render_phantom

    image = tmp_path / "phantom.png"
    cv2.imwrite(str(image), render_phantom(11).image)

    def landmarks(*args):
        assert main(["predict", *args, str(image), "--json"]) == 0
        return np.array(json.loads(capsys.readouterr().out)["landmarks"], float)

    plain = landmarks("--model", str(tiny_model_dir))
    np.testing.assert_allclose(landmarks("--model", str(tta_model_dir), "--no-tta"), plain, atol=1e-3)
    assert not np.allclose(landmarks("--model", str(tta_model_dir)), plain, atol=1e-3)

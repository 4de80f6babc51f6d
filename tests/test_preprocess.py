"""Preprocessing: the study ROI preset, exact landmark round trips, config validation."""
import json

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvs_core.preprocess import (PreprocessConfig, apply_affine, inception_seed_config, invert_affine,
                                 preprocess, resize_affine, unet_seed_config)


@pytest.fixture(scope="module")
def original(samples_dir):
    return cv2.imread(str(samples_dir / "original" / "LC (1).jpg"), cv2.IMREAD_GRAYSCALE)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 11])
def test_seed_roi_reproduces_published_roi(samples_dir, n):
    original = cv2.imread(str(samples_dir / "original" / f"LC ({n}).jpg"), cv2.IMREAD_GRAYSCALE)
    roi = cv2.imread(str(samples_dir / "roi" / f"LC ({n}).jpg"), cv2.IMREAD_GRAYSCALE)
    ours = preprocess(original, PreprocessConfig(roi="seed", clahe=False, input_size=None)).roi_image
    assert ours.shape == roi.shape == (600, 250)
    r = np.corrcoef(ours.ravel().astype(float), roi.ravel().astype(float))[0, 1]
    assert r > 0.99


def test_public_landmarks_land_on_the_same_anatomy(samples_dir, original):
    """A patch around each public ROI landmark matches the patch at its mapped position in the
    original (after the study's ×0.5 scaling), i.e. the affine carries landmarks to the same anatomy."""
    labels = pd.read_csv(samples_dir / "train_data.csv")
    roi = cv2.imread(str(samples_dir / "roi" / "LC (1).jpg"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    pts_roi = labels[labels.image_name == "LC (1).jpg"].iloc[0, 1:39].to_numpy(float).reshape(19, 2)
    pre = preprocess(original, PreprocessConfig(roi="seed", clahe=False, input_size=None))
    pts_orig = apply_affine(invert_affine(pre.roi_affine), pts_roi)
    half = cv2.resize(original, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA).astype(np.float32)
    # The same point, taken back to the half-size original, must show the same pixels as the ROI.
    to_half = resize_affine(original.shape, half.shape)
    for (xr, yr), (xh, yh) in zip(pts_roi, apply_affine(to_half, pts_orig)):
        a = roi[int(yr) - 8:int(yr) + 8, int(xr) - 8:int(xr) + 8]
        b = half[int(round(yh)) - 8:int(round(yh)) + 8, int(round(xh)) - 8:int(round(xh)) + 8]
        assert a.shape == b.shape
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95
    np.testing.assert_allclose(pts_orig, 2 * pts_roi + [0.5, 800.5], atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(["stretch", "letterbox"]), resize_first=st.booleans(),
       size=st.sampled_from([(256, 256), (384, 160), (100, 300)]), roi=st.sampled_from(["seed", "none", "box"]),
       seed=st.integers(0, 10_000))
def test_landmark_round_trip_below_hundredth_pixel(original, mode, resize_first, size, roi, seed):
    roi_value = [40, 700, 640, 2000] if roi == "box" else roi
    cfg = PreprocessConfig(roi=roi_value, roi_scale=0.5 if roi != "none" else 1.0, input_size=size,
                           resize_mode=mode, resize_first=resize_first)
    pre = preprocess(original, cfg)
    pts = np.random.default_rng(seed).uniform([0, 0], [1800, 2100], (19, 2))
    back = pre.to_original(pre.to_model(pts))
    assert np.abs(back - pts).max() < 0.01
    assert pre.image.shape == (*size, 1)


def test_resize_affine_matches_opencv_sampling():
    """A bright pixel at (x, y) of a 2×-enlarged image has its peak where the affine says."""
    img = np.zeros((20, 30), np.float32)
    img[7, 11] = 1.0
    big = cv2.resize(img, (60, 40), interpolation=cv2.INTER_LINEAR)
    x, y = apply_affine(resize_affine((20, 30), (40, 60)), np.array([11.0, 7.0]))
    ys, xs = np.nonzero(big == big.max())
    assert abs(xs.mean() - x) < 1e-9 and abs(ys.mean() - y) < 1e-9


def test_study_presets():
    u = unet_seed_config("seed")
    assert (u.input_size, u.resize_first, u.clahe_clip, u.clahe_tile, u.scaling) == ((256, 256), True, 2.0, 8, "unit")
    i = inception_seed_config()
    assert (i.input_size, i.bilateral, i.channels, i.scaling) == ((600, 250), True, 3, "raw")


def test_inception_seed_pixels_are_raw_rgb(samples_dir):
    roi = cv2.imread(str(samples_dir / "roi" / "LC (1).jpg"), cv2.IMREAD_GRAYSCALE)
    x = preprocess(roi, inception_seed_config()).image
    assert x.shape == (600, 250, 3) and x.max() > 200 and np.array_equal(x[..., 0], x[..., 2])
    clahe = cv2.createCLAHE(2.0, (8, 8)).apply(roi)
    expected = cv2.bilateralFilter(clahe, 9, 75, 75)
    assert np.array_equal(x[..., 0], expected.astype(np.float32))


def test_config_json_round_trip():
    cfg = PreprocessConfig(roi=[1, 2, 300, 400], clahe_clip=3.5, input_size=(128, 64), resize_mode="letterbox")
    again = PreprocessConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg


@pytest.mark.parametrize("kwargs,message", [
    (dict(roi="middle"), "roi must be"),
    (dict(roi=[10, 10, 5, 20]), "x1 > x0"),
    (dict(input_size=(4, 4)), "at least 8×8"),
    (dict(resize_mode="crop"), "resize_mode"),
    (dict(channels=2), "channels"),
    (dict(clahe_clip=0), "clip limit"),
])
def test_bad_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PreprocessConfig(**kwargs)


def test_unknown_manifest_key_is_rejected():
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        PreprocessConfig.from_dict({"clahe": True, "sharpen": 2})


def test_roi_outside_image_and_tiny_image():
    with pytest.raises(ValueError, match="outside"):
        preprocess(np.zeros((100, 100), np.uint8), PreprocessConfig(roi=[200, 0, 300, 50]))
    with pytest.raises(ValueError, match="too small"):
        preprocess(np.zeros((4, 4), np.uint8), PreprocessConfig())


def test_sixteen_bit_input_is_range_scaled():
    img = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    x = preprocess(img, PreprocessConfig(clahe=False, input_size=None)).image
    assert x.min() == 0.0 and x.max() == 1.0

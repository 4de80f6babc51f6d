"""Codec round trips (docs/architecture.md#codecs: encode → decode well under 1 px) and identity assignment."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cvs_core.codecs import HeatmapCodec, MaskCodec, RegressionCodec, assign_to_slots, codec_from_dict
from cvs_core.landmarks import MEAN_SHAPE_ROI, N_LANDMARKS, ROI_SIZE
from cvs_core.preprocess import apply_affine, resize_affine

MEAN = np.asarray(MEAN_SHAPE_ROI, np.float64)
SETTINGS = settings(max_examples=40, deadline=None)


def _landmarks(h: int, w: int, margin: float):
    """Random (19, 2) landmark sets inside the [margin, size − 1 − margin] box of an h×w input."""
    unit = arrays(np.float64, (N_LANDMARKS, 2), elements=st.floats(0.0, 1.0, allow_nan=False))
    scale = np.array([w - 1 - 2 * margin, h - 1 - 2 * margin])
    return unit.map(lambda u: margin + u * scale)


@pytest.mark.parametrize("stride", [1, 2])
@SETTINGS
@given(data=st.data())
def test_heatmap_round_trip(stride, data):
    codec = HeatmapCodec(input_size=(96, 40), stride=stride, sigma=2.0)
    lm = data.draw(_landmarks(96, 40, margin=2.0 * stride))
    heat = codec.encode(lm)
    assert heat.shape == (96 // stride, 40 // stride, N_LANDMARKS)
    out, conf = codec.decode(heat)
    assert out.shape == (N_LANDMARKS, 2) and conf.shape == (N_LANDMARKS,)
    assert np.abs(out - lm).max() < 0.5
    assert np.all(conf > 0.5)


@pytest.mark.parametrize("normalize", [False, True])
@SETTINGS
@given(lm=_landmarks(600, 250, margin=0.0))
def test_regression_round_trip(normalize, lm):
    codec = RegressionCodec(input_size=(600, 250), normalize=normalize)
    target = codec.encode(lm)
    assert target.shape == (2 * N_LANDMARKS,) and target.dtype == np.float32
    if normalize:
        assert target.min() >= 0.0 and target.max() <= 1.0
    out, conf = codec.decode(target)
    assert np.abs(out - lm).max() < 0.5
    assert np.isnan(conf).all()


def _min_chebyshev(pts: np.ndarray) -> float:
    d = np.abs(pts[:, None] - pts[None]).max(-1)
    d[np.eye(len(pts), dtype=bool)] = np.inf
    return float(d.min())


@SETTINGS
@given(jitter=arrays(np.int64, (N_LANDMARKS, 2), elements=st.integers(-3, 3)),
       shift=st.tuples(st.integers(-60, 40), st.integers(-200, 60)))
def test_mask_round_trip_integer_roi(jitter, shift):
    """Integer ROI landmarks → 256×256 mask → landmarks, < 0.5 px in the codec's (model-input) frame
    and with identities recovered."""
    centre = MEAN.mean(0)
    roi = np.rint(centre + 1.3 * (MEAN - centre)) + jitter + np.asarray(shift)
    assume(_min_chebyshev(roi) >= 14)  # the 10-px squares must not touch
    # ... nor be cut by the ROI's edge (a clipped square's centroid moves inwards: e.g. y = 597 in a
    # 600-px ROI decodes 0.65 px off; hypothesis found it with shift (0, 60))
    h, w = ROI_SIZE
    assume(((roi >= 5) & (roi <= np.array([w - 5, h - 5]))).all())
    codec = MaskCodec(input_size=(256, 256))
    to_input = resize_affine(ROI_SIZE, codec.input_size)
    lm = apply_affine(to_input, roi)
    mask = codec.encode(lm)
    assert mask.shape == (256, 256, 1)
    out, conf = codec.decode(mask)
    assert np.isfinite(out).all()
    assert np.abs(out - lm).max() < 0.5
    assert np.all(conf > 0.5)


@settings(max_examples=60, deadline=None)
@given(angle=st.floats(-15, 15), scale=st.floats(0.8, 1.25), tx=st.floats(-50, 50), ty=st.floats(-80, 80),
       seed=st.integers(0, 2**31 - 1))
def test_mask_assignment_recovers_identity(angle, scale, tx, ty, seed):
    a = np.deg2rad(angle)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = MEAN.mean(0)
    moved = (MEAN - centre) @ rot.T + centre + [tx, ty]
    perm = np.random.default_rng(seed).permutation(N_LANDMARKS)
    slots, idx = assign_to_slots(MEAN, moved[perm])
    assert len(slots) == N_LANDMARKS
    # slot s got point idx, which is the original landmark perm[idx]
    assert np.array_equal(perm[idx], slots)


@pytest.mark.parametrize("missing", [0, 9, 18])
def test_mask_missing_blob_is_nan(missing):
    codec = MaskCodec(input_size=(256, 256))
    to_input = resize_affine(ROI_SIZE, codec.input_size)
    lm = apply_affine(to_input, np.rint(MEAN))
    mask = codec.encode(np.delete(lm, missing, axis=0))
    out, conf = codec.decode(mask)
    assert np.isnan(out[missing]).all() and conf[missing] == 0
    keep = np.arange(N_LANDMARKS) != missing
    assert np.isfinite(out[keep]).all()
    assert np.abs(out[keep] - lm[keep]).max() < 0.5


def test_mask_empty_gives_all_nan():
    codec = MaskCodec(input_size=(256, 256))
    out, conf = codec.decode(np.zeros((256, 256, 1), np.float32))
    assert np.isnan(out).all() and (conf == 0).all()


def test_heatmap_nan_landmark_gives_empty_channel():
    codec = HeatmapCodec(input_size=(96, 40), stride=1)
    lm = np.stack([np.linspace(5, 34, N_LANDMARKS), np.linspace(5, 90, N_LANDMARKS)], axis=1)
    lm[4] = np.nan
    heat = codec.encode(lm)
    assert np.isfinite(heat).all()
    assert heat[..., 4].max() == 0.0
    assert heat[..., 3].max() > 0.9
    out, conf = codec.decode(heat)
    assert np.isnan(out[4]).all() and conf[4] == 0
    assert np.abs(np.delete(out, 4, 0) - np.delete(lm, 4, 0)).max() < 0.5


@pytest.mark.parametrize("codec", [MaskCodec(input_size=(256, 256)), HeatmapCodec(input_size=(96, 40), stride=2),
                                   RegressionCodec(input_size=(384, 160), normalize=True)])
def test_codec_dict_round_trip(codec):
    assert codec_from_dict(codec.to_dict()) == codec


def test_codec_from_dict_unknown_kind():
    with pytest.raises(ValueError, match="unknown codec kind"):
        codec_from_dict({"kind": "nope"})

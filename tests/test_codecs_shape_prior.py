"""Shape-constrained heatmap decoding (``HeatmapCodec(shape_prior=True)``): identity swaps and decoy
peaks are undone, a missing channel gets the fitted shape's point with confidence 0, clean heatmaps
still round-trip well under 1 px, and the flag survives the manifest round trip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvs_core.annotations import read_annotations
from cvs_core.codecs import HeatmapCodec, codec_from_dict
from cvs_core.landmarks import MEAN_SHAPE_ROI, N_LANDMARKS, ROI_SIZE
from cvs_core.preprocess import apply_affine, resize_affine

REPO = Path(__file__).resolve().parent.parent
INPUT = (384, 160)
REF = apply_affine(resize_affine(ROI_SIZE, INPUT), np.asarray(MEAN_SHAPE_ROI, np.float64))


def _posed(angle_deg: float = 0.0, scale: float = 1.0, shift=(0.0, 0.0)) -> np.ndarray:
    """The reference shape in the model-input frame, rotated/scaled about its centroid and shifted."""
    c = REF.mean(0)
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return (REF - c) @ rot.T * scale + c + np.asarray(shift)


def _blob(codec: HeatmapCodec, xy) -> np.ndarray:
    """One unit Gaussian ``(h, w)`` at ``xy``, drawn with the codec's own encoder."""
    pts = np.full((N_LANDMARKS, 2), np.nan)
    pts[0] = xy
    return codec.encode(pts)[..., 0]


def _swapped_with_decoys(codec: HeatmapCodec, lm: np.ndarray) -> np.ndarray:
    """Heatmaps whose arg-maxes lie: channels 1 (C2im) and 13 (C4sa) peak on each other's landmark
    (their own landmark only a weaker second peak), channel 8 (C3ip) has a stronger decoy off the
    spine, channel 16 (C4ip) a stronger decoy on C3's posterior corner (landmark 4)."""
    heat = codec.encode(lm)
    a, b = 1, 13
    heat[..., a] = 0.6 * heat[..., a] + _blob(codec, lm[b])
    heat[..., b] = 0.6 * heat[..., b] + _blob(codec, lm[a])
    heat[..., 8] = 0.7 * heat[..., 8] + 0.95 * _blob(codec, lm.mean(0) + [-60.0, 70.0])
    heat[..., 16] = 0.5 * heat[..., 16] + 0.9 * _blob(codec, lm[3])
    return heat


@pytest.mark.parametrize("pose", [(0.0, 1.0, (0, 0)), (12.0, 1.15, (-10, 25)), (-10.0, 0.85, (15, -30))])
def test_swapped_peaks_and_decoys_recovered(pose):
    lm = _posed(*pose)
    heat = _swapped_with_decoys(HeatmapCodec(input_size=INPUT), lm)
    plain, _ = HeatmapCodec(input_size=INPUT).decode(heat)
    err_plain = np.linalg.norm(plain - lm, axis=1)
    assert (err_plain[[1, 13, 8, 16]] > 10).all()  # the plain arg-max takes every lie
    out, conf = HeatmapCodec(input_size=INPUT, shape_prior=True).decode(heat)
    assert out.shape == (N_LANDMARKS, 2) and conf.shape == (N_LANDMARKS,)
    assert np.linalg.norm(out - lm, axis=1).max() < 1.0
    assert (conf > 0.4).all()
    np.testing.assert_allclose(conf[[1, 13]], 0.6, atol=0.05)  # the weaker, right peak was taken


def test_missing_channel_gets_shape_point_with_zero_confidence():
    lm = _posed(8.0, 1.1, (5, 10))
    heat = HeatmapCodec(input_size=INPUT).encode(lm)
    heat[..., 10] = 0.0
    plain, plain_conf = HeatmapCodec(input_size=INPUT).decode(heat)
    assert np.isnan(plain[10]).all() and plain_conf[10] == 0
    out, conf = HeatmapCodec(input_size=INPUT, shape_prior=True).decode(heat)
    assert np.isfinite(out).all()
    assert conf[10] == 0.0 and (np.delete(conf, 10) > 0.9).all()
    assert np.linalg.norm(out[10] - lm[10]) < 2.0  # the posed mean shape is fitted almost exactly
    assert np.linalg.norm(np.delete(out - lm, 10, axis=0), axis=1).max() < 0.5


def test_lone_wrong_peak_is_replaced_not_trusted():
    """A channel whose only peak sits on another landmark: no candidate near its fitted point → the
    shape's point with confidence 0 (the stolen landmark keeps its own, stronger peak)."""
    lm = _posed()
    codec = HeatmapCodec(input_size=INPUT)
    heat = codec.encode(lm)
    heat[..., 18] = 0.8 * _blob(codec, lm[3])
    out, conf = HeatmapCodec(input_size=INPUT, shape_prior=True).decode(heat)
    assert conf[18] == 0.0 and np.linalg.norm(out[18] - lm[18]) < 2.0
    assert np.linalg.norm(out[3] - lm[3]) < 0.5 and conf[3] > 0.9


def test_too_few_channels_falls_back_to_argmax():
    codec = HeatmapCodec(input_size=INPUT, shape_prior=True)
    lm = _posed()
    heat = HeatmapCodec(input_size=INPUT).encode(lm)
    heat[..., 2:] = 0.0
    out, conf = codec.decode(heat)
    assert np.linalg.norm(out[:2] - lm[:2], axis=1).max() < 0.5
    assert np.isnan(out[2:]).all() and (conf[2:] == 0).all()
    out, conf = codec.decode(np.zeros((*INPUT, N_LANDMARKS), np.float32))
    assert np.isnan(out).all() and (conf == 0).all()


@settings(max_examples=25, deadline=None)
@given(angle=st.floats(-15, 15), scale=st.floats(0.8, 1.25), dx=st.floats(-20, 20), dy=st.floats(-40, 40),
       seed=st.integers(0, 2**31 - 1), stride=st.sampled_from([1, 2]))
def test_clean_round_trip_with_shape_prior(angle, scale, dx, dy, seed, stride):
    """Clean heatmaps of a posed, per-landmark jittered shape (±2 px) decode as without the prior."""
    lm = _posed(angle, scale, (dx, dy)) + np.random.default_rng(seed).uniform(-2, 2, (N_LANDMARKS, 2))
    codec = HeatmapCodec(input_size=INPUT, stride=stride, shape_prior=True)
    out, conf = codec.decode(codec.encode(lm))
    assert np.abs(out - lm).max() < 0.5
    assert (conf > 0.5).all()


def test_real_configurations_round_trip():
    """The public real landmark configurations (all stages present in the samples) are not pulled
    towards the mean shape."""
    ann = read_annotations(REPO / "data" / "samples" / "train_data.csv", check_bounds=False)
    to_input = resize_affine(ROI_SIZE, INPUT)
    codec = HeatmapCodec(input_size=INPUT, shape_prior=True)
    for name in ann.names:
        lm = apply_affine(to_input, ann.get(name))
        inside = (lm[:, 0] > 2) & (lm[:, 0] < INPUT[1] - 3) & (lm[:, 1] > 2) & (lm[:, 1] < INPUT[0] - 3)
        out, _ = codec.decode(codec.encode(lm))
        assert np.abs(out - lm)[inside].max() < 0.5, name


def test_encode_ignores_flag():
    lm = _posed(5.0)
    np.testing.assert_array_equal(HeatmapCodec(input_size=INPUT).encode(lm),
                                  HeatmapCodec(input_size=INPUT, shape_prior=True).encode(lm))


def test_manifest_round_trip_with_and_without_key():
    old = {"input_size": [384, 160], "stride": 1, "sigma": 2.0, "kind": "heatmap"}  # pre-flag manifests
    codec = codec_from_dict(old)
    assert isinstance(codec, HeatmapCodec) and codec.shape_prior is False
    on = codec_from_dict({**old, "shape_prior": True})
    assert on.shape_prior is True and on.input_size == (384, 160)
    for c in (codec, on):
        d = json.loads(json.dumps(c.to_dict()))
        assert d["shape_prior"] is c.shape_prior
        assert codec_from_dict(d) == c


def test_shipped_unet_heatmap_uses_shape_prior():
    manifest = json.loads((REPO / "models" / "unet_heatmap" / "manifest.json").read_text())
    assert codec_from_dict(manifest["codec"]).shape_prior is True


def test_prior_parameters_are_manifest_fields_and_old_manifests_decode_identically():
    lm = _posed(8.0, 1.05, (4, -6))
    heat = _swapped_with_decoys(HeatmapCodec(input_size=INPUT), lm)
    old = {"input_size": [384, 160], "stride": 1, "sigma": 2.0, "kind": "heatmap", "shape_prior": True}
    codec = codec_from_dict(old)  # a manifest written before the parameters were fields
    d = json.loads(json.dumps(codec.to_dict()))
    assert d["prior_sigmas"] == [0.8, 0.5, 0.35, 0.35] and d["prior_top_k"] == 4 and d["prior_gate"] == 2.5
    again = codec_from_dict(d)
    assert again == codec
    np.testing.assert_array_equal(again.decode(heat)[0], codec.decode(heat)[0])
    # retuning is visible: another value decodes differently and is in the manifest entry
    tuned = codec_from_dict({**d, "prior_top_k": 1})  # only the arg-max per channel
    assert tuned.to_dict()["prior_top_k"] == 1 and tuned != codec
    # the swapped channels then fall back to the fitted shape's point, flagged by confidence 0
    assert np.abs(tuned.decode(heat)[1] - codec.decode(heat)[1]).max() > 0.5
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['prior_magic'\]"):
        codec_from_dict({**d, "prior_magic": 1})

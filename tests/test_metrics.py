"""Tests for cvs_core.metrics, with a hand-computed cross-check (docs/architecture.md#metrics)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cvs_core import metrics as M


# ----------------------------------------------------------------------------- hand case
def hand_case():
    """Two images, 19 landmarks; every error is 0 except four.

    image 0: landmark 0 off by (3, 4)   → e = 5      landmark 1 off by (6, 8)  → e = 10
    image 1: landmark 0 off by (0, 2)   → e = 2      landmark 2 off by (-5, 12) → e = 13
    C3 width |p7 − p8|: image 0: (100,200)→(140,200) = 40 px; image 1: (100,200)→(148,264) = 80 px.
    """
    true = np.zeros((2, 19, 2))
    for k in range(19):
        true[:, k] = (10.0 * k + 5, 20.0 * k + 7)
    true[0, 6], true[0, 7] = (100, 200), (140, 200)
    true[1, 6], true[1, 7] = (100, 200), (148, 264)
    pred = true.copy()
    pred[0, 0] += (3, 4)
    pred[0, 1] += (6, 8)
    pred[1, 0] += (0, 2)
    pred[1, 2] += (-5, 12)
    return pred, true


def test_hand_case_errors_and_mre():
    pred, true = hand_case()
    e = M.radial_errors(pred, true)
    assert e.shape == (2, 19)
    assert e[0, 0] == 5 and e[0, 1] == 10 and e[1, 0] == 2 and e[1, 2] == 13
    assert np.count_nonzero(e) == 4

    r = M.mre(e)
    # 38 errors summing to 5 + 10 + 2 + 13 = 30 → MRE = 30 / 38 = 0.789473…
    assert r["mean"] == pytest.approx(30 / 38)
    # Σe² = 25 + 100 + 4 + 169 = 298; population var = 298/38 − (30/38)² = 7.84210 − 0.62327 = 7.21883
    # → SD = 2.68679…
    assert r["sd"] == pytest.approx(math.sqrt(298 / 38 - (30 / 38) ** 2))
    assert r["sd"] == pytest.approx(2.68679, abs=1e-5)
    # per landmark: lm0 (5 + 2)/2 = 3.5, lm1 (10 + 0)/2 = 5, lm2 (0 + 13)/2 = 6.5, others 0
    assert r["per_landmark"][:3] == pytest.approx([3.5, 5.0, 6.5])
    assert np.all(r["per_landmark"][3:] == 0)
    # their SDs (population, two values each): |5−2|/2 = 1.5, 10/2 = 5, 13/2 = 6.5
    assert r["per_landmark_sd"][:3] == pytest.approx([1.5, 5.0, 6.5])
    # per image: (5 + 10)/19 and (2 + 13)/19 — both 15/19 = 0.78947
    assert r["per_image"] == pytest.approx([15 / 19, 15 / 19])
    assert r["n_missing"] == 0 and r["unit"] == "px"

    # at 0.25 mm/px everything scales by 0.25: 7.5 / 38 mm
    r_mm = M.mre(e, 0.25)
    assert r_mm["mean"] == pytest.approx(7.5 / 38) and r_mm["unit"] == "mm"
    assert r_mm["sd"] == pytest.approx(0.25 * r["sd"])


def test_hand_case_rates():
    pred, true = hand_case()
    e = M.radial_errors(pred, true)
    # in mm at 0.25: 1.25, 2.5, 0.5, 3.25 (others 0)
    # ≤2 → all but 2.5 and 3.25 = 36/38; ≤2.5 → 37/38 (2.5 counts); ≤3 → 37/38; ≤4 → 38/38
    assert M.sdr(e, spacing_mm=0.25) == pytest.approx({"2.0": 36 / 38, "2.5": 37 / 38, "3.0": 37 / 38, "4.0": 1.0})
    # px: ≤5 → all but 10 and 13 = 36/38
    assert M.pck(e, 5) == pytest.approx(36 / 38)
    # mm: ≤2 mm as above
    assert M.pck(e, 2.0, unit="mm", spacing_mm=0.25) == pytest.approx(36 / 38)
    # C3 widths 40 and 80 → threshold 0.1 is 4 px on image 0 (5 and 10 fail) and 8 px on image 1
    # (2 passes, 13 fails) → 3 failures → 35/38
    w = M.c3_width(true)
    assert w == pytest.approx([40.0, 80.0])
    assert M.pck(e, 0.1, unit="c3", c3_widths=w) == pytest.approx(35 / 38)
    # per landmark at 5 px: lm0 (5 ok, 2 ok) = 1, lm1 (10 fails, 0 ok) = 0.5, lm2 (0 ok, 13 fails) = 0.5
    pl = M.pck_per_landmark(e, 5)
    assert pl.shape == (19,) and pl[:3] == pytest.approx([1.0, 0.5, 0.5]) and np.all(pl[3:] == 1)
    # AUC on [0, 10] px: mean of clip(1 − e/10): 34 zeros → 1 each, 5 → 0.5, 10 → 0, 2 → 0.8, 13 → 0
    # = (34 + 0.5 + 0.8) / 38 = 35.3 / 38 = 0.928947
    assert M.pck_auc(e, 10) == pytest.approx(35.3 / 38)
    assert M.SortedErrors(e).auc(10) == pytest.approx(35.3 / 38)
    # legacy inception: strictly < radius. < 40 → all; < 10 → 36/38 (10 itself fails) while PCK ≤ 10 → 37/38
    assert M.legacy_inception_pck(pred, true) == 1.0
    assert M.legacy_inception_pck(pred, true, radius_px=10) == pytest.approx(36 / 38)
    assert M.pck(e, 10) == pytest.approx(37 / 38)
    # coordinate MAE: |3|+|4|+|6|+|8|+|0|+|2|+|−5|+|12| = 40 over 2·19·2 = 76 coordinates = 0.526316
    assert M.coordinate_mae(pred, true) == pytest.approx(40 / 76)


def test_summarize_hand_case_json():
    pred, true = hand_case()
    s = M.summarize(pred, true, 0.25)
    json.dumps(s, allow_nan=False)
    assert s["n_images"] == 2 and s["n_missing"] == 0
    assert s["mre_px"] == pytest.approx(30 / 38) and s["mre_mm"] == pytest.approx(7.5 / 38)
    assert set(s["sdr"]) == {"2.0", "2.5", "3.0", "4.0"}
    assert s["pck"] == pytest.approx(36 / 38)
    # AUC on [0, 4] mm: mm errors 1.25, 2.5, 0.5, 3.25 → 1 − e/4 = 0.6875, 0.375, 0.875, 0.1875
    # → (34 + 0.6875 + 0.375 + 0.875 + 0.1875) / 38 = 36.125 / 38
    assert s["pck_auc"] == pytest.approx(36.125 / 38)
    assert s["coordinate_mae"] == pytest.approx(40 / 76)


# ----------------------------------------------------------------------------- missing / errors
def test_nan_prediction_is_a_failure_not_dropped():
    pred, true = hand_case()
    pred[1, 5] = (np.nan, 3.0)
    e = M.radial_errors(pred, true)
    assert np.isinf(e[1, 5])
    r = M.mre(e)
    assert r["n_missing"] == 1
    assert r["mean"] == pytest.approx(30 / 37)  # the mean runs over the 37 finite errors
    assert np.isnan(M.mre(np.full((2, 3), np.inf))["mean"])
    # but the rates count it as a failure over all 38
    assert M.pck(e, 5) == pytest.approx(35 / 38)
    assert M.sdr(e, (100,), 1.0) == {"100.0": pytest.approx(37 / 38)}
    assert M.SortedErrors(e).pck(1e9) == pytest.approx(37 / 38)
    assert M.legacy_inception_pck(pred, true) == pytest.approx(37 / 38)
    assert M.coordinate_mae(pred, true) == pytest.approx(40 / 74)
    s = M.summarize(pred, true, 0.25)
    assert s["n_missing"] == 1
    json.dumps(s, allow_nan=False)
    # the validation MRE (training's checkpoint criterion) counts the miss as 100 px instead
    assert M.validation_mre(e) == pytest.approx((30 + 100) / 38)
    assert s["validation_mre_px"] == pytest.approx((30 + 100) / 38)
    assert M.validation_mre(np.full((1, 19), np.nan)) == 100.0


def test_nan_truth_names_the_image():
    pred, true = hand_case()
    true[1, 3, 0] = np.nan
    with pytest.raises(ValueError, match="image index 1"):
        M.radial_errors(pred, true)
    with pytest.raises(ValueError, match="image index 1"):
        M.coordinate_mae(pred, true)


def test_single_image():
    pred, true = hand_case()
    e = M.radial_errors(pred[0], true[0])
    assert e.shape == (1, 19)
    assert M.mre(e)["mean"] == pytest.approx(15 / 19)
    assert M.mre(e[0])["per_image"].shape == (1,)
    assert M.c3_width(true[0]) == pytest.approx([40.0])
    s = M.summarize(pred[0], true[0], 0.25)
    assert s["n_images"] == 1


@pytest.mark.parametrize("bad", [0, 0.0, -0.1])
def test_zero_or_negative_spacing_raises(bad):
    e = np.ones((2, 19))
    with pytest.raises(ValueError, match="pixel spacing must be > 0 mm/px, got"):
        M.mre(e, bad)
    with pytest.raises(ValueError, match="> 0 mm/px"):
        M.pck(e, 2, unit="mm", spacing_mm=bad)
    with pytest.raises(ValueError, match="> 0 mm/px"):
        M.sdr(e, spacing_mm=[0.25, bad])


def test_zero_spacing_message_exact():
    with pytest.raises(ValueError) as info:
        M.mre(np.ones((1, 19)), 0)
    assert str(info.value) == "pixel spacing must be > 0 mm/px, got 0"


def test_per_image_spacing():
    e = np.array([[4.0, 8.0], [4.0, 8.0]])
    r = M.mre(e, [0.5, 0.25])  # mm: 2, 4, 1, 2
    assert r["mean"] == pytest.approx(9 / 4)
    assert r["per_image"] == pytest.approx([3.0, 1.5])
    assert M.pck(e, 2, unit="mm", spacing_mm=[0.5, 0.25]) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="one value per image"):
        M.mre(e, [0.5, 0.25, 0.1])


def test_pck_unit_errors():
    e = np.ones((2, 19))
    with pytest.raises(ValueError, match="spacing_mm"):
        M.pck(e, 1, unit="mm")
    with pytest.raises(ValueError, match="c3_widths"):
        M.pck(e, 1, unit="c3")
    with pytest.raises(ValueError, match="unit"):
        M.pck(e, 1, unit="cm")
    with pytest.raises(ValueError, match="spacing_mm"):
        M.sdr(e)


def test_pck_units_agree():
    rng = np.random.default_rng(1)
    e = rng.gamma(2.0, 3.0, size=(20, 19))
    s = rng.uniform(0.1, 0.3, size=20)
    w = rng.uniform(50, 80, size=20)
    # mm threshold 2 with spacing s  ≡  px threshold 2/s per image
    assert M.pck(e, 2.0, unit="mm", spacing_mm=s) == pytest.approx(np.mean(e <= (2.0 / s)[:, None]))
    assert M.pck(e, 0.05, unit="c3", c3_widths=w) == pytest.approx(np.mean(e <= (0.05 * w)[:, None]))
    assert M.pck(e, 3.0) == pytest.approx(np.mean(e <= 3.0))


# ----------------------------------------------------------------------------- sorted index
class SmallTable(M.SortedErrors):
    MAX_TABLE_CELLS = 0


errors_strategy = arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(1, 19)),
                         elements=st.one_of(st.floats(0, 100, allow_nan=False), st.just(np.inf)))


@settings(max_examples=150, deadline=None)
@given(errors_strategy, st.lists(st.floats(-1, 120, allow_nan=False), min_size=1, max_size=10))
def test_sorted_errors_equals_naive(errors, thresholds):
    idx = M.SortedErrors(errors)
    small = SmallTable(errors)  # the per-column fallback for sets too big for the count table
    assert small._col_counts is None
    for t in thresholds:
        assert idx.pck(t) == pytest.approx(np.mean(errors <= t))
        assert idx.pck_per_landmark(t) == pytest.approx(np.mean(errors <= t, axis=0))
        assert idx.pck(t) == pytest.approx(M.pck(errors, t))
        assert small.pck_per_landmark(t) == pytest.approx(np.mean(errors <= t, axis=0))
    assert idx.curve(thresholds) == pytest.approx([np.mean(errors <= t) for t in thresholds])
    if max(thresholds) > 0:
        assert idx.auc(max(thresholds)) == pytest.approx(M.pck_auc(errors, max(thresholds)), abs=1e-12)


def test_sorted_errors_units_and_any_shape():
    rng = np.random.default_rng(2)
    e = rng.gamma(2.0, 3.0, size=(10, 19))
    idx = M.SortedErrors(e, unit="mm", spacing_mm=0.25)
    assert idx.pck(2.0) == pytest.approx(M.pck(e, 2.0, unit="mm", spacing_mm=0.25))
    flat = M.SortedErrors(e.reshape(-1))
    assert flat.pck(5.0) == pytest.approx(np.mean(e <= 5.0))
    with pytest.raises(ValueError, match="per-landmark"):
        flat.pck_per_landmark(5.0)
    assert M.SortedErrors(e[None]).pck(5.0) == pytest.approx(np.mean(e <= 5.0))  # 3-D works too


def test_pck_curve_monotone_and_auc_range():
    rng = np.random.default_rng(3)
    e = rng.gamma(2.0, 3.0, size=(50, 19))
    e[0, :3] = np.inf
    t = np.linspace(0, 40, 200)
    c = M.pck_curve(e, t)
    assert c.shape == (200,)
    assert np.all(np.diff(c) >= 0)
    assert c[0] == 0 and c[-1] < 1  # the three inf errors never pass
    auc = M.pck_auc(e, 20)
    assert 0 <= auc <= 1
    # the exact area agrees with a fine trapezoid integration of the curve
    tt = np.linspace(0, 20, 20001)
    assert auc == pytest.approx(np.trapezoid(M.pck_curve(e, tt), tt) / 20, abs=1e-3)
    assert M.pck_auc(np.zeros((2, 19)), 5) == 1.0
    assert M.pck_auc(np.full((2, 19), np.inf), 5) == 0.0


# ----------------------------------------------------------------------------- masks
def test_dice_hand_case():
    p = np.zeros((4, 4))
    t = np.zeros((4, 4))
    p[0, :4] = 1.0  # 4 pixels
    t[0, 2:] = 1.0  # 2 pixels of which both overlap…
    t[1, :2] = 1.0  # …and 2 that don't → Σt = 4, Σp = 4, Σtp = 2
    # dice = (2·2 + 1e-7) / (4 + 4 + 1e-7) = 0.5
    assert M.dice(p, t) == pytest.approx(0.5)
    # soft values are thresholded at 0.5: 0.6 counts, 0.4 does not
    assert M.dice(p * 0.6, t) == pytest.approx(0.5)
    assert M.dice(p * 0.4, t) == pytest.approx(1e-7 / (4 + 1e-7))
    # batch: mean of per-image dice (0.5 and 1.0 for identical masks)
    assert M.dice(np.stack([p, t]), np.stack([t, t])) == pytest.approx(0.75)
    assert M.dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    # soft dice loss: pred 0.5 on the 4 pixels of p; Σtp = 0.5·2 = 1, Σt = 4, Σp = 2
    # → 1 − (2·1 + 1e-7) / (4 + 2 + 1e-7) = 1 − 1/3 = 0.666…
    assert M.dice_loss_value(p * 0.5, t) == pytest.approx(2 / 3)
    assert M.dice_loss_value(t, t) == pytest.approx(0.0)


def _square_mask(centres, size=256, half=5):
    m = np.zeros((size, size))
    for x, y in centres:
        m[int(y) - half:int(y) + half, int(x) - half:int(x) + half] = 1.0
    return m


def test_legacy_unet_pck_can_exceed_one():
    true = _square_mask([(50, 50), (150, 150)])
    pred = np.zeros((256, 256))
    pred[49:51, 46:48] = 1  # two small separate blobs, both within 5 px of the true (50, 50) blob
    pred[49:51, 52:54] = 1
    pred[145:155, 145:155] = 1  # the second landmark, exact
    pred[10:12, 200:202] = 1  # a stray blob far away: not counted
    # 3 correct predicted blobs / 2 true blobs = 1.5
    assert M.legacy_unet_pck(pred[None], true[None]) == pytest.approx(1.5)


def test_legacy_unet_pck_ignores_identity():
    rng = np.random.default_rng(4)
    pts = rng.uniform(20, 236, size=(19, 2))
    pts = pts[np.argsort(pts[:, 1])]
    pts[:, 1] = np.linspace(15, 240, 19)  # keep the squares apart
    swapped = pts.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    swapped[[5, 9]] = swapped[[9, 5]]
    true_m = _square_mask(pts)
    pred_m = _square_mask(swapped)
    assert M.legacy_unet_pck(pred_m, true_m) == pytest.approx(1.0)
    # while the same-index scores see the swap
    e = M.radial_errors(swapped, pts)
    assert M.pck(e, 5) == pytest.approx(15 / 19)


def test_legacy_unet_pck_no_true_blobs():
    assert math.isnan(M.legacy_unet_pck(np.zeros((2, 8, 8)), np.zeros((2, 8, 8))))

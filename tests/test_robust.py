"""Wide phantoms (cvs_core.synth.render_wide_phantom / wide_phantom_roi) and the realistic
augmentation profile (cvs_core.train.augment_realistic): exact landmarks, keypoint consistency."""
import numpy as np
import pytest

from cvs_core.synth import IMAGE_SIZE, render_phantom, render_wide_phantom, roi_crop_affine, wide_phantom_roi
from cvs_core.train import TrainConfig, augment_realistic, augment_sample, realistic_affine

PHANTOM_42_SHA = "e4569104afa27aaf"  # render_phantom(42, stage=3) before the wide renderer was added


def _dot_image(shape, pts):
    """A black image with a small bright Gaussian at each point (sub-pixel centres)."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.zeros(shape, np.float64)
    for x, y in pts:
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5 ** 2))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def _centroids(img, guesses, r=5):
    out = []
    f = img.astype(np.float64)
    for x, y in guesses:
        x0, y0 = int(round(x)), int(round(y))
        win = f[max(y0 - r, 0):y0 + r + 1, max(x0 - r, 0):x0 + r + 1]
        ys, xs = np.mgrid[max(y0 - r, 0):y0 + r + 1, max(x0 - r, 0):x0 + r + 1]
        out.append([(xs * win).sum() / win.sum(), (ys * win).sum() / win.sum()])
    return np.array(out)


def test_render_phantom_unchanged_by_the_wide_option():
    # The ROI phantom path draws nothing of the wide context: same call, same bytes as before the
    # wide renderer existed (sha256 of the seed-42 stage-3 phantom, recorded on the pre-change code).
    import hashlib
    ph = render_phantom(42, stage=3)
    assert hashlib.sha256(ph.image.tobytes()).hexdigest()[:16] == PHANTOM_42_SHA


@pytest.mark.parametrize("spacing", [0.1, 0.25, 0.4])
def test_wide_phantom_landmarks_box_and_scale(spacing):
    wp = render_wide_phantom(11, stage=4, spacing_mm=spacing)
    assert abs(wp.spacing_mm - spacing) / spacing < 0.01
    x0, y0, x1, y1 = wp.roi_box
    # the ROI box keeps the study's 250×600 proportions at the requested scale
    assert (y1 - y0) == pytest.approx(600 * 0.25 / spacing, rel=0.01)
    assert (x1 - x0) / (y1 - y0) == pytest.approx(250 / 600, rel=0.01)
    h, w = wp.image.shape
    assert x0 > 0 and y0 > 0 and x1 < w and y1 < h  # context on every side
    # cutting the ROI box back to 600×250 gives the ROI phantom's layout (landmarks in the ROI range)
    m = roi_crop_affine(wp.roi_box)
    roi_pts = wp.landmarks @ m[:, :2].T + m[:, 2]
    assert roi_pts[:, 0].min() > 20 and roi_pts[:, 0].max() < 245
    assert roi_pts[:, 1].min() > 290 and roi_pts[:, 1].max() < 575
    lx0, ly0, lx1, ly1 = wp.landmark_box
    assert x0 < lx0 < lx1 < x1 and y0 < ly0 < ly1 < y1


def test_wide_phantom_landmarks_sit_on_the_bone():
    # the inferior C2 border (landmarks 1–3) and the C3 corners lie on bright cortical rims: local
    # intensity there exceeds the disc space just below them
    wp = render_wide_phantom(5, stage=2, spacing_mm=0.25)
    img = wp.image.astype(np.float64)
    ip = wp.landmarks[9]  # C3 inferior-posterior corner (C3ip)
    on = img[int(round(ip[1])) - 3:int(round(ip[1])) + 1, int(round(ip[0])) + 2:int(round(ip[0])) + 8].mean()
    below = img[int(round(ip[1])) + 4:int(round(ip[1])) + 7, int(round(ip[0])) + 2:int(round(ip[0])) + 8].mean()
    assert on > below


def test_wide_phantom_roi_is_a_consistent_cut():
    ph = wide_phantom_roi(3, stage=5)
    assert ph.image.shape == IMAGE_SIZE and ph.image.dtype == np.uint8
    assert ph.landmarks.shape == (19, 2) and np.isfinite(ph.landmarks).all()
    same = wide_phantom_roi(3, stage=5)
    assert np.array_equal(ph.image, same.image) and np.array_equal(ph.landmarks, same.landmarks)


def test_realistic_geometry_round_trip():
    # dots drawn at the landmarks land exactly where the augmented landmarks say
    pts = render_phantom(8, stage=3).landmarks
    img = _dot_image(IMAGE_SIZE, pts)
    for seed in range(4):
        out, moved = augment_realistic(np.random.default_rng(seed), img, pts, photometric=False)
        inside = (moved[:, 0] > 6) & (moved[:, 0] < 243) & (moved[:, 1] > 6) & (moved[:, 1] < 593)
        found = _centroids(out, moved[inside])
        assert np.abs(found - moved[inside]).max() < 0.35, seed
    # and the inverse affine brings the landmarks back
    m = realistic_affine(np.random.default_rng(1), IMAGE_SIZE, pts)
    full = np.vstack([m, [0, 0, 1]])
    back = (np.c_[pts @ m[:, :2].T + m[:, 2], np.ones(19)] @ np.linalg.inv(full).T)[:, :2]
    assert np.allclose(back, pts, atol=1e-9)


def test_realistic_ranges_are_wider_than_standard():
    pts = render_phantom(9, stage=2).landmarks
    scales, angles = [], []
    for seed in range(200):
        m = realistic_affine(np.random.default_rng(seed), IMAGE_SIZE, pts)
        scales.append(np.hypot(m[0, 0], m[0, 1]))
        angles.append(np.degrees(np.arctan2(m[0, 1], m[0, 0])))
    assert min(scales) < 0.75 and max(scales) > 1.25
    assert min(angles) < -11 and max(angles) > 11


def test_realistic_profile_output_and_config():
    ph = render_phantom(10, stage=1)
    img, pts = augment_realistic(np.random.default_rng(0), ph.image, ph.landmarks)
    assert img.shape == ph.image.shape and img.dtype == np.uint8 and pts.shape == (19, 2)
    assert not np.array_equal(img, ph.image)
    cfg = TrainConfig(phantoms=4)
    assert cfg.augment_profile == "standard" and cfg.wide_phantoms == 0.0  # today's behaviour by default
    with pytest.raises(ValueError, match="augment_profile"):
        TrainConfig(phantoms=4, augment_profile="fancy")
    with pytest.raises(ValueError, match="wide_phantoms"):
        TrainConfig(phantoms=4, wide_phantoms=2.0)


def test_training_sequence_uses_the_profile():
    from cvs_core.train import build_datasets, make_codec
    cfg = TrainConfig(phantoms=100, batch_size=2, augment_profile="realistic", wide_phantoms=0.5,
                      preprocess={"input_size": [96, 40], "resize_first": False})
    seq, _, _ = build_datasets(cfg, make_codec(cfg))
    assert sum(s.wide for s in seq._current) == 50  # exactly the share asked for
    x, y = seq[0]
    assert x.shape == (2, 96, 40, 1) and y.shape == (2, 96, 40, 19)
    # the standard profile stays the default path
    assert augment_sample is not augment_realistic


# --- the InceptionResNetV2 recipe (issue 9) --------------------------------------------------------

def test_integral_head_reads_the_peak_location():
    import keras
    from cvs_core.codecs import RegressionCodec
    from cvs_core.networks import IntegralCoordinates
    gh, gw, stride = 48, 20, 8
    rng = np.random.default_rng(0)
    cells = np.stack([rng.integers(0, gh, 19), rng.integers(0, gw, 19)], 1)
    logits = np.full((1, gh, gw, 19), -50.0, np.float32)
    for k, (i, j) in enumerate(cells):
        logits[0, i, j, k] = 50.0
    out = np.asarray(IntegralCoordinates()(keras.ops.convert_to_tensor(logits)))
    assert out.shape == (1, 38)
    # decoded by the normalised regression codec: cell (i, j) is input pixel ((j+0.5)·8 − 0.5, …)
    pts, _ = RegressionCodec(input_size=(384, 160), normalize=True).decode(out[0])
    want = (cells[:, ::-1] + 0.5) * stride - 0.5
    assert np.abs(pts - want).max() < 1e-3
    # and a codec round trip of arbitrary landmarks through the same target
    codec = RegressionCodec(input_size=(384, 160), normalize=True)
    lm = rng.uniform(0, 150, (19, 2))
    assert np.abs(codec.decode(codec.encode(lm))[0] - lm).max() < 1e-3


def test_wing_and_smooth_l1_losses():
    import keras
    from cvs_core.networks import WING_EPS, WING_W, smooth_l1_loss, wing_loss
    t = np.zeros((1, 38), np.float32)
    for d in (0.001, 0.02, 0.2):
        p = np.full((1, 38), d, np.float32)
        wl = float(wing_loss(t, p))
        want = WING_W * np.log(1 + d / WING_EPS) if d < WING_W else d - (WING_W - WING_W * np.log(1 + WING_W / WING_EPS))
        assert wl == pytest.approx(want, rel=1e-5)
        sl = float(smooth_l1_loss(t, p))
        assert sl == pytest.approx(0.5 * d * d / 0.01 if d < 0.01 else d - 0.005, rel=1e-5)
    # continuous at the wing's knee
    below = float(wing_loss(t, np.full((1, 38), WING_W - 1e-6, np.float32)))
    above = float(wing_loss(t, np.full((1, 38), WING_W + 1e-6, np.float32)))
    assert abs(above - below) < 1e-4
    assert keras.saving.get_registered_object("cvs>wing_loss") is wing_loss


def test_warmup_cosine_schedule_and_config():
    from cvs_core.architectures import get_arch
    from cvs_core.train import loss_for, warmup_cosine_lr
    lrs = [warmup_cosine_lr(e, 1e-3, 20, 3) for e in range(20)]
    assert lrs[0] == pytest.approx(1e-3 / 3) and lrs[2] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # monotone decay after the warm-up
    assert lrs[-1] == pytest.approx(1e-5)
    cfg = TrainConfig(model="inception_integral", phantoms=2)
    assert cfg.lr_schedule == "warmup_cosine" and loss_for(cfg)[0].__name__ == "wing_loss"
    gap = TrainConfig(model="inception_gap", phantoms=2)
    assert gap.lr_schedule is None and loss_for(gap)[0] == "mse"  # the shipped recipe is unchanged
    assert loss_for(gap.replace(loss="smooth_l1"))[0].__name__ == "smooth_l1_loss"
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(model="inception_gap", phantoms=2, loss="l3")
    assert "NOT the study" in get_arch("inception_integral").help


@pytest.mark.slow
def test_inception_integral_builds_and_trains_two_steps(tmp_path):
    # the real InceptionResNetV2 backbone (no smaller variant exists) at a small input
    from cvs_core.train import train
    cfg = TrainConfig(model="inception_integral", phantoms=2, val_phantoms=2, epochs=2, batch_size=2,
                      steps_per_epoch=1, augment_profile="realistic", wide_phantoms=0.5, mixed_precision="off",
                      builder_kwargs={"head_filters": 16},
                      preprocess={"input_size": [160, 80], "resize_first": False, "channels": 3,
                                  "scaling": "symmetric"})
    folder = train(cfg, tmp_path / "run", verbose=False)
    from cvs_core.registry import read_manifest
    m = read_manifest(folder)
    assert m["architecture"] == "inception_integral" and m["training"]["epochs_run"] == 2
    assert np.isfinite(m["metrics"]["best_val_mre_px"])
    from cvs_core.predict import Predictor
    pred = Predictor(folder, warmup=False).predict(render_phantom(1, stage=2).image)
    assert pred.landmarks.shape == (19, 2) and np.isfinite(pred.landmarks).all()


def test_warmup_is_per_batch_then_cosine():
    import keras
    from cvs_core.train import WarmupCosine
    cfg = TrainConfig(model="inception_gap", phantoms=2, lr=1e-3, epochs=10, warmup_epochs=1,
                      lr_schedule="warmup_cosine")
    cb = WarmupCosine(cfg)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    cb.set_model(model)
    cb.set_params({"steps": 4})
    seen = []
    cb.on_epoch_begin(0)
    for b in range(4):
        cb.on_train_batch_begin(b)
        seen.append(float(np.asarray(model.optimizer.learning_rate)))
    assert seen == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    cb.on_epoch_begin(5)
    mid = float(np.asarray(model.optimizer.learning_rate))
    cb.on_train_batch_begin(0)  # after the warm-up, batches leave it alone
    assert float(np.asarray(model.optimizer.learning_rate)) == mid and 1e-5 < mid < 1e-3

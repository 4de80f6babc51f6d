"""The shape model and the one similarity fit."""
from __future__ import annotations

import numpy as np

from cvs_core.shape_model import (REAL_CONFIGS, SHAPE_MODEL, fit_shape_model, similarity_fit,
                                  similarity_matrix)
from cvs_core.preprocess import apply_affine


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def test_similarity_fit_recovers_a_known_transform():
    src = REAL_CONFIGS[0]
    dst = src @ (1.3 * _rotation(20.0)).T + [15.0, -40.0]
    a, b = similarity_fit(src, dst)
    assert abs(abs(a) - 1.3) < 1e-12 and abs(np.rad2deg(np.angle(a)) - 20.0) < 1e-9
    np.testing.assert_allclose(apply_affine(similarity_matrix(a, b), src), dst, atol=1e-9)


def test_similarity_fit_weights_ignore_an_outlier_and_never_reflect():
    src = REAL_CONFIGS[1]
    dst = src @ (0.8 * _rotation(-10.0)).T + [3.0, 4.0]
    dst[5] += [300.0, -200.0]
    w = np.ones(len(src))
    w[5] = 0.0
    a, b = similarity_fit(src, dst, w)
    np.testing.assert_allclose(np.delete(apply_affine(similarity_matrix(a, b), src) - dst, 5, 0), 0, atol=1e-9)
    mirrored = src * [-1.0, 1.0]  # a reflection is not a similarity: the fit leaves a residual
    a, b = similarity_fit(src, mirrored)
    assert np.abs(apply_affine(similarity_matrix(a, b), src) - mirrored).max() > 10


def test_shape_model_is_a_centred_unit_mean_with_orthonormal_modes():
    m = SHAPE_MODEL
    assert m.mean.shape == (19, 2) and m.modes.shape == (4, 19, 2) and m.sd.shape == (4,)
    np.testing.assert_allclose(m.mean.mean(0), 0, atol=1e-12)
    assert abs(np.sqrt((m.mean ** 2).sum()) - 1) < 1e-12
    flat = m.modes.reshape(4, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(4), atol=1e-12)
    assert np.all(np.diff(m.sd) <= 0) and m.sd[0] > 0
    # the mean is in the average real orientation: the configurations' angles to it average zero
    assert abs(m.angles.mean()) < 1e-9
    # each real shape is its pose applied to the mean plus mode deformation: the first 4 modes
    # explain most of the aligned variance
    refit = fit_shape_model(REAL_CONFIGS, n_modes=14)
    assert (refit.sd[:4] ** 2).sum() / (refit.sd ** 2).sum() > 0.6
    np.testing.assert_allclose(m.shape(np.zeros(4)), m.mean)

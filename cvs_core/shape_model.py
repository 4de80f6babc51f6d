"""The landmark shape model: the 15 real configurations, generalised Procrustes alignment, PCA
modes, and the one similarity fit everything else uses.

Points are ``(x, y)`` ROI pixels (the 250×600 frame), arrays ``(19, 2)``; inside the fits a point is
the complex number ``x + iy``, so a similarity transform (rotation, uniform scale, translation, no
reflection) is ``z ↦ a·z + b`` with complex ``a`` (``|a|`` the scale, ``arg a`` the angle) and ``b``.

Used by ``cvs_core.synth`` (phantom shapes), ``cvs_core.codecs`` (mask blob → slot assignment,
shape-constrained heatmap decoding). See docs/architecture.md, "Shape model".
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cvs_core.landmarks import MEAN_SHAPE_ROI, N_LANDMARKS, ROI_SIZE

__all__ = ["REAL_CONFIGS", "MEAN_SHAPE_ROI", "ShapeModel", "SHAPE_MODEL", "fit_shape_model",
           "similarity_fit", "similarity_matrix", "shape_basis"]

# The 15 real landmark configurations of data/samples/train_data.csv and test_data.csv (ROI pixels;
# rows: LC 475-478, 1, 100, 102-105, 107-109, 11, 111), embedded so the package works without the
# data folder. ``(15, 19, 2)``.
REAL_CONFIGS = np.array([
    [149, 332, 178, 328, 204, 334, 149, 350, 177, 354, 202, 361, 150, 369, 207, 380, 146, 390, 179, 392, 208, 402, 149, 404, 175, 416, 198, 428, 144, 429, 201, 445, 139, 452, 169, 454, 199, 461],
    [90, 335, 124, 335, 158, 336, 88, 353, 119, 362, 155, 371, 88, 383, 158, 393, 86, 409, 121, 411, 156, 415, 79, 430, 114, 438, 148, 449, 82, 460, 158, 472, 80, 487, 116, 489, 155, 493],
    [105, 377, 130, 374, 167, 384, 117, 386, 146, 400, 168, 416, 110, 409, 169, 434, 106, 436, 143, 442, 166, 456, 105, 446, 132, 474, 160, 488, 99, 471, 154, 505, 87, 495, 116, 508, 146, 524],
    [147, 389, 167, 386, 208, 396, 152, 406, 184, 414, 208, 425, 154, 429, 213, 443, 152, 451, 183, 454, 213, 462, 156, 464, 187, 481, 211, 493, 157, 491, 215, 507, 156, 514, 182, 517, 213, 525],
    [163, 337, 190, 334, 221, 333, 163, 352, 194, 362, 217, 369, 167, 382, 223, 383, 168, 405, 199, 403, 226, 399, 169, 414, 195, 424, 217, 437, 167, 442, 227, 453, 168, 467, 198, 472, 229, 472],
    [62, 332, 98, 336, 131, 340, 65, 354, 97, 367, 129, 373, 67, 381, 133, 390, 64, 404, 100, 405, 134, 407, 63, 421, 96, 434, 128, 442, 63, 446, 129, 462, 61, 470, 95, 472, 128, 481],
    [116, 348, 152, 359, 187, 370, 110, 372, 146, 384, 177, 400, 105, 398, 181, 421, 101, 422, 139, 430, 180, 440, 96, 438, 130, 454, 169, 468, 92, 469, 171, 486, 92, 492, 131, 497, 172, 507],
    [115, 370, 147, 371, 183, 376, 120, 392, 149, 396, 180, 401, 119, 415, 184, 418, 119, 435, 153, 437, 188, 439, 119, 457, 151, 463, 182, 467, 117, 477, 186, 486, 118, 496, 152, 500, 184, 504],
    [108, 382, 137, 380, 171, 396, 110, 401, 140, 407, 172, 410, 110, 431, 175, 436, 112, 461, 143, 456, 176, 470, 112, 477, 146, 485, 177, 490, 115, 506, 179, 513, 114, 532, 144, 528, 179, 542],
    [151, 359, 189, 351, 216, 355, 154, 376, 189, 380, 218, 385, 157, 397, 222, 402, 157, 420, 190, 417, 224, 419, 160, 434, 191, 447, 220, 455, 158, 457, 221, 470, 156, 478, 192, 483, 221, 488],
    [80, 340, 112, 338, 144, 356, 82, 350, 109, 363, 140, 374, 75, 386, 142, 407, 64, 421, 98, 421, 134, 441, 64, 431, 97, 444, 128, 457, 62, 461, 124, 487, 52, 493, 88, 496, 114, 514],
    [133, 312, 159, 319, 196, 327, 134, 333, 165, 342, 192, 347, 131, 360, 193, 370, 126, 386, 160, 386, 193, 397, 131, 396, 158, 414, 184, 420, 123, 422, 183, 445, 117, 449, 146, 449, 178, 471],
    [127, 316, 159, 321, 182, 335, 125, 335, 152, 347, 186, 357, 121, 361, 188, 384, 118, 390, 149, 397, 178, 412, 120, 400, 144, 415, 174, 428, 110, 429, 170, 461, 100, 460, 132, 466, 159, 484],
    [110, 438, 141, 435, 172, 446, 107, 458, 140, 465, 170, 476, 104, 485, 176, 506, 104, 522, 142, 527, 171, 536, 108, 536, 140, 558, 172, 564, 104, 572, 168, 594, 102, 607, 127, 611, 150, 627],
    [124, 395, 158, 388, 205, 404, 122, 412, 161, 418, 200, 425, 127, 452, 210, 455, 126, 485, 169, 479, 211, 489, 129, 498, 172, 508, 213, 510, 131, 532, 219, 542, 133, 568, 180, 565, 233, 590],
], dtype=np.float64).reshape(-1, N_LANDMARKS, 2)


def _complex(points) -> np.ndarray:
    """``(K, 2)`` real ``(x, y)`` → ``(K,)`` complex ``x + iy``; complex input passes through."""
    p = np.asarray(points)
    return p if np.iscomplexobj(p) else p[..., 0] + 1j * p[..., 1]


def similarity_fit(src, dst, weights=None) -> tuple[complex, complex]:
    """Weighted least-squares similarity ``dst ≈ a·src + b`` (rotation, uniform scale, translation;
    never a reflection).

    src, dst: ``(K, 2)`` real ``(x, y)`` points or ``(K,)`` complex ``x + iy``, the same K.
    weights: ``(K,)`` non-negative, default all 1.
    Returns complex ``(a, b)``: the closed form ``a = Σ w·conj(s − s̄)·(d − d̄) / Σ w·|s − s̄|²``,
    ``b = d̄ − a·s̄`` (weighted means ``s̄``, ``d̄``), equal to Umeyama's SVD solution in 2-D.
    """
    p, q = _complex(src), _complex(dst)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, np.float64)
    ws = w.sum()
    pm, qm = (w * p).sum() / ws, (w * q).sum() / ws
    dp = p - pm
    a = (w * np.conj(dp) * (q - qm)).sum() / max((w * np.abs(dp) ** 2).sum(), 1e-12)
    return complex(a), complex(qm - a * pm)


def similarity_matrix(a: complex, b: complex) -> np.ndarray:
    """The 3×3 affine of ``z ↦ a·z + b`` acting on column vectors ``(x, y, 1)``."""
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class ShapeModel:
    """A point-distribution model of the 19 landmarks.

    mean: ``(19, 2)`` Procrustes mean: centred, unit centroid size, in the average orientation of
        the training configurations (the ROI has a fixed orientation).
    modes: ``(n_modes, 19, 2)`` orthonormal PCA modes of the aligned shapes around the mean.
    sd: ``(n_modes,)`` standard deviation of each mode's coefficient (unit-size shapes).
    centroids: ``(N, 2)``, sizes ``(N,)`` (centroid size, px), angles ``(N,)`` (radians): the pose
        of each training configuration relative to the mean.
    """

    mean: np.ndarray
    modes: np.ndarray
    sd: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray
    angles: np.ndarray

    def shape(self, coefficients) -> np.ndarray:
        """``mean + Σ c_i·mode_i``: ``(19, 2)`` for coefficients ``(n_modes,)`` (unit-size frame)."""
        return self.mean + np.tensordot(np.asarray(coefficients, np.float64), self.modes, axes=1)


def _align(shape: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, float]:
    """Similarity-align a centred ``(19, 2)`` shape onto a centred ``ref``: ``(aligned, angle rad)``."""
    a, _ = similarity_fit(shape, ref)
    z = a * _complex(shape)
    return np.stack([z.real, z.imag], axis=1), float(np.angle(a))


def fit_shape_model(configs: np.ndarray, n_modes: int = 4, iterations: int = 20) -> ShapeModel:
    """Generalised Procrustes analysis then PCA of ``configs (N, 19, 2)``."""
    configs = np.asarray(configs, np.float64)
    centroids = configs.mean(axis=1)
    centred = configs - centroids[:, None, :]
    sizes = np.sqrt((centred ** 2).sum(axis=(1, 2)))
    shapes = centred / sizes[:, None, None]
    mean = shapes[0].copy()
    for _ in range(iterations):
        aligned = np.stack([_align(s, mean)[0] for s in shapes])
        new_mean = aligned.mean(axis=0)
        new_mean -= new_mean.mean(axis=0)
        new_mean /= np.sqrt((new_mean ** 2).sum())
        if np.abs(new_mean - mean).max() < 1e-12:
            break
        mean = new_mean
    # The ROI has a fixed orientation, so express the mean in the average real orientation.
    angles = np.array([_align(s, mean)[1] for s in shapes])
    t = -float(np.mean(angles))  # rows p @ [[cos, sin], [−sin, cos]] rotate p by t
    mean = mean @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    aligned = np.stack([_align(s, mean)[0] for s in shapes])
    angles = np.array([_align(s, mean)[1] for s in shapes])
    flat = (aligned - mean).reshape(len(aligned), -1)
    _, sv, vt = np.linalg.svd(flat, full_matrices=False)
    sd = sv / np.sqrt(len(aligned) - 1)
    return ShapeModel(mean=mean, modes=vt[:n_modes].reshape(n_modes, N_LANDMARKS, 2), sd=sd[:n_modes],
                      centroids=centroids, sizes=sizes, angles=angles)


SHAPE_MODEL = fit_shape_model(REAL_CONFIGS)
"""The shape model of the 15 real configurations (4 modes)."""


@lru_cache(maxsize=8)
def shape_basis(input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """The shape model in a model-input frame, as complex points, for shape-constrained decoding.

    input_size: ``(height, width)`` of the model input; the ROI (600×250) is stretched onto it.
    Returns ``(basis (5, 19) complex, prior_sd (5,), spacing)``: row 0 is ``MEAN_SHAPE_ROI`` mapped
    into the input frame, rows 1–4 the PCA modes rotated and scaled into that frame; ``prior_sd``
    their standard deviations relative to a unit mean (row 0: 0 = unpenalised); ``spacing`` the mean
    nearest-neighbour distance of the reference landmarks in input px.
    """
    from cvs_core.preprocess import apply_affine, resize_affine

    ref = apply_affine(resize_affine(ROI_SIZE, tuple(input_size)), np.asarray(MEAN_SHAPE_ROI, np.float64))
    ref_c = _complex(ref)
    centred = ref_c - ref_c.mean()
    mean_c = _complex(SHAPE_MODEL.mean)  # centred, unit centroid size
    rot_scale = np.vdot(mean_c, centred) / np.vdot(mean_c, mean_c).real  # Procrustes mean → reference
    modes = rot_scale * _complex(SHAPE_MODEL.modes)  # (4, 19)
    d = np.abs(ref_c[:, None] - ref_c[None])
    d[np.eye(len(d), dtype=bool)] = np.inf
    return (np.concatenate([ref_c[None], modes]), np.concatenate([[0.0], SHAPE_MODEL.sd]),
            float(d.min(1).mean()))

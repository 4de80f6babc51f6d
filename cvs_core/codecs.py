"""Landmark ↔ training-target codecs, shared by training and inference (MMPose's codec idea).

All codecs work in the *model-input* frame: landmarks ``(19, 2)`` as float ``(x, y)`` pixels of the
model input, pixel-centre convention (integer ``i`` is the centre of pixel ``i``; see
``cvs_core.preprocess``). ``encode`` makes one target; ``decode`` turns one raw model output back into
``(landmarks (19, 2), confidence (19,))``. Undetected landmarks come back as NaN with confidence 0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from cvs_core.landmarks import MEAN_SHAPE_ROI, N_LANDMARKS, ROI_SIZE
from cvs_core.preprocess import apply_affine, invert_affine, resize_affine


@dataclass
class MaskCodec:
    """The study's target: one channel, squares ``[y−5, y+5) × [x−5, x+5)`` drawn at ROI resolution
    around every landmark, then bilinearly resized to the model input (soft edges).

    Landmarks are rounded to whole ROI pixels when drawn (the study's labels are integers), so the
    round trip is exact only for integer ROI coordinates.
    The mask carries no landmark identity: ``decode`` finds connected components and assigns them to
    the 19 slots by Hungarian matching against the mean shape, aligned to the blobs by iterated
    similarity fits. Slots without a blob are NaN.
    input_size, roi_size: ``(height, width)``.
    """

    input_size: tuple[int, int] = (256, 256)
    roi_size: tuple[int, int] = ROI_SIZE
    half_width: int = 5
    threshold: float = 0.5
    kind: str = "mask"

    def _roi_to_input(self) -> np.ndarray:
        return resize_affine(self.roi_size, self.input_size)

    def encode(self, landmarks: np.ndarray) -> np.ndarray:
        """``(19, 2)`` model-input px → mask ``(h, w, 1)`` float32 in [0, 1]."""
        roi_pts = apply_affine(invert_affine(self._roi_to_input()), landmarks)
        mask = np.zeros(self.roi_size, np.float32)
        hw = self.half_width
        for x, y in np.rint(roi_pts).astype(int):
            mask[max(y - hw, 0):max(y + hw, 0), max(x - hw, 0):max(x + hw, 0)] = 1.0
        out = cv2.resize(mask, (self.input_size[1], self.input_size[0]), interpolation=cv2.INTER_LINEAR)
        return out[..., None]

    def blobs(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Connected components of the thresholded mask: ``(centroids (K, 2), peak value (K,))``."""
        prob = np.asarray(output, np.float32).reshape(self.input_size)
        binary = (prob > self.threshold).astype(np.uint8)
        n, labels, _stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        if n <= 1:
            return np.zeros((0, 2)), np.zeros(0)
        idx = labels.ravel()
        weights = prob.ravel()
        ys, xs = np.divmod(np.arange(idx.size), self.input_size[1])
        wsum = np.bincount(idx, weights, n)[1:]
        cx = np.bincount(idx, weights * xs, n)[1:] / wsum
        cy = np.bincount(idx, weights * ys, n)[1:] / wsum
        peaks = np.zeros(n)
        np.maximum.at(peaks, idx, weights)
        return np.stack([cx, cy], axis=1), peaks[1:]

    def reference_shape(self) -> np.ndarray:
        """Mean landmark shape ``(19, 2)`` in the model-input frame."""
        return apply_affine(self._roi_to_input(), np.asarray(MEAN_SHAPE_ROI))

    def decode(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centroids, peaks = self.blobs(output)
        landmarks = np.full((N_LANDMARKS, 2), np.nan)
        confidence = np.zeros(N_LANDMARKS)
        if len(centroids) < 3:
            return landmarks, confidence
        slots, blob_idx = assign_to_slots(self.reference_shape(), centroids)
        # The square [y−5, y+5) is centred on y − 0.5 in ROI pixels: undo that half-pixel shift.
        to_input = self._roi_to_input()
        roi_centres = apply_affine(invert_affine(to_input), centroids[blob_idx]) + 0.5
        landmarks[slots] = apply_affine(to_input, roi_centres)
        confidence[slots] = peaks[blob_idx]
        return landmarks, confidence

    def to_dict(self) -> dict:
        return asdict(self)


def render_study_masks(landmarks_roi: np.ndarray, roi_size=ROI_SIZE, mask_size=(256, 256)) -> np.ndarray:
    """The study's square masks ``(N, h, w)`` float32 drawn from ROI landmarks ``(N, 19, 2)``
    (:class:`MaskCodec`); missing (NaN) landmarks draw nothing. Lets any model, regression ones
    included, be scored with the study's mask metrics."""
    codec = MaskCodec(input_size=tuple(mask_size), roi_size=tuple(roi_size))
    to_mask = resize_affine(tuple(roi_size), tuple(mask_size))
    pts_all = np.asarray(landmarks_roi, np.float64)
    masks = np.zeros((len(pts_all), *mask_size), np.float32)
    for i, pts in enumerate(pts_all):
        pts = pts[np.isfinite(pts).all(1)]
        if len(pts):
            masks[i] = codec.encode(apply_affine(to_mask, pts))[..., 0]
    return masks


def _similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama) taking ``src (K, 2)`` onto ``dst (K, 2)``; 3×3."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u @ vt)) or 1.0
    fix = np.diag([1.0, sign])
    rot = u @ fix @ vt
    var_s = (s ** 2).sum() / len(src)
    scale = (sig * np.diag(fix)).sum() / var_s if var_s > 0 else 1.0
    m = np.eye(3)
    m[:2, :2] = scale * rot
    m[:2, 2] = mu_d - scale * rot @ mu_s
    return m


def assign_to_slots(reference: np.ndarray, points: np.ndarray, iterations: int = 8,
                    max_distance: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Give identity-free ``points (K, 2)`` the identities of ``reference (19, 2)``.

    Aligns the reference to the points (centroid and spread first, then alternating Hungarian
    matching and a similarity fit), and returns ``(slot indices, point indices)`` of the matches.
    Pairs farther apart than ``max_distance`` (default: half the median reference spacing × 3)
    are left unassigned.
    """
    ref = np.asarray(reference, np.float64)
    pts = np.asarray(points, np.float64)
    spread_r = np.sqrt(((ref - ref.mean(0)) ** 2).sum(1).mean())
    spread_p = np.sqrt(((pts - pts.mean(0)) ** 2).sum(1).mean())
    m = np.eye(3)
    m[:2, :2] *= spread_p / spread_r if spread_r > 0 else 1.0
    m[:2, 2] = pts.mean(0) - m[:2, :2] @ ref.mean(0)
    rows = cols = np.zeros(0, int)
    for _ in range(iterations):
        aligned = apply_affine(m, ref)
        cost = np.linalg.norm(aligned[:, None, :] - pts[None, :, :], axis=2)
        rows, cols = linear_sum_assignment(cost)
        if len(rows) < 3:
            break
        new_m = _similarity_fit(ref[rows], pts[cols])
        if np.allclose(new_m, m, atol=1e-6):
            break
        m = new_m
    aligned = apply_affine(m, ref)
    if max_distance is None:
        d = np.linalg.norm(aligned[:, None] - aligned[None], axis=2)
        d[np.eye(len(d), dtype=bool)] = np.inf
        max_distance = 1.5 * np.median(d.min(1))
    keep = np.linalg.norm(aligned[rows] - pts[cols], axis=1) <= max_distance
    return rows[keep], cols[keep]


@dataclass
class HeatmapCodec:
    """One Gaussian heatmap per landmark, peak 1, on a grid ``stride`` times coarser than the input.

    Output pixel ``j`` has its centre at input coordinate ``(j + 0.5)·stride − 0.5``. ``decode`` takes
    the arg-max and refines it by a 3-point parabola fit on the log-heatmap per axis, exact for a
    sampled Gaussian (the DARK idea); confidence is the peak value.
    input_size: ``(height, width)``; sigma in input pixels.
    """

    input_size: tuple[int, int] = (384, 160)
    stride: int = 1
    sigma: float = 2.0
    kind: str = "heatmap"

    @property
    def output_size(self) -> tuple[int, int]:
        return (self.input_size[0] // self.stride, self.input_size[1] // self.stride)

    def _to_grid(self, landmarks: np.ndarray) -> np.ndarray:
        return (np.asarray(landmarks, np.float64) + 0.5) / self.stride - 0.5

    def encode(self, landmarks: np.ndarray) -> np.ndarray:
        """``(19, 2)`` → heatmaps ``(h', w', 19)`` float32; NaN landmarks give an empty channel."""
        h, w = self.output_size
        g = self._to_grid(landmarks)
        s = self.sigma / self.stride
        xs = np.arange(w, dtype=np.float64)
        ys = np.arange(h, dtype=np.float64)
        gx = np.exp(-((xs[None, :] - g[:, :1]) ** 2) / (2 * s * s))  # (19, w)
        gy = np.exp(-((ys[None, :] - g[:, 1:]) ** 2) / (2 * s * s))  # (19, h)
        heat = np.einsum("kh,kw->hwk", gy, gx)
        heat[..., ~np.isfinite(g).all(1)] = 0.0
        return heat.astype(np.float32)

    def decode(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps ``(h', w', 19)`` → ``(landmarks (19, 2) input px, confidence (19,))``."""
        heat = np.asarray(output)
        h, w, k = heat.shape
        arg = heat.reshape(-1, k).argmax(0)  # no float64 copy of the whole map: only 5 values per channel
        py, px = np.divmod(arg, w)
        ch = np.arange(k)

        def at(y, x):
            return np.log(np.maximum(heat[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1), ch].astype(np.float64), 1e-10))

        conf = heat[py, px, ch].astype(np.float64)
        c, l_, r_, u_, d_ = at(py, px), at(py, px - 1), at(py, px + 1), at(py - 1, px), at(py + 1, px)
        den_x = l_ - 2 * c + r_
        den_y = u_ - 2 * c + d_
        ok_x = (px > 0) & (px < w - 1) & (den_x < 0)
        ok_y = (py > 0) & (py < h - 1) & (den_y < 0)
        dx = np.where(ok_x, 0.5 * (l_ - r_) / np.where(ok_x, den_x, -1.0), 0.0)
        dy = np.where(ok_y, 0.5 * (u_ - d_) / np.where(ok_y, den_y, -1.0), 0.0)
        grid = np.stack([px + np.clip(dx, -0.5, 0.5), py + np.clip(dy, -0.5, 0.5)], axis=1)
        landmarks = (grid + 0.5) * self.stride - 0.5
        landmarks[conf <= 0] = np.nan
        return landmarks, np.clip(conf, 0.0, 1.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


@dataclass
class RegressionCodec:
    """38 numbers ``x1, y1, …, x19, y19`` (the CSV order).

    ``normalize=False`` is the study's target (raw pixel coordinates of the model input, which for
    its Inception preset is the 600×250 ROI); ``normalize=True`` maps pixel ``x`` to
    ``(x + 0.5) / width`` (0..1 across the image edges), the better-conditioned target.
    Regression gives no confidence: ``decode`` returns NaN confidence.
    """

    input_size: tuple[int, int] = (600, 250)
    normalize: bool = False
    kind: str = "regression"

    def _scale(self) -> np.ndarray:
        return np.array([self.input_size[1], self.input_size[0]], np.float64)

    def encode(self, landmarks: np.ndarray) -> np.ndarray:
        pts = np.asarray(landmarks, np.float64)
        if self.normalize:
            pts = (pts + 0.5) / self._scale()
        return pts.reshape(-1).astype(np.float32)

    def decode(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pts = np.asarray(output, np.float64).reshape(N_LANDMARKS, 2)
        if self.normalize:
            pts = pts * self._scale() - 0.5
        return pts, np.full(N_LANDMARKS, np.nan)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


CODECS = {"mask": MaskCodec, "heatmap": HeatmapCodec, "regression": RegressionCodec}


def codec_from_dict(d: dict):
    """Rebuild a codec from its manifest entry (``{"kind": ..., **fields}``)."""
    d = dict(d)
    kind = d.get("kind")
    if kind not in CODECS:
        raise ValueError(f"unknown codec kind {kind!r}; expected one of {sorted(CODECS)}")
    if "input_size" in d:
        d["input_size"] = tuple(d["input_size"])
    if "roi_size" in d:
        d["roi_size"] = tuple(d["roi_size"])
    return CODECS[kind](**d)

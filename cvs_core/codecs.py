"""Landmark ↔ training-target codecs, shared by training and inference (MMPose's codec idea).

All codecs work in the *model-input* frame: landmarks ``(19, 2)`` as float ``(x, y)`` pixels of the
model input, pixel-centre convention (integer ``i`` is the centre of pixel ``i``; see
``cvs_core.preprocess``). ``encode`` makes one target; ``decode`` turns one raw model output back into
``(landmarks (19, 2), confidence (19,))``. Undetected landmarks come back as NaN with confidence 0
(except ``HeatmapCodec(shape_prior=True)``, which returns the fitted shape's point there, with
confidence 0: see :meth:`HeatmapCodec.decode_shape_prior`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Protocol

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from cvs_core.landmarks import MEAN_SHAPE_ROI, N_LANDMARKS, ROI_SIZE
from cvs_core.preprocess import apply_affine, invert_affine, resize_affine
from cvs_core.shape_model import shape_basis, similarity_fit, similarity_matrix


class Codec(Protocol):
    """What training and inference need from a codec (``MaskCodec``, ``HeatmapCodec``,
    ``RegressionCodec``). All coordinates are model-input pixels ``(x, y)``, pixel-centre convention.

    kind: ``"mask"``, ``"heatmap"`` or ``"regression"`` (the manifest's ``codec.kind``).
    input_size: ``(height, width)`` of the model input.
    """

    kind: str
    input_size: tuple[int, int]

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one raw model output (no batch axis): ``(h, w, 1)``, ``(h', w', 19)`` or ``(38,)``."""

    def encode(self, landmarks: np.ndarray) -> np.ndarray:
        """Landmarks ``(19, 2)`` (NaN rows allowed) → one training target shaped ``output_shape``."""

    def decode(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One raw output shaped ``output_shape`` → ``(landmarks (19, 2), confidence (19,))``;
        undetected landmarks NaN (confidence 0), regression confidence NaN."""

    def to_dict(self) -> dict:
        """JSON-ready fields, ``kind`` included; :func:`codec_from_dict` inverts it."""


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

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one raw model output: ``(h, w, 1)``."""
        return (*self.input_size, 1)

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
        new_m = similarity_matrix(*similarity_fit(ref[rows], pts[cols]))
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


# Vertebra groups of the 19 landmarks (0-based): C2 inferior border, C3, C4 (docs/architecture.md#the-19-landmarks).
_GROUPS = np.array([0] * 3 + [1] * 8 + [2] * 8)


@dataclass
class HeatmapCodec:
    """One Gaussian heatmap per landmark, peak 1, on a grid ``stride`` times coarser than the input.

    Output pixel ``j`` has its centre at input coordinate ``(j + 0.5)·stride − 0.5``. ``decode`` takes
    the arg-max and refines it by a 3-point parabola fit on the log-heatmap per axis, exact for a
    sampled Gaussian (the DARK idea); confidence is the peak value.
    input_size: ``(height, width)``; sigma in input pixels.

    ``shape_prior=True`` decodes with a shape constraint instead of 19 independent arg-maxes, for
    images where a channel's strongest peak sits on a neighbouring landmark's blob (identity
    swaps): see :meth:`decode_shape_prior`. ``encode`` ignores the flag.
    """

    input_size: tuple[int, int] = (384, 160)
    stride: int = 1
    sigma: float = 2.0
    kind: str = "heatmap"
    shape_prior: bool = False
    # Shape-prior decoding parameters: fields, so they reach the manifest and the prediction-cache
    # key; manifests written before they were fields decode with these defaults (the same values).
    prior_top_k: int = 4             # candidates kept per channel
    prior_floor: float = 0.05        # minimum peak value of a candidate
    prior_nms_radius: float = 3.0    # input px: weaker peaks of the same channel this close are dropped
    prior_sigmas: tuple[float, ...] = (0.8, 0.5, 0.35, 0.35)  # annealed σ, fractions of the mean landmark spacing
    prior_clash_radius: float = 1.5  # input px: two channels' picks this close are one peak; the weaker one is dropped
    prior_gate: float = 2.5          # a channel's pick must lie within prior_gate·σ_final of the fitted shape
    prior_noise_px: float = 1.0      # landmark scatter the PCA shape model leaves unexplained (prior strength)

    @property
    def output_size(self) -> tuple[int, int]:
        return (self.input_size[0] // self.stride, self.input_size[1] // self.stride)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one raw model output: ``(h', w', 19)``."""
        return (*self.output_size, N_LANDMARKS)

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

    @staticmethod
    def _refine(heat: np.ndarray, py: np.ndarray, px: np.ndarray, ch: np.ndarray) -> np.ndarray:
        """Sub-pixel peaks ``(M, 2)`` grid ``(x, y)`` of integer peaks ``(py, px)`` in channels ``ch``:
        3-point parabola on the log-heatmap per axis, shift clipped to ±0.5 px."""
        h, w, _ = heat.shape

        def at(y, x):
            return np.log(np.maximum(heat[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1), ch].astype(np.float64), 1e-10))

        c, l_, r_, u_, d_ = at(py, px), at(py, px - 1), at(py, px + 1), at(py - 1, px), at(py + 1, px)
        den_x = l_ - 2 * c + r_
        den_y = u_ - 2 * c + d_
        ok_x = (px > 0) & (px < w - 1) & (den_x < 0)
        ok_y = (py > 0) & (py < h - 1) & (den_y < 0)
        dx = np.where(ok_x, 0.5 * (l_ - r_) / np.where(ok_x, den_x, -1.0), 0.0)
        dy = np.where(ok_y, 0.5 * (u_ - d_) / np.where(ok_y, den_y, -1.0), 0.0)
        return np.stack([px + np.clip(dx, -0.5, 0.5), py + np.clip(dy, -0.5, 0.5)], axis=1)

    def decode(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps ``(h', w', 19)`` → ``(landmarks (19, 2) input px, confidence (19,))``."""
        if self.shape_prior:
            return self.decode_shape_prior(output)
        return self._decode_argmax(output)

    def _decode_argmax(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        heat = np.asarray(output)
        h, w, k = heat.shape
        arg = heat.reshape(-1, k).argmax(0)  # no float64 copy of the whole map: only 5 values per channel
        py, px = np.divmod(arg, w)
        ch = np.arange(k)
        conf = heat[py, px, ch].astype(np.float64)
        landmarks = (self._refine(heat, py, px, ch) + 0.5) * self.stride - 0.5
        landmarks[conf <= 0] = np.nan
        return landmarks, np.clip(conf, 0.0, 1.0)

    def candidates(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per channel the ``prior_top_k`` strongest local maxima (3×3, value ≥ ``prior_floor``, weaker ones
        within ``prior_nms_radius`` dropped), sub-pixel refined.

        Returns ``(points (19, K) complex x + iy input px, values (19, K))``; empty slots have value 0
        (and point NaN), slots sorted by decreasing value.
        """
        heat = np.ascontiguousarray(output, dtype=np.float32)
        h, w, k = heat.shape
        flat = heat.ravel()
        idx = np.flatnonzero(flat >= self.prior_floor)
        yx, ch = np.divmod(idx, k)
        y, x = np.divmod(yx, w)
        v = flat[idx]
        keep = np.ones(len(idx), bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    ny, nx = np.clip(y + dy, 0, h - 1), np.clip(x + dx, 0, w - 1)
                    keep &= v >= flat[(ny * w + nx) * k + ch]
        y, x, ch, v = y[keep], x[keep], ch[keep], v[keep]
        order = np.lexsort((-v, ch))
        y, x, ch, v = y[order], x[order], ch[order], v[order]
        pts = self._refine(heat, y, x, ch)
        pts = (pts + 0.5) * self.stride - 0.5
        z = pts[:, 0] + 1j * pts[:, 1]
        points = np.full((k, self.prior_top_k), np.nan, complex)
        values = np.zeros((k, self.prior_top_k))
        starts = np.searchsorted(ch, np.arange(k + 1))
        r2 = self.prior_nms_radius
        for c in range(k):
            zc, vc = z[starts[c]:starts[c + 1]], v[starts[c]:starts[c + 1]]
            n = 0
            for zi, vi in zip(zc, vc):  # few peaks per channel: greedy radius suppression
                if n and (np.abs(points[c, :n] - zi) < r2).any():
                    continue
                points[c, n], values[c, n] = zi, vi
                n += 1
                if n == self.prior_top_k:
                    break
        return points, values

    def decode_shape_prior(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shape-constrained decoding: heatmaps ``(h', w', 19)`` → ``(landmarks (19, 2), confidence (19,))``.

        1. Candidates: per channel the top-K local maxima (:meth:`candidates`).
        2. Reference: ``MEAN_SHAPE_ROI`` stretched from the 600×250 ROI into the model input.
        3. Robust start (RANSAC-like): every pair of strong candidates from two different vertebrae
           defines a similarity ``z ↦ a·z + b`` of the reference (scale 0.5–2, rotation ≤ 35°); each
           is scored by ``Σ_channel max_candidate value·exp(−d²/2σ²)`` (d: distance to the aligned
           reference point, σ = 0.8 × mean landmark spacing) and the best one is kept, so a few
           wrong arg-maxes cannot drag the fit.
        4. Annealing: σ shrinks (0.8 → 0.35 spacing); each step picks per channel the candidate
           maximising that score and refits, weighted by the score — a similarity first, then the
           reference plus 4 PCA shape modes (``cvs_core.synth``) with a Gaussian prior on the modes.
        5. Output: each channel's pick if it lies within 2.5σ_final of the fitted shape (confidence =
           its peak value); otherwise — no candidate near, or an empty channel — the fitted shape's
           point with **confidence 0** (a finite, shape-consistent guess, flagged by its confidence;
           not NaN). Two channels picking the same peak keep only the better one.
        Fewer than 3 channels with any peak: falls back to the plain arg-max decoding.
        """
        heat = np.asarray(output)
        k = heat.shape[2]
        points, values = self.candidates(heat)
        present = values[:, 0] > 0
        if k != N_LANDMARKS or present.sum() < 3:
            return self._decode_argmax(heat)
        basis, prior_sd, spacing = shape_basis(tuple(self.input_size))
        ref = basis[0]
        pts0 = np.where(values > 0, points, 0)

        def score(aligned, sigma):  # aligned (..., 19) → per-candidate score (..., 19, K)
            d2 = np.abs(pts0 - aligned[..., None]) ** 2
            return values * np.exp(-d2 / (2 * sigma * sigma))

        # --- robust start: similarity hypotheses from candidate pairs of different vertebrae
        sigma0 = self.prior_sigmas[0] * spacing
        top = np.argwhere(values[:, :2] > 0)  # (M, 2): channel, slot of the 2 strongest candidates
        ci, si = top[:, 0], top[:, 1]
        i, j = np.triu_indices(len(top), 1)
        i, j = i[_GROUPS[ci[i]] != _GROUPS[ci[j]]], j[_GROUPS[ci[i]] != _GROUPS[ci[j]]]
        dp = ref[ci[i]] - ref[ci[j]]
        a = (points[ci[i], si[i]] - points[ci[j], si[j]]) / dp
        b = points[ci[i], si[i]] - a * ref[ci[i]]
        ok = (np.abs(a) > 0.5) & (np.abs(a) < 2.0) & (np.abs(np.angle(a)) < np.deg2rad(35))
        a, b = a[ok], b[ok]
        # plus the fit to all arg-maxes (the right answer when nothing is swapped)
        a_all, b_all = similarity_fit(ref[present], points[present, 0], values[present, 0])
        a, b = np.append(a, a_all), np.append(b, b_all)
        totals = score(a[:, None] * ref + b[:, None], sigma0).max(-1).sum(-1)
        best = int(totals.argmax())
        shape = a[best] * ref + b[best]
        scale = abs(a[best])

        # --- annealing: pick candidates, refit (similarity, then similarity + PCA modes)
        rows = np.arange(k)
        for step, frac in enumerate(self.prior_sigmas):
            sigma = frac * spacing
            s = score(shape, sigma)
            pick = s.argmax(1)
            wgt = s[rows, pick]
            if (wgt > 1e-6).sum() < 3:
                break
            q = pts0[rows, pick]
            if step < 2:
                a1, b1 = similarity_fit(ref, q, wgt)
                shape, scale = a1 * ref + b1, abs(a1)
            else:
                shape = self._fit_modes(basis, prior_sd, q, wgt, scale)

        sigma = self.prior_sigmas[-1] * spacing
        s = score(shape, sigma)
        pick = s.argmax(1)
        chosen = points[rows, pick]
        conf = values[rows, pick]
        ok = (conf > 0) & (np.abs(chosen - shape) <= self.prior_gate * sigma)
        # two channels on the same peak: keep the better-scoring one
        sc = np.where(ok, s[rows, pick], -1.0)
        for c in np.argsort(-sc):
            if ok[c]:
                clash = ok & (np.abs(chosen - chosen[c]) < self.prior_clash_radius)
                clash[c] = False
                ok &= ~clash
        out = np.where(ok, chosen, shape)
        landmarks = np.stack([out.real, out.imag], axis=1)
        return landmarks, np.where(ok, np.clip(conf, 0.0, 1.0), 0.0)

    def _fit_modes(self, basis: np.ndarray, prior_sd: np.ndarray, q: np.ndarray, w: np.ndarray,
                   scale: float) -> np.ndarray:
        """Weighted fit ``q ≈ c0·ref + Σ c_i·mode_i + t`` (complex c, 19 points) with a Gaussian prior
        ``c_i ~ N(0, (scale·sd_i)²)`` on the modes; returns the fitted shape ``(19,)`` complex."""
        a_mat = np.concatenate([basis, np.ones((1, basis.shape[1]))]).T  # (19, 6)
        aw = a_mat * w[:, None]
        lhs = a_mat.conj().T @ aw
        sd = np.append(prior_sd, 0.0) * scale
        pen = np.where(sd > 0, (self.prior_noise_px / np.maximum(sd, 1e-9)) ** 2, 0.0)
        lhs = lhs + np.diag(pen)
        coef = np.linalg.solve(lhs, aw.conj().T @ q)
        return a_mat @ coef

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

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one raw model output: ``(38,)``."""
        return (2 * N_LANDMARKS,)

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


def codec_from_dict(d: dict) -> Codec:
    """Rebuild a codec from its manifest entry (``{"kind": ..., **fields}``); fields a manifest
    lacks (older manifests) take the class defaults."""
    d = dict(d)
    kind = d.get("kind")
    if kind not in CODECS:
        raise ValueError(f"unknown codec kind {kind!r}; expected one of {sorted(CODECS)}")
    cls = CODECS[kind]
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"{kind} codec: unknown field(s) {sorted(unknown)}")
    for key, value in d.items():  # JSON lists back to the tuples the fields hold
        if isinstance(value, list):
            d[key] = tuple(value)
    return cls(**d)

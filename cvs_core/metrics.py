"""Landmark and mask metrics as plain functions on arrays (docs/architecture.md#metrics).

Conventions
-----------
* Landmarks are ``(x, y)`` float pixels shaped ``(N, K, 2)`` (N images, K = 19 landmarks, axis
  order image → landmark → coordinate). A single image ``(K, 2)`` is treated as ``N = 1``.
* Errors are Euclidean radial errors ``e[i, k]`` in the landmarks' pixel frame, shaped ``(N, K)``.
  Every predicted landmark is compared with the *same-index* true landmark.
* Pixel spacing (``spacing_mm``) is mm per pixel: a scalar for the whole set or one value per
  image, shaped ``(N,)``. It must be > 0.
* **Missing predictions.** A prediction with a NaN coordinate (the model found nothing) gets the
  error ``+inf``. It is never dropped: SDR / PCK / AUC count it as a failure. Means (MRE, SD,
  coordinate MAE) cannot average an infinity, so they are taken over the finite errors and the
  number of missing landmarks is reported next to them as ``n_missing``. NaN in the *ground
  truth* is a data error and raises ``ValueError`` naming the image — unless
  ``missing_truth="skip"`` (label files that annotate only some landmarks, e.g. the 13-landmark
  scheme): then that landmark is **not scored**, its error is NaN, and every rate and mean is
  taken over the scored landmarks only (NaN error = not scored; ``inf`` = missing prediction = failure).
* SDs use ``ddof=0`` (population SD of the errors at hand), so a single error has SD 0.

The study's own scores are reproduced by :func:`legacy_unet_pck` and :func:`legacy_inception_pck`
only to compare with its table; they are not landmark-identity-aware PCKs (see their docstrings).

:class:`SortedErrors` sorts the errors once so that PCK at any threshold is a binary search
(O(log n) per query); it backs the app's threshold slider.
"""
from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

from cvs_core.fileio import json_float
from cvs_core.landmarks import VERTEBRA_POINTS

DICE_SMOOTH = 1e-7
SDR_RADII_MM = (2.0, 2.5, 3.0, 4.0)
PCK_UNITS = ("px", "mm", "c3")

__all__ = [
    "radial_errors", "mre", "sdr", "c3_width", "pck", "pck_per_landmark", "pck_curve", "pck_auc",
    "SortedErrors", "dice", "dice_loss_value", "coordinate_mae", "legacy_unet_pck",
    "legacy_inception_pck", "summarize", "validation_mre", "MISS_PENALTY_PX", "scored_rate",
]


# ----------------------------------------------------------------------------- helpers
def _as_batch(points, name: str) -> np.ndarray:
    """``(K, 2)`` or ``(N, K, 2)`` → float ``(N, K, 2)``."""
    a = np.asarray(points, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"{name} must be shaped (N, K, 2) or (K, 2), got {a.shape}")
    return a


def _as_errors(errors) -> np.ndarray:
    """Errors as float ``(N, K)``; a 1-D vector is one image ``(1, K)``."""
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim == 1:
        e = e[None]
    if e.ndim != 2:
        raise ValueError(f"errors must be shaped (N, K), got {e.shape}")
    return e


def _check_spacing(spacing_mm, n_images: int) -> np.ndarray:
    """Validate a spacing (scalar or ``(N,)``) and return it shaped ``(N, 1)`` for broadcasting."""
    s = np.asarray(spacing_mm, dtype=np.float64)
    if s.ndim == 0:
        s = np.full(n_images, float(s))
    s = s.reshape(-1)
    if s.shape[0] != n_images:
        raise ValueError(f"spacing_mm must be a scalar or one value per image ({n_images}), got {s.shape[0]}")
    bad = ~(np.isfinite(s) & (s > 0))
    if bad.any():
        raise ValueError(f"pixel spacing must be > 0 mm/px, got {s[bad][0]:g}")
    return s[:, None]


def _scaled(errors: np.ndarray, unit: str, spacing_mm, c3_widths) -> np.ndarray:
    """Express ``(N, K)`` pixel errors in ``unit``: px (as is), mm (× spacing) or c3 (÷ C3 width)."""
    if unit == "px":
        return errors
    if unit == "mm":
        if spacing_mm is None:
            raise ValueError("unit='mm' needs spacing_mm (mm per pixel)")
        return errors * _check_spacing(spacing_mm, errors.shape[0])
    if unit == "c3":
        if c3_widths is None:
            raise ValueError("unit='c3' needs c3_widths (N,) from c3_width(true)")
        w = np.asarray(c3_widths, dtype=np.float64).reshape(-1)
        if w.shape[0] != errors.shape[0]:
            raise ValueError(f"c3_widths must have one value per image ({errors.shape[0]}), got {w.shape[0]}")
        if not (np.isfinite(w) & (w > 0)).all():
            raise ValueError("c3_widths must be finite and > 0 px")
        return errors / w[:, None]
    raise ValueError(f"unit must be one of {PCK_UNITS}, got {unit!r}")


def _finite_mean_sd(values: np.ndarray, axis=None):
    """Mean and population SD over the finite entries (NaN where there are none)."""
    v = np.where(np.isfinite(values), values, np.nan)
    count = np.sum(~np.isnan(v), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.nansum(v, axis=axis)
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        dev = np.where(np.isnan(v), 0.0, v - (mean if axis is None else np.expand_dims(mean, axis)))
        sd = np.where(count > 0, np.sqrt(np.sum(dev**2, axis=axis) / np.maximum(count, 1)), np.nan)
    return mean, sd


# ----------------------------------------------------------------------------- landmark errors
def radial_errors(pred, true, missing_truth: str = "error") -> np.ndarray:
    """Euclidean error of each predicted landmark against the same-index true one.

    Parameters
    ----------
    pred, true : (N, K, 2) or (K, 2) array of (x, y) pixels, in the same image frame.

    missing_truth : "error" (NaN truth raises) or "skip" (that landmark is not scored: error NaN).

    Returns
    -------
    (N, K) float array of errors in pixels. A prediction with a NaN (or infinite) coordinate gets
    ``+inf`` — a failure that every rate counts and no mean silently drops (see module notes).
    An unscored landmark (``missing_truth="skip"``) gets NaN.

    Raises
    ------
    ValueError if the shapes differ or the ground truth contains NaN (the message names the
    0-based image index).
    """
    p = _as_batch(pred, "pred")
    t = _as_batch(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred and true shapes differ: {p.shape} vs {t.shape}")
    if missing_truth not in ("error", "skip"):
        raise ValueError(f"missing_truth must be 'error' or 'skip', got {missing_truth!r}")
    bad_truth = ~np.isfinite(t).all(axis=(1, 2))
    if bad_truth.any() and missing_truth == "error":
        idx = np.flatnonzero(bad_truth)
        raise ValueError(f"ground truth has NaN/inf coordinates in image index {int(idx[0])}"
                         + (f" (and {len(idx) - 1} more)" if len(idx) > 1 else ""))
    e = np.sqrt(np.sum((p - t) ** 2, axis=-1))
    e[~np.isfinite(p).all(axis=-1)] = np.inf
    e[~np.isfinite(t).all(axis=-1)] = np.nan  # not scored (only reachable with missing_truth="skip")
    return e


def scored_rate(ok: np.ndarray, e: np.ndarray, axis=None):
    """Share of ``ok`` over the scored (non-NaN) entries of ``e``; NaN where nothing is scored."""
    scored = ~np.isnan(e)
    n = np.sum(scored, axis=axis)
    hits = np.sum(ok & scored, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(n > 0, hits / np.maximum(n, 1), np.nan)
    return float(out) if np.ndim(out) == 0 else out


def mre(errors, spacing_mm=None) -> dict:
    """Mean radial error with SDs, per landmark and per image.

    Parameters
    ----------
    errors : (N, K) pixel errors from :func:`radial_errors` (``inf`` = missing prediction).
    spacing_mm : None (report pixels), a scalar, or (N,) mm per pixel per image.

    Returns
    -------
    dict with ``mean`` and ``sd`` (over all finite errors), ``per_landmark`` and
    ``per_landmark_sd`` (K,), ``per_image`` (N,) — numpy arrays / floats in ``unit`` ("px" or
    "mm") — plus ``n_missing`` (number of infinite errors left out of the means) and ``unit``.
    A landmark or image with no finite error gets NaN.
    """
    e = _as_errors(errors)
    unit = "px"
    if spacing_mm is not None:
        e = e * _check_spacing(spacing_mm, e.shape[0])
        unit = "mm"
    mean, sd = _finite_mean_sd(e)
    per_lm, per_lm_sd = _finite_mean_sd(e, axis=0)
    per_img, _ = _finite_mean_sd(e, axis=1)
    return dict(mean=float(mean), sd=float(sd), per_landmark=per_lm, per_landmark_sd=per_lm_sd,
                per_image=per_img, n_missing=int(np.sum(np.isinf(e))), unit=unit)


MISS_PENALTY_PX = 100.0


def validation_mre(errors, miss_px: float = MISS_PENALTY_PX) -> float:
    """The validation MRE used to pick checkpoints (training) and reported as
    ``validation_mre_px`` (:func:`summarize`): the mean of ``errors (N, K)`` (ROI px) where every
    missed landmark (an ``inf`` or NaN error) counts as ``miss_px`` (100 ROI px ≈ 25 mm at the
    nominal spacing) instead of being left out. Unlike :func:`mre`, a model cannot lower it by
    giving up on hard landmarks. NaN for an empty array."""
    e = np.asarray(errors, dtype=np.float64)
    if e.size == 0:
        return float("nan")
    return float(np.where(np.isfinite(e), e, miss_px).mean())


def sdr(errors, radii_mm: Iterable[float] = SDR_RADII_MM, spacing_mm=None) -> dict:
    """Success detection rate (ISBI 2015): share of errors ≤ r mm, for each radius.

    Parameters
    ----------
    errors : (N, K) pixel errors (``inf`` counts as a failure).
    radii_mm : radii in mm.
    spacing_mm : scalar or (N,) mm per pixel — required (pass 1.0 if ``errors`` are already mm).

    Returns
    -------
    dict ``str(float(r)) → fraction`` in [0, 1], e.g. ``{"2.0": 0.93, "2.5": 0.97, …}``.
    """
    if spacing_mm is None:
        raise ValueError("sdr needs spacing_mm (mm per pixel); pass 1.0 if the errors are already in mm")
    e = _scaled(_as_errors(errors), "mm", spacing_mm, None)
    return {str(float(r)): scored_rate(e <= float(r), e) for r in radii_mm}


def c3_width(true) -> np.ndarray:
    """C3 body width |C3mp − C3ma| (landmarks 7 and 8), the PCKh-style normaliser.

    ``true`` : (N, 19, 2) or (19, 2) → (N,) widths in pixels.
    """
    t = _as_batch(true, "true")
    c3 = VERTEBRA_POINTS["C3"]
    return np.linalg.norm(t[:, c3["mp"] - 1] - t[:, c3["ma"] - 1], axis=-1)


def pck(errors, threshold: float, unit: str = "px", spacing_mm=None, c3_widths=None) -> float:
    """Percentage of correct keypoints as a fraction: share of errors ≤ ``threshold``.

    Parameters
    ----------
    errors : (N, K) pixel errors (``inf`` counts as a failure).
    threshold : in ``unit``.
    unit : "px"; "mm" (needs ``spacing_mm``, scalar or (N,)); or "c3" — a fraction of each
        image's C3 body width (needs ``c3_widths`` (N,) from :func:`c3_width`).
    """
    e = _scaled(_as_errors(errors), unit, spacing_mm, c3_widths)
    return scored_rate(e <= threshold, e)


def pck_per_landmark(errors, threshold: float, unit: str = "px", spacing_mm=None, c3_widths=None) -> np.ndarray:
    """PCK per landmark: (N, K) errors → (K,) fractions (arguments as :func:`pck`)."""
    e = _scaled(_as_errors(errors), unit, spacing_mm, c3_widths)
    return scored_rate(e <= threshold, e, axis=0)


def pck_curve(errors, thresholds, unit: str = "px", spacing_mm=None, c3_widths=None) -> np.ndarray:
    """PCK at each threshold: errors (N, K) (any shape works), thresholds (T,) → (T,) fractions.

    Non-decreasing in the threshold. Computed by sorting once (see :class:`SortedErrors`).
    """
    return SortedErrors(errors, unit=unit, spacing_mm=spacing_mm, c3_widths=c3_widths).pck(thresholds)


def pck_auc(errors, max_threshold: float, unit: str = "px", spacing_mm=None, c3_widths=None) -> float:
    """Normalised area under the PCK curve on [0, max_threshold], in [0, 1].

    Exact, not a Riemann sum: ∫₀ᵀ PCK(t) dt / T = mean over errors of clip(1 − e/T, 0, 1).
    1.0 means every error is 0; a missing prediction (``inf``) contributes 0.
    """
    if not max_threshold > 0:
        raise ValueError(f"max_threshold must be > 0, got {max_threshold}")
    e = _scaled(_as_errors(errors), unit, spacing_mm, c3_widths)
    with np.errstate(over="ignore"):  # e / T may overflow to inf for tiny T: it clips to 0 as it should
        v = np.clip(1.0 - e / max_threshold, 0.0, 1.0)
    v = v[~np.isnan(e)]  # unscored landmarks
    return float(np.mean(v)) if v.size else float("nan")


class SortedErrors:
    """Errors sorted once so that PCK at any threshold is a binary search.

    Build: O(n log n) for ``n`` errors. Query: ``pck(t)`` is one ``np.searchsorted`` on the
    flat sorted array, O(log n). For ``(N, K)`` errors the build also keeps a cumulative
    per-landmark count table ((n + 1) × K int32), so ``pck_per_landmark(t)`` is the same single
    search plus reading one row, O(log n + K); above ``MAX_TABLE_CELLS`` it falls back to one
    search per sorted column, O(K log N).
    The app's threshold slider re-scores with these instead of re-comparing every error.

    Parameters
    ----------
    errors : pixel errors of any shape; a 2-D ``(N, K)`` array also supports per-landmark
        queries. ``inf`` counts as a failure at every threshold; NaN is not scored (see below).
    unit, spacing_mm, c3_widths : as in :func:`pck` (applied once, at build time; needs 2-D errors
        for "mm" with per-image spacing and for "c3").
    NaN errors are not scored (ground truth missing, ``radial_errors(..., missing_truth="skip")``):
    they are left out of every denominator.
    """

    # Above this many cells the per-landmark count table is not built and per-landmark queries
    # search each column instead (K binary searches; keeps memory bounded for huge sets).
    MAX_TABLE_CELLS = 4_000_000

    def __init__(self, errors, unit: str = "px", spacing_mm=None, c3_widths=None):
        e = np.asarray(errors, dtype=np.float64)
        if unit != "px":
            e = _scaled(_as_errors(e), unit, spacing_mm, c3_widths)
        skip = np.isnan(e)
        e = np.where(skip, np.inf, e)
        self.unit = unit
        self.shape = e.shape
        self.n = int(e.size - skip.sum())
        self._n_col = (e.shape[0] - skip.sum(axis=0)) if e.ndim == 2 else None
        order = np.argsort(e, axis=None)
        self._flat = e.reshape(-1)[order]
        finite = self._flat[np.isfinite(self._flat)]
        self._cumsum = np.concatenate([[0.0], np.cumsum(finite)])
        self._columns = None
        self._col_counts = None
        if e.ndim == 2:
            n, k = e.shape
            if (n * k + 1) * k <= self.MAX_TABLE_CELLS:
                # row j: per column, how many of the j smallest errors belong to it, so one binary
                # search on the flat array reads all K per-landmark counts at once.
                table = np.zeros((n * k + 1, k), dtype=np.int32)
                table[np.arange(1, n * k + 1), order % k] = 1
                self._col_counts = np.cumsum(table, axis=0, out=table)
            else:
                self._columns = np.sort(e, axis=0)

    def pck(self, threshold):
        """Share of errors ≤ threshold. Scalar → float; array (T,) → (T,) array."""
        counts = np.searchsorted(self._flat, threshold, side="right")
        if np.ndim(counts) == 0:
            return float(counts) / self.n if self.n else float("nan")
        return counts / self.n if self.n else np.full(np.shape(counts), np.nan)

    __call__ = pck

    def curve(self, thresholds) -> np.ndarray:
        """PCK at each threshold: (T,) → (T,)."""
        return np.asarray(self.pck(np.asarray(thresholds, dtype=np.float64)), dtype=np.float64)

    def pck_per_landmark(self, threshold: float) -> np.ndarray:
        """Per-column PCK, (K,), for errors built from an (N, K) array."""
        if len(self.shape) != 2:
            raise ValueError(f"per-landmark PCK needs (N, K) errors, built from shape {self.shape}")
        n, k = self.shape
        if n == 0:
            return np.full(k, np.nan)
        denom = np.where(self._n_col > 0, self._n_col, np.nan)
        if self._col_counts is not None:
            j = int(np.searchsorted(self._flat, threshold, side="right"))
            return self._col_counts[j] / denom
        counts = [np.searchsorted(col, threshold, side="right") for col in self._columns.T]
        return np.asarray(counts, dtype=np.float64) / denom

    def auc(self, max_threshold: float) -> float:
        """Exact normalised PCK area on [0, max_threshold] (as :func:`pck_auc`), O(log n)."""
        if not max_threshold > 0:
            raise ValueError(f"max_threshold must be > 0, got {max_threshold}")
        k = int(np.searchsorted(self._flat, max_threshold, side="right"))
        return float((k - self._cumsum[k] / max_threshold) / self.n) if self.n else float("nan")


# ----------------------------------------------------------------------------- masks
def _mask_batch(mask) -> np.ndarray:
    """(H, W) → (1, H, W); (N, H, W) as is; (N, H, W, 1) → (N, H, W)."""
    m = np.asarray(mask, dtype=np.float64)
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"mask must be (H, W), (N, H, W) or (N, H, W, 1), got {np.shape(mask)}")
    return m


def dice(pred_mask, true_mask, threshold: float = 0.5) -> float:
    """Thresholded Dice of masks/heatmaps, mean over images.

    Both masks are binarised with ``> threshold`` (the study's target masks are bilinear-resized
    squares with soft edges), then per image dice = (2·Σ t·p + 1e-7) / (Σ t + Σ p + 1e-7), so two
    empty masks score 1.

    pred_mask, true_mask : (H, W), (N, H, W) or (N, H, W, 1) → float (mean of the N per-image dice).
    """
    p = _mask_batch(pred_mask) > threshold
    t = _mask_batch(true_mask) > threshold
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {t.shape}")
    inter = np.sum(p & t, axis=(1, 2))
    total = np.sum(p, axis=(1, 2)) + np.sum(t, axis=(1, 2))
    return float(np.mean((2.0 * inter + DICE_SMOOTH) / (total + DICE_SMOOTH)))


def dice_loss_value(pred, true) -> float:
    """The study's soft Dice loss, 1 − (2·Σ t·p + 1e-7) / (Σ t + Σ p + 1e-7).

    Not thresholded; the sums run over the whole batch flattened (as the Keras loss does on a
    batch tensor). ``pred``, ``true``: arrays of the same shape, any rank.
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {t.shape}")
    return float(1.0 - (2.0 * np.sum(t * p) + DICE_SMOOTH) / (np.sum(t) + np.sum(p) + DICE_SMOOTH))


# ----------------------------------------------------------------------------- coordinates
def coordinate_mae(pred, true, missing_truth: str = "error") -> float:
    """Mean absolute error over the 2·K coordinates (the study's MAE metric), in pixels.

    pred, true : (N, K, 2) or (K, 2). Landmarks whose prediction is missing (any NaN coordinate)
    are left out — both of their coordinates — and counted in :func:`summarize`'s ``n_missing``
    (the same count as the ``inf`` errors of :func:`radial_errors`). NaN if nothing is left.
    NaN in the ground truth raises ``ValueError``.
    """
    p = _as_batch(pred, "pred")
    t = _as_batch(true, "true")
    radial_errors(p, t, missing_truth)  # validates shapes and ground truth
    ok = np.isfinite(p).all(axis=-1) & np.isfinite(t).all(axis=-1)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(p[ok] - t[ok])))


# ----------------------------------------------------------------------------- legacy (study)
def _blob_centroids(mask: np.ndarray, threshold: float) -> np.ndarray:
    binary = (mask > threshold).astype(np.uint8)
    n, _labels, _stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    return centroids[1:n]  # label 0 is the background; (n_blobs, 2) as (x, y)


def legacy_unet_pck(pred_masks, true_masks, threshold: float = 0.5, radius: float = 5) -> float:
    """LEGACY — the study's U-Net "PCK", reproduced only to compare with its table (docs/architecture.md#metrics).

    For each image, both masks are thresholded (``> threshold``) and split into connected
    components (``cv2.connectedComponentsWithStats``, 8-connectivity); a *predicted* blob counts as
    correct if its centroid is within ``radius`` px (≤) of ANY true blob's centroid. The score is
    (correct predicted blobs, summed over images) / (true blobs, summed over images).

    It ignores landmark identity (swapped landmarks still score 100%) and can exceed 1 (several
    predicted blobs near one true blob all count). Not a PCK in the usual sense.

    pred_masks, true_masks : (N, 256, 256) (or (256, 256) / (N, 256, 256, 1)) masks in [0, 1]
    at the U-Net's resized 256×256 resolution. Returns NaN when there are no true blobs.
    """
    p_all = _mask_batch(pred_masks)
    t_all = _mask_batch(true_masks)
    if p_all.shape != t_all.shape:
        raise ValueError(f"mask shapes differ: {p_all.shape} vs {t_all.shape}")
    correct = 0
    n_true = 0
    for p, t in zip(p_all, t_all):
        tc = _blob_centroids(t, threshold)
        pc = _blob_centroids(p, threshold)
        n_true += len(tc)
        if len(tc) and len(pc):
            d = np.linalg.norm(pc[:, None, :] - tc[None, :, :], axis=-1)
            correct += int(np.sum(d.min(axis=1) <= radius))
    return correct / n_true if n_true else float("nan")


def legacy_inception_pck(pred, true, radius_px: float = 40, missing_truth: str = "error") -> float:
    """LEGACY — the study's InceptionResNetV2 PCK (docs/architecture.md#metrics), reproduced only for comparison.

    Share of same-index landmark distances strictly < ``radius_px`` (40 ROI px ≈ 10 mm at the
    nominal 0.25 mm/px). pred, true : (N, K, 2) or (K, 2) ROI pixels; a missing prediction fails.
    """
    e = radial_errors(pred, true, missing_truth)
    return scored_rate(e < radius_px, e)


# ----------------------------------------------------------------------------- summary
def summarize(pred, true, spacing_mm, pck_threshold_mm: float = 2.0, auc_max_mm: float = 4.0,
              missing_truth: str = "error") -> dict:
    """One dict of the headline landmark metrics, JSON-serialisable (Python floats/ints).

    pred, true : (N, K, 2) or (K, 2) pixels; spacing_mm : scalar or (N,) mm per pixel.

    Keys: ``n_images``, ``n_landmarks``, ``n_missing`` (missing predictions, counted as failures
    and left out of the means), ``mre_px``, ``mre_mm``, ``validation_mre_px`` (misses counted as
    100 px, :func:`validation_mre`: the number training selects checkpoints by), ``sd`` (SD of errors in mm; also
    ``sd_px``), ``sdr`` {"2.0","2.5","3.0","4.0": fraction}, ``pck`` (fraction ≤
    ``pck_threshold_mm`` mm) with ``pck_threshold_mm``, ``pck_auc`` (normalised area on
    [0, ``auc_max_mm``] mm) with ``auc_max_mm``, ``coordinate_mae`` (px), ``spacing_mm``
    (mean spacing), ``n_scored`` (landmarks with a ground truth; all of them unless
    ``missing_truth="skip"``). A value that cannot be computed (e.g. every prediction missing) is None.
    """
    e = radial_errors(pred, true, missing_truth)
    px = mre(e)
    mm = mre(e, spacing_mm)
    s = _check_spacing(spacing_mm, e.shape[0])
    return dict(
        n_images=int(e.shape[0]),
        n_landmarks=int(e.shape[1]),
        n_missing=int(px["n_missing"]),
        n_scored=int(np.sum(~np.isnan(e))),
        mre_px=json_float(px["mean"]),
        mre_mm=json_float(mm["mean"]),
        validation_mre_px=json_float(validation_mre(e[~np.isnan(e)])),
        sd=json_float(mm["sd"]),
        sd_px=json_float(px["sd"]),
        sdr=sdr(e, SDR_RADII_MM, spacing_mm),
        pck=pck(e, pck_threshold_mm, unit="mm", spacing_mm=spacing_mm),
        pck_threshold_mm=float(pck_threshold_mm),
        pck_auc=pck_auc(e, auc_max_mm, unit="mm", spacing_mm=spacing_mm),
        auc_max_mm=float(auc_max_mm),
        coordinate_mae=json_float(coordinate_mae(pred, true, missing_truth)),
        spacing_mm=float(np.mean(s)),
    )

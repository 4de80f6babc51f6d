"""Test-time shifts: run a model on its input moved by a few pixels and combine the landmarks.

A regression model (InceptionResNetV2) reads the whole ROI and answers with 38 numbers; where the
ROI sits on a real image changes its answer by millimetres (the automatic ROI of a cephalogram from
another clinic is never placed exactly as in training). Running it on the input shifted by ±``step``
model px along both diagonals and taking the per-coordinate median of the shifted-back landmarks
averages that placement noise out. The heatmap U-Net is translation-equivariant already and lost
accuracy with it (a shifted copy that decodes another vertebra drags the median; measured in
``docs/benchmarks.md``), so a model opts in through its manifest:
``"inference": {"tta_step_px": 5}`` (0 or absent = off).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TestTimeShifts:
    """The centre and the four diagonal shifts of ``step_px`` model-input pixels (``step_px = 0``: the
    centre only, i.e. off)."""

    step_px: int = 0

    __test__ = False  # not a pytest test class despite the name

    def __post_init__(self):
        if not (isinstance(self.step_px, (int, np.integer)) and 0 <= self.step_px <= 64):
            raise ValueError(f"tta_step_px must be an integer in 0…64, got {self.step_px!r}")

    @classmethod
    def from_manifest(cls, manifest: dict) -> "TestTimeShifts":
        return cls(int((manifest.get("inference") or {}).get("tta_step_px", 0)))

    @property
    def offsets(self) -> np.ndarray:
        """``(K, 2)`` integer (dx, dy) model px; row 0 is the unshifted input."""
        s = int(self.step_px)
        if s == 0:
            return np.zeros((1, 2), int)
        return np.array([[0, 0], [-s, -s], [-s, s], [s, -s], [s, s]], int)


def shift_image(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``(h, w, c)`` → the same size, content moved by ``(dx, dy)`` px (x right, y down); the strip
    uncovered at the border repeats the edge row/column (as if the crop had moved on a flat image)."""
    h, w = image.shape[:2]
    if abs(dx) >= w or abs(dy) >= h:
        raise ValueError(f"shift ({dx}, {dy}) does not fit a {w}×{h} input")
    pad = ((max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))) + ((0, 0),) * (image.ndim - 2)
    padded = np.pad(image, pad, mode="edge")
    y0, x0 = max(-dy, 0), max(-dx, 0)
    return padded[y0:y0 + h, x0:x0 + w]


def shifted_batch(images: np.ndarray, shifts: TestTimeShifts) -> np.ndarray:
    """``(N, h, w, c)`` → ``(N·K, h, w, c)``: each image followed by its K shifted copies (K = 1: the
    batch itself)."""
    offsets = shifts.offsets
    if len(offsets) == 1:
        return images
    return np.stack([shift_image(img, int(dx), int(dy)) for img in images for dx, dy in offsets])


def combine(points: np.ndarray, shifts: TestTimeShifts) -> np.ndarray:
    """``(N·K, 19, 2)`` model-input px decoded from :func:`shifted_batch`'s output → ``(N, 19, 2)``:
    each copy's landmarks moved back by its shift, then the per-coordinate median over the K copies
    (NaN-aware: a landmark missing in some copies takes the median of the rest)."""
    offsets = shifts.offsets
    k = len(offsets)
    pts = np.asarray(points, np.float64).reshape(-1, k, *np.shape(points)[1:])
    if k == 1:
        return pts[:, 0]
    back = pts - offsets[None, :, None, :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": a landmark missing in every copy
        return np.nanmedian(back, axis=1)

"""What the CLAHE lab shows, computed without Streamlit: filtered image, difference, contrast measures.

Images are greyscale ``(H, W)`` uint8 throughout (row = y, column = x).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from cvs_core.preprocess import PreprocessConfig, apply_filters

DEFAULT_SETTINGS = dict(clahe=True, clahe_clip=2.0, clahe_tile=8, bilateral=False, bilateral_d=9,
                        bilateral_sigma_color=75.0, bilateral_sigma_space=75.0)
CLIP_EXPLAINED = (
    "CLAHE splits the image into *tile × tile* regions and equalises each one's histogram, so faint "
    "structures in a dark region get the full grey range. The **clip limit** caps how many pixels any grey "
    "level may hold before equalising (the excess is spread over all levels): a low clip (1–2) lifts local "
    "contrast gently; a high clip (8–10) stretches every tile fully and amplifies noise and film grain. "
    "The global SD can *drop* while edges get sharper, because CLAHE evens out the large bright/dark areas "
    "— the **local contrast** (the mean SD inside 15×15-px windows) is the better measure of what the "
    "models see at the vertebral edges.")


def settings_from(stored: dict | None) -> dict:
    """The lab's slider values: the saved settings over the defaults."""
    out = dict(DEFAULT_SETTINGS)
    out.update({k: v for k, v in (stored or {}).items() if k in DEFAULT_SETTINGS})
    return out


def local_contrast(image: np.ndarray, window: int = 15) -> float:
    """Mean standard deviation of grey levels inside ``window × window`` neighbourhoods of ``(H, W)``."""
    img = np.asarray(image, np.float32)
    mean = cv2.blur(img, (window, window))
    sq = cv2.blur(img * img, (window, window))
    return float(np.sqrt(np.maximum(sq - mean * mean, 0)).mean())


def draw_tile_grid(image: np.ndarray, tiles: int, color=(79, 195, 247)) -> np.ndarray:
    """RGB ``(H, W, 3)`` copy of a greyscale ``(H, W)`` image with the CLAHE tile boundaries drawn."""
    rgb = cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_GRAY2RGB)
    h, w = rgb.shape[:2]
    t = max(1, round(max(h, w) / 400))
    for k in range(1, tiles):
        x, y = int(round(k * w / tiles)), int(round(k * h / tiles))
        cv2.line(rgb, (x, 0), (x, h - 1), color, t)
        cv2.line(rgb, (0, y), (w - 1, y), color, t)
    return rgb


@dataclass
class LabView:
    """The lab's result for one source and settings.

    before / after: display copies ``(h, w)`` uint8 (downscaled to ``display_max_side``); diff: RGB
    ``(h, w, 3)``; ms_filter: time of the filters at full resolution; sd_* / local_* / mean_*: global
    SD, local contrast and mean grey of the display copies."""

    before: np.ndarray
    after: np.ndarray
    diff: np.ndarray
    ms_filter: float
    sd_before: float
    sd_after: float
    local_before: float
    local_after: float
    mean_before: float
    mean_after: float


def lab_view(src: np.ndarray, settings: dict, display_max_side: int = 960,
             before_display: np.ndarray | None = None) -> LabView:
    """Apply the CLAHE/bilateral ``settings`` (PreprocessConfig fields) to ``src`` ``(H, W)`` uint8 at
    full resolution and measure the result. ``before_display``: a cached downscaled copy of ``src``."""
    from cvs_core import viz

    cfg = PreprocessConfig(**settings)
    t0 = time.perf_counter()
    after_full = apply_filters(src, cfg)
    ms = (time.perf_counter() - t0) * 1e3
    before = before_display if before_display is not None else viz.downscale(src, display_max_side)[0]
    after = viz.downscale(after_full, display_max_side)[0] if before.shape != after_full.shape else after_full
    return LabView(before=before, after=after, diff=viz.difference_rgb(before, after), ms_filter=ms,
                   sd_before=float(before.std()), sd_after=float(after.std()),
                   local_before=local_contrast(before), local_after=local_contrast(after),
                   mean_before=float(before.mean()), mean_after=float(after.mean()))


def mean_shift_px(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance between two ``(19, 2)`` landmark sets, ignoring missing points (NaN if none)."""
    d = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=1)
    return float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")


def filtered(image: np.ndarray, settings: dict) -> np.ndarray:
    """``image`` ``(H, W)`` uint8 with the lab's filters applied (what the model sees, before resizing)."""
    return apply_filters(image, PreprocessConfig(**settings))


def vertebra_box(kind: str, shape: tuple[int, int], margin: float = 30.0) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` around C2–C4 in an image of ``shape`` (H, W): the mean landmark shape's box
    plus ``margin`` ROI px, for a ROI (``kind`` "roi", scaled to the image) or a full cephalogram
    ("full", through the study preset's ROI affine, scaled to the image)."""
    from cvs_core.landmarks import MEAN_SHAPE_ROI, ROI_SIZE
    from cvs_core.preprocess import apply_affine, invert_affine, seed_roi_affine

    pts = np.asarray(MEAN_SHAPE_ROI, np.float64)
    lo, hi = pts.min(0) - margin, pts.max(0) + margin
    corners = np.array([lo, hi])
    h, w = shape[:2]
    if kind == "full":
        corners = apply_affine(invert_affine(seed_roi_affine()), corners)
        ref_w, ref_h = 1804, 2136  # the study's full cephalograms: the preset box is in their pixels
        corners = corners * [w / ref_w, h / ref_h]
    else:
        corners = corners * [w / ROI_SIZE[1], h / ROI_SIZE[0]]
    x0, y0 = np.clip(np.floor(corners.min(0)), 0, [w - 1, h - 1]).astype(int)
    x1, y1 = np.clip(np.ceil(corners.max(0)), [x0 + 1, y0 + 1], [w, h]).astype(int)
    return int(x0), int(y0), int(x1), int(y1)


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` (greyscale or RGB) for ``box = (x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])

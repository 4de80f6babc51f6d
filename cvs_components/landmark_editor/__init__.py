"""The landmark editor: a Streamlit components-v2 element (no iframe) that shows an image with the 19
numbered landmarks and the vertebral outlines, lets a mouse user drag a point or pick a number and
click where it belongs, zoom on C2–C4 and undo, and has a rectangle mode for drawing an ROI box.

Everything it sends back is in the image's own pixel frame (x right, y down; pixel i's centre at i).
The JavaScript and CSS are read from the files next to this module and passed inline to
``st.components.v2.component`` (plain files, no npm build, nothing fetched from a CDN).

Python API::

    event = landmark_editor(image, points, key="ed", revision=3, can_undo=True)
    event.edit  -> {"index": 9, "x": 151.3, "y": 430.0, "nonce": "..."} or None  (0-based index)
    event.undo  -> a number when Undo was pressed, else None
    box = roi_box_editor(image, key="roi", rect=(0, 400, 250, 1000))
    box.rect    -> {"x0":…, "y0":…, "x1":…, "y1":…} (integers, the image's frame) or None
                   (drag inside the box to move it, outside it to draw a new one)
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import streamlit as st

from cvs_core.landmarks import LANDMARKS, N_LANDMARKS, NAMES, OUTLINES

HERE = Path(__file__).resolve().parent
COMPONENT_NAME = "cvs_landmark_editor"
VERTEBRA_COLOURS = {"C2": "#4fc3f7", "C3": "#81c784", "C4": "#ffb74d"}
MAX_DISPLAY_SIDE = 1600   # the image is sent downscaled to at most this side (coordinates stay in its frame)


@lru_cache(maxsize=1)
def _component():
    return st.components.v2.component(COMPONENT_NAME, html=None, css=(HERE / "editor.css").read_text(),
                                      js=(HERE / "editor.js").read_text())


def _noop():
    return None


def image_uri(image: np.ndarray, max_side: int = MAX_DISPLAY_SIDE) -> str:
    """A JPEG data URI of a ``(H, W)`` or ``(H, W, 3)`` uint8 image, downscaled to ``max_side``."""
    from cvs_core.viz import data_uri, downscale

    small, _ = downscale(np.asarray(image), max_side)
    return data_uri(small, fmt="jpeg", quality=88)


def zoom_box(points: np.ndarray | None, shape_hw: tuple[int, int], margin: float = 0.35) -> list[float] | None:
    """``[x0, y0, x1, y1]`` around the C2–C4 landmarks ``(19, 2)`` with ``margin`` × their extent on
    each side, clipped to the image; None when there are no finite landmarks."""
    if points is None:
        return None
    pts = np.asarray(points, dtype=np.float64)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if not len(pts):
        return None
    h, w = shape_hw
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = np.maximum((hi - lo) * margin, 20.0)
    x0, y0 = np.maximum(lo - pad, -0.5)
    x1, y1 = np.minimum(hi + pad, (w - 0.5, h - 0.5))
    return [float(x0), float(y0), float(x1), float(y1)]


def _points_json(points) -> list:
    if points is None:
        return [None] * N_LANDMARKS
    return [[round(float(x), 3), round(float(y), 3)] if np.isfinite([x, y]).all() else None
            for x, y in np.asarray(points, dtype=np.float64)]


def landmark_editor(image: np.ndarray, points, *, key: str, revision: int | str = 0, can_undo: bool = False,
                    height_px: int = 640, zoom: bool = True, image_src: str | None = None):
    """Mount the editor. image: ``(H, W)`` uint8 (its frame is the coordinates' frame); points:
    ``(19, 2)`` or None; revision: change it whenever ``points`` change on the Python side (the
    browser then redraws them); zoom: start zoomed on C2–C4. Returns the component result with the
    trigger values ``edit`` and ``undo`` (None when nothing happened in this run)."""
    h, w = image.shape[:2]
    data = {
        "image": image_src or image_uri(image), "width": int(w), "height": int(h), "mode": "landmarks",
        "points": _points_json(points), "names": list(NAMES), "meanings": [lm.description for lm in LANDMARKS],
        "colours": [VERTEBRA_COLOURS.get(lm.vertebra, "#fff") for lm in LANDMARKS],
        "outlines": {v: [i - 1 for i in idx] for v, idx in OUTLINES.items()},
        "zoom_box": zoom_box(points, (h, w)), "zoom_default": bool(zoom), "revision": str(revision),
        "can_undo": bool(can_undo), "height_px": int(height_px),
    }
    return _component()(key=key, data=data, on_edit_change=_noop, on_undo_change=_noop, height="content")


def roi_box_editor(image: np.ndarray, *, key: str, rect=None, height_px: int = 640, image_src: str | None = None):
    """Mount the editor in rectangle mode: drag on the image to draw a box, or drag inside the shown
    box to move it (its size kept, its centre kept on the image). ``rect``: the box to show first
    ``(x0, y0, x1, y1)`` (may run past the image). Returns the result whose trigger ``rect`` is
    ``{"x0", "y0", "x1", "y1"}`` (integers, the image's frame; clipped to the image after a drawing,
    plus ``"moved": True`` after a move, which may leave part of the box past an edge), else None."""
    h, w = image.shape[:2]
    data = {"image": image_src or image_uri(image), "width": int(w), "height": int(h), "mode": "rect",
            "points": [], "names": [], "outlines": {}, "zoom_box": None, "height_px": int(height_px),
            "rect": [float(v) for v in rect] if rect is not None else None,
            "revision": str(tuple(rect) if rect is not None else None)}
    return _component()(key=key, data=data, on_rect_change=_noop, height="content")


def trigger(result, name: str):
    """A trigger value of a component result (``None`` when absent)."""
    if result is None:
        return None
    try:
        return result.get(name) if hasattr(result, "get") else getattr(result, name, None)
    except (AttributeError, KeyError):
        return None

"""Synthetic lateral cervical-spine phantoms with exact landmarks and a known CS stage
(docs/architecture.md#phantoms).

Only two labelled real ROI images are public, so models train on phantoms rendered here and must
then work on real 250×600 ROI crops. A phantom is

* a landmark configuration: a point-distribution model (mean shape + PCA modes after generalised
  Procrustes alignment, ``cvs_core.shape_model``) fitted to the 15 real configurations of
  ``data/samples/*.csv``, followed by a *stage-driven* rebuild of each
  vertebra in its own frame (concavity depth/chord of the inferior borders of C2, C3, C4; H/W and
  AH/PH of the C3 and C4 bodies) with a safety margin from every staging threshold
  (docs/architecture.md#cvm-staging);
* an image rendered around those landmarks: C2 (with the dens), C3–C6 bodies whose outlines pass
  exactly through the landmarks, cortical rims, trabecular texture, discs, posterior elements, the
  soft-tissue gradient, the dark airway in front, skull base / ear rod / C1 / mandible at the top,
  then exposure, gamma, blur and noise.

The stage label of a phantom is the stage it was *generated for* — never the output of
``cvs_core.staging`` (that would make the stage-agreement benchmark circular).

Conventions: coordinates are ``(x, y)`` float ROI pixels with OpenCV's pixel-centre convention
(integer ``x`` is the centre of column ``x``); images are ``(height, width) = (600, 250)`` uint8.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from cvs_core.landmarks import N_LANDMARKS, csv_columns
from cvs_core.shape_model import SHAPE_MODEL

__all__ = [
    "Phantom",
    "sample_landmarks",
    "render_phantom",
    "generate_phantoms",
    "write_phantom_dataset",
    "WidePhantom",
    "render_wide_phantom",
    "wide_phantom_roi",
    "STAGE_PARAMETER_RANGES",
    "MEAN_SHAPE",
    "SHAPE_MODES",
]

IMAGE_SIZE = (600, 250)  # (height, width) of the study ROI

# The shape model (Procrustes mean + PCA modes of the 15 real configurations) lives in
# cvs_core.shape_model; these names stay for callers of the old module.
MEAN_SHAPE, SHAPE_MODES, SHAPE_SD = SHAPE_MODEL.mean, SHAPE_MODEL.modes, SHAPE_MODEL.sd
"""``MEAN_SHAPE`` (19, 2): Procrustes mean (centred, unit centroid size, average real orientation);
``SHAPE_MODES`` (4, 19, 2): orthonormal PCA modes; ``SHAPE_SD`` (4,): their standard deviations."""
_REAL_SIZES = SHAPE_MODEL.sizes

# --------------------------------------------------------------------------------------------
# Stage → shape parameters (staging thresholds, docs/architecture.md#cvm-staging: concave depth/chord ≥ 0.07; square 0.9–1.1;
# trapezoid AH/PH < 0.85). Every range keeps a margin from the thresholds.
# --------------------------------------------------------------------------------------------
STAGE_PARAMETER_RANGES = {
    "concave": (0.10, 0.18),        # depth / chord of a concave inferior border
    "flat": (-0.01, 0.035),         # depth / chord of a flat one
    "trapezoid_ahph": (0.55, 0.78),
    "trapezoid_hw": (0.50, 0.80),
    "rect_ahph": (0.93, 1.04),      # AH/PH of every non-trapezoid body
    "horizontal_hw": (0.62, 0.84),
    "square_hw": (0.96, 1.00),      # also square for the calibrated staging (H/W 0.89–0.98 from the corners)
    "vertical_hw": (1.16, 1.32),
}

# Concavity of C2, C3, C4 per stage.
_STAGE_CONCAVITY = {1: (0, 0, 0), 2: (1, 0, 0), 3: (1, 1, 0), 4: (1, 1, 1), 5: (1, 1, 1), 6: (1, 1, 1)}


def _stage_bodies(rng: np.random.Generator, stage: int) -> tuple[str, str]:
    """Body shapes ``(C3, C4)`` for a stage, one of trapezoid/horizontal/square/vertical."""
    if stage in (1, 2):
        return "trapezoid", "trapezoid"
    if stage == 3:
        pair = [("trapezoid", "trapezoid"), ("horizontal", "trapezoid"), ("trapezoid", "horizontal"),
                ("horizontal", "horizontal")]
        return pair[int(rng.choice(4, p=[0.4, 0.3, 0.1, 0.2]))]
    if stage == 4:
        return "horizontal", "horizontal"
    if stage == 5:
        pair = [("square", "square"), ("square", "horizontal"), ("horizontal", "square")]
        return pair[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    if stage == 6:
        pair = [("vertical", "vertical"), ("vertical", "square"), ("square", "vertical")]
        return pair[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    raise ValueError(f"stage must be 1..6, got {stage}")


def _u(rng: np.random.Generator, key: str) -> float:
    lo, hi = STAGE_PARAMETER_RANGES[key]
    return float(rng.uniform(lo, hi))


def _body_ratios(rng: np.random.Generator, kind: str) -> tuple[float, float]:
    """``(H/W, AH/PH)`` for a body shape kind."""
    if kind == "trapezoid":
        return _u(rng, "trapezoid_hw"), _u(rng, "trapezoid_ahph")
    return _u(rng, kind + "_hw"), _u(rng, "rect_ahph")


def _frame(p0: np.ndarray, p1: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Local frame of a chord p0→p1: unit ``e1`` along it, ``e2`` perpendicular pointing up
    (towards smaller image y when the chord is horizontal), and the chord length."""
    d = p1 - p0
    length = float(np.hypot(*d))
    e1 = d / length
    e2 = np.array([e1[1], -e1[0]])
    return e1, e2, length


def _to_image(origin: np.ndarray, e1: np.ndarray, e2: np.ndarray, uv: np.ndarray) -> np.ndarray:
    uv = np.asarray(uv, dtype=np.float64)
    return origin + uv[..., :1] * e1 + uv[..., 1:2] * e2


def _body_local(rng: np.random.Generator, hw: float, ahph: float, depth: float,
                u_sp: float, u_sa: float) -> np.ndarray:
    """One vertebral body in its own frame, chord length 1: (u along ip→ia, v up).

    Returns ``(8, 2)`` points in the order sp, sm, sa, mp, ma, ip, im, ia with exactly
    ``H/W = hw``, ``AH/PH = ahph`` and inferior ``depth/chord = depth``."""
    bump = float(rng.uniform(-0.01, 0.025))       # superior border mid-point above the corners' line
    du_sm = float(rng.uniform(-0.04, 0.04))
    c_p = float(rng.uniform(0.0, 0.03))            # posterior border slightly concave
    c_a = float(rng.uniform(0.005, 0.04))          # anterior border concave
    s = hw
    for _ in range(30):  # fixed point: posterior height s so that H/W == hw
        sp = np.array([u_sp, s]); sa = np.array([1.0 + u_sa, ahph * s])
        mp = np.array([0.5 * u_sp + c_p, 0.5 * s]); ma = np.array([1.0 + 0.5 * u_sa - c_a, 0.5 * ahph * s])
        w = float(np.hypot(*(ma - mp)))
        s_new = (hw * w - bump) / (0.5 * (1.0 + ahph))
        if abs(s_new - s) < 1e-12:
            break
        s = s_new
    sp = np.array([u_sp, s]); sa = np.array([1.0 + u_sa, ahph * s])
    sm = np.array([0.5 * (sp[0] + sa[0]) + du_sm, 0.5 * (sp[1] + sa[1]) + bump])
    mp = np.array([0.5 * u_sp + c_p, 0.5 * s]); ma = np.array([1.0 + 0.5 * u_sa - c_a, 0.5 * ahph * s])
    ip = np.array([0.0, 0.0]); ia = np.array([1.0, 0.0])
    im = np.array([0.5 + float(rng.uniform(-0.06, 0.06)), depth])
    return np.stack([sp, sm, sa, mp, ma, ip, im, ia])


def _sample_layout(rng: np.random.Generator) -> np.ndarray:
    """A plausible real-like configuration (19, 2) in ROI pixels from the PCA shape model."""
    for _ in range(50):
        b = np.clip(rng.standard_normal(len(SHAPE_SD)), -2.0, 2.0) * SHAPE_SD
        shape = MEAN_SHAPE + np.tensordot(b, SHAPE_MODES, axes=1)
        size = float(rng.uniform(0.92 * np.median(_REAL_SIZES), 1.12 * np.median(_REAL_SIZES)))
        a = np.deg2rad(rng.uniform(-8.0, 8.0))
        rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        centre = np.array([rng.uniform(100.0, 180.0), rng.uniform(400.0, 450.0)])
        pts = shape @ rot * size + centre
        # The disc gaps (C2→C3 and C3→C4 superior corners below the borders above) must stay open.
        if pts[3, 1] - pts[0, 1] > 6 and pts[11, 1] - pts[8, 1] > 4 and pts[13, 1] - pts[10, 1] > 4:
            return pts
    return MEAN_SHAPE * np.median(_REAL_SIZES) + np.array([140.0, 425.0])


def _sample_geometry(rng: np.random.Generator, stage: int) -> dict:
    """Landmarks plus the per-vertebra frames used by the renderer."""
    lay = _sample_layout(rng)
    conc = _STAGE_CONCAVITY[stage]
    kinds = _stage_bodies(rng, stage)
    depths = [_u(rng, "concave" if c else "flat") for c in conc]
    pts = np.zeros((N_LANDMARKS, 2))

    # C2 inferior border: chord from the layout, middle point at the stage's depth.
    e1, e2, L2 = _frame(lay[0], lay[2])
    pts[0], pts[2] = lay[0], lay[2]
    pts[1] = lay[0] + (0.5 + rng.uniform(-0.07, 0.07)) * L2 * e1 + depths[0] * L2 * e2
    frames = {"C2": (lay[0].copy(), e1, e2, L2)}

    bodies = {}
    anchor = lay[3]  # C3 sp sits where the layout puts it (keeps the real C2–C3 disc gap)
    for name, base, kind, depth in (("C3", 3, kinds[0], depths[1]), ("C4", 11, kinds[1], depths[2])):
        ip, ia, mp, ma, sp, sa = lay[base + 5], lay[base + 7], lay[base + 3], lay[base + 4], lay[base], lay[base + 2]
        f1, f2, chord = _frame(ip, ia)
        width = float(np.hypot(*(ma - mp)))
        u_sp = float(np.clip(np.dot(sp - ip, f1) / chord, -0.12, 0.15))
        u_sa = float(np.clip(np.dot(sa - ia, f1) / chord, -0.15, 0.12))
        hw, ahph = _body_ratios(rng, kind)
        local = _body_local(rng, hw, ahph, depth, u_sp, u_sa)
        w_local = float(np.hypot(*(local[4] - local[3])))
        scale = float(np.clip(width, 44.0, 90.0)) / w_local  # chord length in pixels
        local_px = local * scale
        origin = anchor - (local_px[0, 0] * f1 + local_px[0, 1] * f2)  # put sp on the anchor
        img = _to_image(origin, f1, f2, local_px)
        pts[base:base + 8] = img
        frames[name] = (origin, f1, f2, scale)
        bodies[name] = local_px
        if name == "C3":  # C4's sp keeps the layout's disc offset below C3's ip
            anchor = img[5] + (lay[11] - lay[8])
    # Keep the column inside the real range of the ROI (tall CS6 bodies push C4 down).
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    shift = np.zeros(2)
    for k, (a, b) in enumerate(((35.0, 238.0), (305.0, 560.0))):
        if lo[k] < a:
            shift[k] = a - lo[k]
        elif hi[k] > b:
            shift[k] = max(b - hi[k], a - lo[k])
    pts += shift
    frames = {k: (v[0] + shift, *v[1:]) for k, v in frames.items()}
    return {"landmarks": pts, "frames": frames, "bodies": bodies, "kinds": kinds, "depths": depths}


def sample_landmarks(rng: np.random.Generator, stage: int) -> np.ndarray:
    """Sample one landmark configuration for a CS stage (1..6).

    Shape model (PCA of the Procrustes-aligned real configurations, ±8° rotation, scale and
    position in the real range) + stage-driven rebuild of C2/C3/C4 so that the staging measurements
    (docs/architecture.md#cvm-staging) fall inside :data:`STAGE_PARAMETER_RANGES`.

    Returns ``(19, 2)`` float64 ``(x, y)`` ROI pixels (pixel-centre convention)."""
    if stage not in _STAGE_CONCAVITY:
        raise ValueError(f"stage must be 1..6, got {stage}")
    return _sample_geometry(rng, stage)["landmarks"]


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
_SHIFT = 4
_ONE = 1 << _SHIFT


def _ipts(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _curve3(a: np.ndarray, m: np.ndarray, b: np.ndarray, n: int = 9) -> np.ndarray:
    """Quadratic curve through a (t=0), m (t=0.5) and b (t=1); ``(n, 2)`` points, ends included."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    c = 2.0 * m - 0.5 * (a + b)  # control point so that the curve passes through m at t = 0.5
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * c + t ** 2 * b


def _body_outline(p: np.ndarray) -> np.ndarray:
    """Closed outline through the 8 body points (sp, sm, sa, mp, ma, ip, im, ia): ``(M, 2)``."""
    sp, sm, sa, mp, ma, ip, im, ia = p
    return np.concatenate([
        _curve3(sp, sm, sa)[:-1],   # superior border, posterior → anterior
        _curve3(sa, ma, ia)[:-1],   # anterior border, downwards
        _curve3(ia, im, ip)[:-1],   # inferior border (through the deepest point)
        _curve3(ip, mp, sp)[:-1],   # posterior border, upwards
    ])


def _lowres_noise(rng: np.random.Generator, shape: tuple[int, int], factor: int) -> np.ndarray:
    h, w = shape
    small = rng.standard_normal((h // factor + 2, w // factor + 2), dtype=np.float32)
    big = cv2.resize(small, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    return big[factor:factor + h, factor:factor + w]


def _poly(canvas: np.ndarray, pts: np.ndarray, value: int = 255) -> None:
    cv2.fillPoly(canvas, [_ipts(pts)], value, cv2.LINE_AA, _SHIFT)


def _line(canvas: np.ndarray, pts: np.ndarray, value: int, thickness: int, closed: bool) -> None:
    cv2.polylines(canvas, [_ipts(pts)], closed, value, thickness, cv2.LINE_AA, _SHIFT)


def _levels(geo: dict, rng: np.random.Generator, n_below: int = 2) -> list[dict]:
    """C3–C6 bodies in image px with their frames; C5 and C6 (not landmarked) are stacked below
    C4, shaped like it, with the same disc offset and a continuing curvature (``n_below`` bodies
    below C4: 2 for the ROI, 3 (down to C7) for a wide phantom)."""
    lm = geo["landmarks"]
    out = []
    for name, base in (("C3", 3), ("C4", 11)):
        o, f1, f2, L = geo["frames"][name]
        pts = lm[base:base + 8]
        out.append(dict(pts=pts, o=pts[5], f1=f1, f2=f2, L=L, h=float(np.dot(pts[0] - pts[5], f2))))
    _, c3f1, _, _ = geo["frames"]["C3"]
    c4 = out[1]
    gap = lm[11] - lm[8]
    turn = np.arctan2(c4["f1"][1], c4["f1"][0]) - np.arctan2(c3f1[1], c3f1[0])
    angle = np.arctan2(c4["f1"][1], c4["f1"][0])
    prev_local = geo["bodies"]["C4"]
    ip = lm[16]
    for _ in range(n_below):
        angle += turn * rng.uniform(0.3, 1.0) + np.deg2rad(rng.uniform(-2, 2))
        g1 = np.array([np.cos(angle), np.sin(angle)])
        g2 = np.array([g1[1], -g1[0]])
        loc = prev_local * (1.0 + rng.uniform(-0.03, 0.03, size=(8, 2)) * np.array([0.3, 1.0]))
        loc = loc * rng.uniform(1.0, 1.05)
        loc[5] = 0.0
        o = ip + gap - (loc[0, 0] * g1 + loc[0, 1] * g2)
        img = _to_image(o, g1, g2, loc)
        L = float(np.hypot(*(img[7] - img[5])))
        out.append(dict(pts=img, o=img[5], f1=g1, f2=g2, L=L, h=float(loc[0, 1])))
        ip = img[5]
        prev_local = loc
    return out


def _c2_outline(geo: dict, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """C2 body + dens polygon (image px) whose inferior border passes through landmarks 1-2-3."""
    lm = geo["landmarks"]
    o, e1, e2, L = geo["frames"]["C2"]
    k = rng.uniform(0.9, 1.05)
    lean = rng.uniform(-0.02, 0.12)  # the dens leans back (posteriorly) a little
    bulge = rng.uniform(0.0, 0.08)
    uv = np.array([
        [1.04, 0.10], [1.02 + bulge, 0.40], [0.98 + bulge, 0.75], [0.90, 1.02],            # anterior body
        [0.82 - lean, 1.18], [0.80 - lean, 1.40 * k], [0.76 - 1.4 * lean, 1.62 * k],       # dens front
        [0.66 - 1.8 * lean, 1.78 * k], [0.50 - 2 * lean, 1.82 * k], [0.34 - 2 * lean, 1.74 * k],  # tip
        [0.26 - 1.5 * lean, 1.55 * k], [0.24 - lean, 1.32 * k], [0.14 - lean, 1.16],     # dens back
        [0.02, 1.02], [-0.06, 0.70], [-0.06, 0.35], [-0.02, 0.10],                          # posterior body
    ])
    upper = _to_image(o, e1, e2, uv * L)
    inferior = _curve3(lm[2], lm[1], lm[0])  # anterior → posterior through the deepest point
    # anterior end (landmark 3) → up the front → dens → down the back → posterior end
    # (landmark 1) → back along the inferior border through landmark 2
    outline = np.concatenate([[lm[2]], upper, [lm[0]], inferior[::-1][1:-1]])
    info = {"tip": _to_image(o, e1, e2, np.array([0.5 - 2 * lean, 1.82 * k]) * L),
            "dens_front": _to_image(o, e1, e2, np.array([0.80 - lean, 1.5 * k]) * L),
            "top_front": _to_image(o, e1, e2, np.array([0.9, 1.02]) * L)}
    return outline, info


def _posterior_elements(o, f1, f2, L, h, rng, c2: bool = False):
    """Articular pillar and lamina + spinous process of one vertebra, in image px.

    Built in the vertebra's frame (u anterior along its inferior chord, v up); the facets slope
    down posteriorly so consecutive pillars shingle like on a lateral radiograph."""
    slope = rng.uniform(0.55, 0.85)
    depth = rng.uniform(0.55, 0.7) * (1.15 if c2 else 1.0)
    top = (h + 0.04 * L) if not c2 else 1.05 * L
    front = -rng.uniform(0.12, 0.22) * L
    T = np.array([front, top])
    B = np.array([front + 0.05 * L, -0.06 * L])
    d = np.array([-depth * L, -slope * depth * L])
    pillar = np.array([T, T + d, B + d, B])
    r1 = T + d + np.array([0.0, -0.22 * (top + 0.04 * L)])
    r2 = B + d + np.array([0.05 * L, 0.12 * (top + 0.04 * L)])
    length = rng.uniform(0.9, 1.3) * (1.35 if c2 else 1.0) * L
    drop = rng.uniform(0.35, 0.75)
    root = 0.5 * (r1 + r2)
    tip = root + length * np.array([-1.0, -drop]) / np.hypot(1.0, drop)
    dvec = (tip - root) / np.hypot(*(tip - root))
    n = np.array([-dvec[1], dvec[0]])
    w = rng.uniform(0.10, 0.15) * L * (1.6 if c2 else 1.0)
    spinous = np.array([r1, tip + n * w, tip - dvec * 0.4 * w, tip - n * w * 1.2, r2])
    to = lambda uv: _to_image(o, f1, f2, uv)
    return to(pillar), to(spinous), to(tip), w


def _smooth_field(rng: np.random.Generator, size: tuple[int, int], draw, sigma: float, factor: int = 4):
    """Draw with ``draw(canvas, scale)`` on a 1/factor canvas, blur and upsample: a smooth
    float32 field in [0, 1] at full size (cheap large-sigma blur)."""
    h, w = size
    small = np.zeros(((h + factor - 1) // factor, (w + factor - 1) // factor), np.uint8)
    draw(small, 1.0 / factor)
    f = cv2.GaussianBlur(small.astype(np.float32) * (1.0 / 255.0), (0, 0), max(sigma / factor, 0.3))
    return cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)


def _sig(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def _render(geo: dict, rng: np.random.Generator, size: tuple[int, int], offset=(0.0, 0.0),
            n_below: int = 2, wide: bool = False) -> np.ndarray:
    """Render ``geo`` on a ``size = (H, W)`` canvas. ``offset = (ox, oy)``: where the ROI's origin
    sits on the canvas (the landmarks in ``geo`` already include it); structures placed at fixed ROI
    positions (ear rod, mandible, C1 arch end, skull-base range) move with it. The defaults render
    the study ROI exactly as before; ``wide=True`` adds the wide-context anatomy (anterior arch of
    C1 as a ring, mandibular body and hyoid, the back of the neck, shoulder shadow)."""
    H, W = size
    ox, oy = float(offset[0]), float(offset[1])
    lm = geo["landmarks"]
    ys = np.arange(H, dtype=np.float32)[:, None]
    xs = np.arange(W, dtype=np.float32)[None, :]

    # --- geometry ------------------------------------------------------------------------------
    levels = _levels(geo, rng, n_below)
    c2_poly, c2_info = _c2_outline(geo, rng)
    ant = np.concatenate([lm[[2]], [lv["pts"][4] for lv in levels]])
    post = np.concatenate([lm[[0]], [lv["pts"][3] for lv in levels]])
    ka, ba = np.polyfit(ant[:, 1], ant[:, 0], 1)
    kp, bp = np.polyfit(post[:, 1], post[:, 0], 1)
    x_ant = (ka * ys + ba).astype(np.float32)   # (H, 1) anterior column line
    x_post = (kp * ys + bp).astype(np.float32)
    tip = c2_info["tip"]
    yb = float(np.clip(tip[1] + rng.uniform(-10.0, 30.0), 150.0 + oy, 320.0 + oy))  # skull base bottom

    # --- soft tissue ---------------------------------------------------------------------------
    far = rng.uniform(0.05, 0.13)
    near = rng.uniform(0.28, 0.38)
    ramp = rng.uniform(80.0, 130.0)
    t = np.clip(1.0 - (x_post - xs) / ramp, 0.0, 1.0)
    dens = far + (near - far) * t ** 1.5
    gap = rng.uniform(4.0, 18.0)
    width = rng.uniform(28.0, 75.0)
    da = xs - x_ant - gap
    air_top = np.clip((ys - (yb - rng.uniform(20.0, 80.0))) / 60.0, 0.0, 1.0)
    airway = _sig(da / 2.0) * _sig((width - da) / rng.uniform(3.0, 8.0)) * air_top
    front = rng.uniform(-0.12, 0.08) * _sig((da - width) / 6.0)
    dens = dens - rng.uniform(0.20, 0.30) * airway + front
    dens += 0.04 * _lowres_noise(rng, size, 40)

    # --- bones (uint8 masks drawn antialiased at 1/16 px) -------------------------------------
    body = np.zeros(size, np.uint8)
    rim = np.zeros(size, np.uint8)
    postel = np.zeros(size, np.uint8)
    postrim = np.zeros(size, np.uint8)
    _poly(body, c2_poly, 255)
    _line(rim, c2_poly, 130, 2, True)
    for lv in levels:
        p = lv["pts"]
        outline = _body_outline(p)
        _poly(body, outline)
        _line(rim, outline, 130, 2, True)
        _line(rim, _curve3(p[0], p[1], p[2]), int(rng.uniform(170, 255)), 2, False)  # endplates
        _line(rim, _curve3(p[7], p[6], p[5]), int(rng.uniform(170, 255)), 2, False)
        _line(rim, _curve3(p[2], p[4], p[7]), int(rng.uniform(150, 230)), 2, False)  # anterior wall
        _line(rim, _curve3(p[5], p[3], p[0]), int(rng.uniform(150, 255)), 1, False)  # posterior wall
    _line(rim, _curve3(lm[2], lm[1], lm[0]), 255, 2, False)
    o2, e1, e2, L2 = geo["frames"]["C2"]
    elements = [(o2, e1, e2, L2, 1.0 * L2, True)] + [(lv["o"], lv["f1"], lv["f2"], lv["L"], lv["h"], False)
                                                        for lv in levels]
    for o, f1, f2, L, h, is_c2 in elements:
        pillar, spinous, sp_tip, w = _posterior_elements(o, f1, f2, L, h, rng, c2=is_c2)
        _poly(postel, pillar, int(rng.uniform(80, 140)))
        _line(postrim, pillar, 255, 2, True)
        _poly(postel, spinous, int(rng.uniform(130, 190)))
        _line(postrim, spinous, 230, 2, True)
        cv2.circle(postel, tuple(int(v) for v in np.round(sp_tip * _ONE)), int(w * _ONE), 190, -1,
                   cv2.LINE_AA, _SHIFT)

    tex = _lowres_noise(rng, size, 2) * 0.4 + _lowres_noise(rng, size, 5) * 0.6
    bodyf = body.astype(np.float32) * (1.0 / 255.0)
    rimf = rim.astype(np.float32) * (1.0 / 255.0)
    shell = cv2.GaussianBlur(rimf, (0, 0), 2.5)
    postf = postel.astype(np.float32) * (1.0 / 255.0)
    postrimf = postrim.astype(np.float32) * (1.0 / 255.0)
    dens += bodyf * (rng.uniform(0.08, 0.14) + 0.035 * tex) + rimf * rng.uniform(0.07, 0.13)
    dens += shell * rng.uniform(0.06, 0.12)
    postf = cv2.GaussianBlur(postf, (0, 0), 1.2)
    dens += postf * (rng.uniform(0.12, 0.20) + 0.04 * tex) + postrimf * rng.uniform(0.06, 0.12)

    # --- top of the ROI: skull base, C1, mandible, ear rod -------------------------------------
    # skull base: bright mass over the top, bounded below (occiput) and in front by a diagonal
    xr = tip[0] + rng.uniform(5, 35)
    y_right = rng.uniform(20, 120) + oy
    xb = np.linspace(-20, xr, 7)
    yb_curve = yb + rng.uniform(-15, 15, xb.size)
    yb_curve[:3] -= rng.uniform(-10, 45)
    skull_pts = np.concatenate([[[-20, -20], [W + 20, -20], [W + 20, y_right]], np.stack([xb, yb_curve], 1)[::-1]])
    c1_centre = tip + np.array([rng.uniform(-20, 0), rng.uniform(5, 25)])
    c1_axes = np.array([rng.uniform(35, 50), rng.uniform(22, 34)])
    rod_c = np.array([rng.uniform(130, 160) + ox, rng.uniform(115, 150) + oy])

    def draw_skull(canvas, s):
        _poly(canvas, skull_pts * s, 200)
        cv2.ellipse(canvas, tuple(int(v) for v in np.round(c1_centre * s * _ONE)),
                    tuple(int(v) for v in np.round(c1_axes * s * _ONE)), rng.uniform(-20, 20), 0, 360,
                    int(rng.uniform(120, 200)), -1, cv2.LINE_AA, _SHIFT)
        cv2.ellipse(canvas, tuple(int(v) for v in np.round((rod_c + rng.uniform(-20, 20, 2)) * s * _ONE)),
                    tuple(int(v) for v in np.round(np.array([rng.uniform(40, 70), rng.uniform(30, 55)]) * s * _ONE)),
                    rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)

    skull = _smooth_field(rng, size, draw_skull, rng.uniform(10.0, 20.0))
    mott = _lowres_noise(rng, size, 25) * 0.7 + _lowres_noise(rng, size, 8) * 0.3
    dens += skull * (rng.uniform(0.50, 0.66) + 0.05 * mott + 0.03 * tex)

    marks = np.zeros(size, np.uint8)
    for _ in range(int(rng.integers(8, 16))):  # occipital / petrous / condyle outlines
        c = (int(rng.uniform(0, W) * _ONE), int(rng.uniform(0, yb) * _ONE))
        ax = (int(rng.uniform(15, 90) * _ONE), int(rng.uniform(8, 50) * _ONE))
        a0 = rng.uniform(0, 360)
        cv2.ellipse(marks, c, ax, rng.uniform(0, 180), a0, a0 + rng.uniform(40, 160), int(rng.uniform(50, 110)),
                    int(rng.integers(2, 5)), cv2.LINE_AA, _SHIFT)
    occ = np.stack([xb, yb_curve + rng.uniform(-8, 4)], 1)  # cortex of the occiput / condyles
    _line(marks, occ[: int(rng.integers(3, 7))], 160, 3, False)
    df = c2_info["dens_front"]  # C1 anterior arch in front of the dens
    c1a = (int((df[0] + rng.uniform(8, 15)) * _ONE), int((df[1] - rng.uniform(0, 15)) * _ONE))
    c1ax = (int(rng.uniform(6, 9) * _ONE), int(rng.uniform(9, 14) * _ONE))
    cv2.ellipse(marks, c1a, c1ax, rng.uniform(-15, 15), 0, 360, 150, -1, cv2.LINE_AA, _SHIFT)
    cv2.ellipse(marks, c1a, c1ax, 0, 0, 360, 255, 2, cv2.LINE_AA, _SHIFT)
    px = float(lm[0, 0] - 0.4 * L2)  # C1 posterior arch: a hooked bar below the skull base
    ay = yb + rng.uniform(20, 45)
    x_end = rng.uniform(15, 35) + ox
    tt = np.linspace(0.0, 1.0, 12)[:, None]
    arch = np.concatenate([px + (x_end - px) * tt, ay - rng.uniform(0, 25) * tt ** 2 + 6 * np.sin(np.pi * tt)], 1)
    thick = int(rng.uniform(12, 20))
    _line(marks, arch, 200, thick, False)
    _line(marks, arch, 130, max(thick - 6, 2), False)
    cv2.circle(marks, tuple(int(v) for v in np.round(arch[-1] * _ONE)), int(thick * 0.6 * _ONE), 190, -1,
               cv2.LINE_AA, _SHIFT)
    dens += cv2.GaussianBlur(marks, (0, 0), 1.0).astype(np.float32) * (rng.uniform(0.14, 0.22) / 255.0)
    for cy, ry in ((yb + rng.uniform(0, 12), rng.uniform(14, 22)), (ay + rng.uniform(28, 40), rng.uniform(12, 20))):
        gx = (xs - rng.uniform(45, 75) - ox) / rng.uniform(30, 50)
        gy = (ys - cy) / ry
        dens -= rng.uniform(0.08, 0.16) * np.exp(-(gx * gx + gy * gy))  # suboccipital dark gaps
    cells = np.zeros(size, np.uint8)
    for _ in range(int(rng.integers(6, 16))):  # mastoid air cells
        c = (int((rng.uniform(15, 120) + ox) * _ONE), int(rng.uniform(10 + oy, max(yb - 60, 40 + oy)) * _ONE))
        cv2.circle(cells, c, int(rng.uniform(3, 7) * _ONE), 255, -1, cv2.LINE_AA, _SHIFT)
    dens -= cv2.GaussianBlur(cells, (0, 0), 1.5).astype(np.float32) * (rng.uniform(0.03, 0.07) / 255.0)
    edge = yy = None
    if rng.random() < 0.8:  # mandibular ramus / angle in the upper right
        mand = np.zeros(size, np.uint8)
        x0 = rng.uniform(190, 245) + ox
        yy = np.linspace(-10 + oy, rng.uniform(150, 330) + oy, 8)
        xx = x0 + rng.uniform(-30, 30) * ((yy - yy[0]) / (yy[-1] - yy[0])) ** 2 + rng.uniform(-3, 3, 8)
        edge = np.stack([xx, yy], 1)
        _poly(mand, np.concatenate([[[W + 20, -10]], edge, [[W + 20, yy[-1] + 30]]]), 150)
        _line(mand, edge, 255, 2, False)
        dens += mand.astype(np.float32) * (rng.uniform(0.05, 0.12) / 255.0)
    rod = np.zeros(size, np.uint8)  # ear rod of the cephalostat
    rc = tuple(int(v) for v in np.round(rod_c * _ONE))
    cv2.circle(rod, rc, int(rng.uniform(6, 9) * _ONE), 255, -1, cv2.LINE_AA, _SHIFT)
    dens += rod.astype(np.float32) * (0.9 / 255.0)
    if rng.random() < 0.95:  # bright edge of the cassette/collimator on the far left
        dens += 1.0 * _sig((rng.uniform(8.0, 16.0) - xs) / rng.uniform(1.0, 2.5))

    if wide:  # anatomy outside the study ROI (wide phantoms only; the ROI path draws none of it)
        extra = np.zeros(size, np.uint8)
        if edge is not None:  # mandibular body forward from the angle, teeth above it
            angle_pt = edge[-1]
            thick = rng.uniform(90, 140)
            drop = rng.uniform(-0.25, 0.05)
            front_x = W + 20.0
            lower = np.array([angle_pt, [front_x, angle_pt[1] + drop * (front_x - angle_pt[0])]])
            body_m = np.concatenate([lower, lower[::-1] - np.array([0.0, thick])])
            _poly(extra, body_m, 200)
            _line(extra, lower, 255, 4, False)
            for _ in range(int(rng.integers(5, 10))):  # molars / premolars: bright blocks on the body
                tx = float(rng.uniform(angle_pt[0] + 40, front_x))
                ty = float(np.interp(tx, lower[:, 0], lower[:, 1])) - thick - rng.uniform(-10, 40)
                cv2.ellipse(extra, (int(tx * _ONE), int(ty * _ONE)),
                            (int(rng.uniform(14, 24) * _ONE), int(rng.uniform(22, 40) * _ONE)),
                            rng.uniform(-15, 15), 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
        y3 = float(lm[5, 1])  # hyoid: a small bright bar in front of C3 below the mandible
        hx = float(ka * y3 + ba) + gap + width + rng.uniform(15, 45)
        hy = y3 + rng.uniform(10, 60)
        cv2.ellipse(extra, (int(hx * _ONE), int(hy * _ONE)), (int(rng.uniform(14, 24) * _ONE), int(rng.uniform(4, 7) * _ONE)),
                    rng.uniform(-25, 5), 0, 360, 230, -1, cv2.LINE_AA, _SHIFT)
        dens += cv2.GaussianBlur(extra, (0, 0), 1.2).astype(np.float32) * (rng.uniform(0.22, 0.35) / 255.0)
        below_skull = _sig((ys - yb - 20.0) / 10.0)
        x_skin_back = x_post - rng.uniform(140.0, 220.0)  # back of the neck, air behind it
        dens -= (far + 0.02) * _sig((x_skin_back - xs) / 4.0) * below_skull
        x_skin_front = x_ant + gap + width + rng.uniform(110.0, 200.0)  # front of the neck
        chin_y = float(yy[-1]) + 40.0 if yy is not None else yb + 150.0
        dens -= (near + 0.05) * _sig((xs - x_skin_front) / 4.0) * _sig((ys - chin_y) / 10.0)
        y_sh = float(levels[-1]["pts"][5, 1]) + rng.uniform(-40.0, 40.0)  # shoulder shadow, low
        dens += rng.uniform(0.15, 0.30) * _sig((ys - y_sh) / 30.0) * _sig((x_ant + 40.0 - xs) / 60.0)

    # --- imaging chain -------------------------------------------------------------------------
    dens = cv2.GaussianBlur(dens, (0, 0), rng.uniform(0.7, 1.4))
    dens += rng.uniform(-0.06, 0.06) * (ys / H - 0.5)
    gain = rng.uniform(0.9, 1.15)
    bias = rng.uniform(-0.04, 0.04)
    gamma = rng.uniform(0.8, 1.2)
    img = np.clip(dens * gain + bias, 0.0, 1.0) ** gamma * 255.0
    img += rng.standard_normal(size, dtype=np.float32) * rng.uniform(1.5, 4.5)
    img += _lowres_noise(rng, size, 2) * rng.uniform(0.0, 3.0)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


@dataclass
class Phantom:
    """One synthetic ROI with its ground truth.

    image: ``(600, 250)`` uint8 grey ROI; landmarks: ``(19, 2)`` float64 ``(x, y)`` ROI pixels
    (pixel-centre convention); stage: the CS stage 1..6 it was *generated for*; seed: its seed."""

    image: np.ndarray
    landmarks: np.ndarray
    stage: int
    seed: int


def render_phantom(seed: int, stage: int | None = None, size: tuple[int, int] = IMAGE_SIZE) -> Phantom:
    """Render one phantom, deterministic for ``seed`` (and ``stage``).

    ``stage=None`` draws it uniformly from 1..6 with the seed. ``size`` is ``(height, width)``;
    landmarks are laid out for the 600×250 ROI."""
    rng = np.random.default_rng(seed)
    if stage is None:
        stage = int(rng.integers(1, 7))
    geo = _sample_geometry(rng, int(stage))
    image = _render(geo, rng, tuple(size))
    return Phantom(image=image, landmarks=geo["landmarks"], stage=int(stage), seed=int(seed))


def _derived_seed(seed: int, i: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1, dtype=np.uint32)[0])


def generate_phantoms(n: int, seed: int) -> Iterator[Phantom]:
    """Yield ``n`` phantoms; phantom ``i`` uses a seed derived from ``(seed, i)`` and stage
    ``i % 6 + 1`` (balanced: all six stages appear for ``n ≥ 6``)."""
    for i in range(int(n)):
        yield render_phantom(_derived_seed(seed, i), stage=i % 6 + 1)


def write_phantom_dataset(out_dir: Path, n: int, seed: int, progress: bool = False) -> Path:
    """Write ``out_dir/images/phantom_00000.png …`` and ``out_dir/labels.csv`` (study format
    ``image_name,1_x,…,19_y`` with 3-decimal coordinates plus ``cs_stage``). Byte-identical for
    the same seed. Returns the CSV path."""
    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = [",".join(["image_name", *csv_columns(), "cs_stage"])]
    for i, ph in enumerate(generate_phantoms(n, seed)):
        name = f"phantom_{i:05d}.png"
        if not cv2.imwrite(str(img_dir / name), ph.image):
            raise OSError(f"could not write {img_dir / name}")
        coords = ",".join(f"{v:.3f}" for v in ph.landmarks.reshape(-1))
        lines.append(f"{name},{coords},{ph.stage}")
        if progress:
            done = i + 1
            bar = "#" * (30 * done // max(n, 1))
            sys.stderr.write(f"\rphantoms [{bar:<30}] {done}/{n}")
            sys.stderr.flush()
    if progress:
        sys.stderr.write("\n")
    csv_path = out_dir / "labels.csv"
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    return csv_path


# --------------------------------------------------------------------------------------------
# Wide phantoms: the neck around the study ROI, at varied scale (docs/architecture.md#phantoms)
# --------------------------------------------------------------------------------------------
NOMINAL_ROI_SPACING_MM = 0.25  # mm per study-ROI pixel (docs/architecture.md#frames-and-conventions)


@dataclass
class WidePhantom:
    """A phantom with the neck around the study ROI, at a chosen pixel spacing.

    image: ``(H, W)`` uint8; landmarks: ``(19, 2)`` float64 ``(x, y)`` in that image (pixel-centre
    convention); roi_box: ``(x0, y0, x1, y1)`` pixel-edge box of the study's 250×600 ROI in the image
    (where the models expect C2–C4: what an ROI finder must return); landmark_box: the tight
    ``(x0, y0, x1, y1)`` box of the 19 landmarks; spacing_mm: mm per image pixel (the ROI is rendered
    at the nominal 0.25 mm/px and scaled); stage and seed as :class:`Phantom`."""

    image: np.ndarray
    landmarks: np.ndarray
    roi_box: tuple[float, float, float, float]
    landmark_box: tuple[float, float, float, float]
    spacing_mm: float
    stage: int
    seed: int


def render_wide_phantom(seed: int, stage: int | None = None, spacing_mm: float | None = None,
                        margins: tuple[int, int, int, int] | None = None) -> WidePhantom:
    """Render a phantom with wide context: skull base, C1 (anterior arch and posterior arch), C2 with
    the dens, C2–C7 bodies, mandible, hyoid, airway and the neck's skin lines, around the study ROI.

    Deterministic for ``(seed, stage, spacing_mm, margins)``. ``stage=None`` draws 1..6 from the seed.
    ``spacing_mm``: mm per output pixel (``None``: drawn from 0.17–0.38 mm/px, i.e. the ROI scaled by
    0.65–1.5). ``margins = (left, top, right, bottom)``: ROI-px of context around the 250×600 ROI
    (``None``: drawn; top 120–300 for the skull, bottom 120–260 for C5–C7).

    The ROI part is laid out like :func:`render_phantom`'s (same landmark sampler), so the models'
    expectations hold inside ``roi_box``; rendering is at 0.25 mm/px, then resized (area/cubic)."""
    rng = np.random.default_rng([int(seed), 8])
    if stage is None:
        stage = int(rng.integers(1, 7))
    if margins is None:
        margins = (int(rng.integers(60, 220)), int(rng.integers(120, 300)), int(rng.integers(120, 320)),
                   int(rng.integers(120, 260)))
    left, top, right, bottom = (int(v) for v in margins)
    if min(margins) < 0:
        raise ValueError(f"margins must be ≥ 0, got {margins}")
    geo = _sample_geometry(rng, int(stage))
    off = np.array([left, top], np.float64)
    geo["landmarks"] = geo["landmarks"] + off
    geo["frames"] = {k: (v[0] + off, *v[1:]) for k, v in geo["frames"].items()}
    size = (IMAGE_SIZE[0] + top + bottom, IMAGE_SIZE[1] + left + right)
    image = _render(geo, rng, size, offset=(left, top), n_below=3, wide=True)
    if spacing_mm is None:
        spacing_mm = NOMINAL_ROI_SPACING_MM / float(rng.uniform(0.65, 1.5))
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    scale = NOMINAL_ROI_SPACING_MM / float(spacing_mm)
    H, W = size
    out_w, out_h = max(1, int(round(W * scale))), max(1, int(round(H * scale)))
    sx, sy = out_w / W, out_h / H  # the exact factors of the resize
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    image = cv2.resize(image, (out_w, out_h), interpolation=interp)
    if scale > 1:  # detector noise at the output resolution, not magnified blobs
        image = np.clip(image.astype(np.float32) + rng.standard_normal(image.shape, dtype=np.float32)
                        * rng.uniform(1.0, 3.0) + 0.5, 0, 255).astype(np.uint8)
    pts = (geo["landmarks"] + 0.5) * np.array([sx, sy]) - 0.5
    roi_box = (left * sx, top * sy, (left + IMAGE_SIZE[1]) * sx, (top + IMAGE_SIZE[0]) * sy)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return WidePhantom(image=image, landmarks=pts, roi_box=tuple(float(v) for v in roi_box),
                       landmark_box=(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])),
                       spacing_mm=float(NOMINAL_ROI_SPACING_MM / np.sqrt(sx * sy)), stage=int(stage),
                       seed=int(seed))


def roi_crop_affine(box, out_size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """2×3 affine from image px to a ``(height, width)`` crop of the pixel-edge box ``(x0, y0, x1, y1)``
    (pixel-centre convention: ``u = (x + 0.5 − x0)·w/(x1 − x0) − 0.5``)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = out_size
    ax, ay = w / (x1 - x0), h / (y1 - y0)
    return np.array([[ax, 0.0, (0.5 - x0) * ax - 0.5], [0.0, ay, (0.5 - y0) * ay - 0.5]])


def wide_phantom_roi(seed: int, stage: int | None = None, scale_range: float = 0.35,
                     shift_frac: tuple[float, float] = (0.15, 0.2)) -> Phantom:
    """A study-frame ROI ``(600, 250)`` cut from a :func:`render_wide_phantom` with a jittered box:
    the box's size varies by ±``scale_range`` (so the vertebrae appear 0.74–1.54× their usual size)
    and its centre by ±``shift_frac`` of its (width, height), exposing C1 and the skull base or C5–C6
    instead of reflected borders. Landmarks ``(19, 2)`` follow the same affine exactly."""
    rng = np.random.default_rng([int(seed), 9])
    wp = render_wide_phantom(seed, stage=stage)
    x0, y0, x1, y1 = wp.roi_box
    s = 1.0 + float(rng.uniform(-scale_range, scale_range))
    cx = 0.5 * (x0 + x1) + float(rng.uniform(-1, 1)) * shift_frac[0] * (x1 - x0)
    cy = 0.5 * (y0 + y1) + float(rng.uniform(-1, 1)) * shift_frac[1] * (y1 - y0)
    hw, hh = 0.5 * s * (x1 - x0), 0.5 * s * (y1 - y0)
    m = roi_crop_affine((cx - hw, cy - hh, cx + hw, cy + hh))
    roi = cv2.warpAffine(wp.image, m, (IMAGE_SIZE[1], IMAGE_SIZE[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    pts = wp.landmarks @ m[:, :2].T + m[:, 2]
    return Phantom(image=roi, landmarks=pts, stage=wp.stage, seed=int(seed))

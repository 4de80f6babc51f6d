"""Automatic ROI: find C2–C4 in a full lateral cephalogram and cut the study's 250×600 ROI around them.

No extra model: the shipped heatmap U-Net is fully convolutional, so it runs once over the whole
image brought to the scale it was trained at (the study ROI's nominal 0.25 mm/px, then the model's
600→384 resize), and its 19 heatmaps are scored against the mean landmark shape at every position
(a template over the 19 channels: ``score(t) = Σ_k maxpool(H_k)(t + s·R·ref_k)``, several shape
scales and rotations). The best position is where all 19 channels agree on one C2–C4 configuration,
which teeth, the skull base or C5–C6 alone cannot give.

Frames and conventions
----------------------
* Input image: greyscale ``(H, W)``, any size; points ``(x, y)`` float px, pixel-centre convention
  (``cvs_core.preprocess``).
* The ROI frame is the study's: 250 wide × 600 high, patient facing right, C2–C4 placed where
  ``landmarks.MEAN_SHAPE_ROI`` puts them (≈ the study crop of its own cephalograms).
* :class:`RoiResult.affine` is the 3×3 affine input px → ROI px. It may contain a mirror
  (``x ↦ −x``) for patients facing left, so ROI landmarks map back with its inverse.
* Pixel spacing ``spacing_mm`` is mm per input pixel (``None`` = unknown: then it is guessed from the
  image height, a cephalogram being ≈ ``field_mm`` tall, and the shape scale is searched).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from cvs_core.landmarks import MEAN_SHAPE_ROI, ROI_SIZE
from cvs_core.preprocess import apply_affine, invert_affine, resize_affine, translation

#: Nominal spacing of the study ROI (docs/architecture.md#frames-and-conventions): mm per ROI pixel.
ROI_MM_PER_PX = 0.25


@dataclass
class AutoRoiConfig:
    """Parameters of the search. Distances in ROI px unless stated.

    field_mm: assumed image height in mm when the spacing is unknown (lateral cephalograms are
      ≈ 200–300 mm tall); the shape-scale search then covers the error of that guess.
    scales: shape scales tried relative to the mean shape (spacing known: patient size only).
    scales_unknown_spacing: the same when the spacing is guessed.
    rotations_deg: rotations of the template tried (the ROI itself stays axis-aligned).
    pool_px: each heatmap is max-pooled over a (2·pool+1)² window (model px) before scoring, so the
      template tolerates shape variation.
    mirror: ``"auto"`` (the orientation :func:`facing_left_cue` gives when it is clear, i.e.
      ``|cue| ≥ cue_margin``; both orientations searched otherwise), ``"never"``, ``"always"`` (treat
      the image as facing left), ``"both"`` (search both, keep the better decoding).
    fixed_scale_when_spacing_known: with a known spacing the ROI scale is the study's 0.25 mm/px
      (as the models were trained); otherwise it follows the fitted shape size.
    hypotheses: coarse placements checked with the U-Net on their own ROI (one batch).
    refine_steps: re-centring passes on the decoded landmarks (skipped when the shift would be
      below ``refine_min_shift`` ROI px).
    """

    field_mm: float = 250.0
    scales: tuple[float, ...] = (0.85, 1.0, 1.15)
    scales_unknown_spacing: tuple[float, ...] = (0.7, 0.8, 0.9, 1.0, 1.12, 1.25, 1.4)
    rotations_deg: tuple[float, ...] = (-10.0, 0.0, 10.0)
    pool_px: int = 2
    mirror: str = "auto"
    cue_margin: float = 0.1
    fixed_scale_when_spacing_known: bool = True
    hypotheses: int = 3
    refine_steps: int = 1
    refine_min_shift: float = 4.0

    def __post_init__(self):
        if self.mirror not in ("auto", "never", "always", "both"):
            raise ValueError(f"mirror must be auto, never, always or both, got {self.mirror!r}")
        if not self.field_mm > 0:
            raise ValueError(f"field_mm must be > 0, got {self.field_mm}")


@dataclass
class RoiResult:
    """Where C2–C4 were found.

    box: ``(x0, y0, x1, y1)`` of the ROI in input px (axis-aligned; may run past the image, and for a
      mirrored ROI x0 > x1 is never used: the box is ordered, the mirror lives in ``affine``).
    affine: 3×3, input px → ROI px (250×600 frame, patient facing right).
    roi_image: ``(600, 250)`` uint8, the cut ROI (black where the box runs past the image).
    landmarks: ``(19, 2)`` coarse C2–C4 template position in input px.
    scale: ROI px per input px. mirrored: the patient faces left (ROI is mirrored).
    score: mean per-channel heatmap support of the template, in [0, 1].
    confidence: ``score`` mapped to [0, 1] (1 ≈ the support the model gives on its own ROIs).
    spacing_mm: the spacing used (given or guessed); spacing_known: whether it was given.
    ms: wall time of the search in milliseconds. notes: remarks (guessed spacing, mirrored, …).
    """

    box: tuple[float, float, float, float]
    affine: np.ndarray
    roi_image: np.ndarray
    landmarks: np.ndarray
    scale: float
    mirrored: bool
    score: float
    confidence: float
    spacing_mm: float
    spacing_known: bool
    ms: float
    notes: list[str] = field(default_factory=list)

    def to_json_dict(self) -> dict:
        return {"box": [round(float(v), 1) for v in self.box], "scale": round(self.scale, 5),
                "mirrored": self.mirrored, "confidence": round(self.confidence, 3),
                "score": round(self.score, 4), "spacing_mm": round(self.spacing_mm, 5),
                "spacing_known": self.spacing_known, "ms": round(self.ms, 1), "notes": list(self.notes)}


def mirror_affine(width: int) -> np.ndarray:
    """3×3 affine of a left–right flip of an image ``width`` px wide (pixel centres: x ↦ W − 1 − x)."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def facing_left_cue(grey: np.ndarray) -> float:
    """> 0 when the patient probably faces left. The face side of a lateral cephalogram has air in
    front of the profile (dark), the back of the skull and neck fill the other side: compare the mean
    brightness of the outer fifths (``(H, W)`` uint8 → float in [−1, 1])."""
    small = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float64)
    left, right = small[:, :13].mean(), small[:, -13:].mean()
    return float((right - left) / max(left + right, 1e-6))


def placement_affine(centre_work, scale: float, mirrored: bool, width: int, centre_roi) -> np.ndarray:
    """3×3 input px → ROI px: the point ``centre_work`` of the *working* image (the input, mirrored
    when ``mirrored``; ``width`` = input width) lands on ``centre_roi`` at ``scale`` ROI px per px."""
    work_to_roi = translation(*(np.asarray(centre_roi, float) - scale * np.asarray(centre_work, float))) \
        @ np.diag([scale, scale, 1.0])
    return work_to_roi @ (mirror_affine(width) if mirrored else np.eye(3))


class Localizer:
    """Runs a heatmap U-Net (a loaded :class:`~cvs_core.predict.Predictor`) fully convolutionally
    over a whole image. ``heatmaps(model_image (h, w) float32 in [0,1])`` → ``(h, w, 19)``."""

    MAX_SIDE = 1024  # model px: a bigger canvas is cut (the ROI scale bounds what is useful)

    def __init__(self, predictor):
        if predictor.codec.kind != "heatmap":
            raise ValueError(f"auto ROI needs a heatmap U-Net as localiser, {predictor.name} is {predictor.codec.kind}")
        self.predictor = predictor
        kwargs = predictor.manifest.get("builder_kwargs", {})
        self.builder_kwargs = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                           for k, v in kwargs.items() if k != "input_size"))
        self.input_size = tuple(predictor.config.input_size)  # (384, 160)
        self._weights = None
        self._models: dict = {}

    @property
    def model_per_roi(self) -> tuple[float, float]:
        """(sy, sx): model px per ROI px."""
        return self.input_size[0] / ROI_SIZE[0], self.input_size[1] / ROI_SIZE[1]

    def _model_for(self, shape):
        """A compiled forward function for inputs ``(B, *shape, 1)`` (a few shapes are kept)."""
        fn = self._models.get(shape)
        if fn is None:
            import keras

            from cvs_core.networks import build_unet_heatmap

            if self._weights is None:
                self._weights = self.predictor.model.get_weights()
            m = build_unet_heatmap(input_size=shape, **dict(self.builder_kwargs))
            m.set_weights(self._weights)
            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                spec = tf.TensorSpec((None, *shape, 1), tf.float32)
                f = tf.function(tf.autograph.experimental.do_not_convert(lambda x: m(x, training=False)),
                                input_signature=[spec])
                fn = lambda x: f(x).numpy()  # noqa: E731
            else:
                fn = m.predict_on_batch
            if len(self._models) >= 4:
                self._models.pop(next(iter(self._models)))
            self._models[shape] = fn
        return fn

    def heatmaps(self, batch: np.ndarray) -> np.ndarray:
        """``(B, h, w)`` float32 (h, w multiples of 16) → heatmaps ``(B, h, w, 19)``. Runs on the
        predictor's inference thread (building a network for a new shape included), so concurrent
        callers are serialised."""
        shape = tuple(batch.shape[1:3])
        run = lambda: np.asarray(self._model_for(shape)(batch[..., None]), np.float32)  # noqa: E731
        return self.predictor._worker.submit(run).result()


def _to_model_scale(grey: np.ndarray, roi_per_input: float, model_per_roi: tuple[float, float],
                    clahe_clip: float, clahe_tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole image → model-scale canvas: INTER_AREA to ROI scale, CLAHE with tiles of the ROI's tile
    size (600/tile × 250/tile ROI px), then to model scale. Returns ``(canvas (h16, w16) float32 in
    [0, 1], 3×3 affine input px → canvas px)``."""
    h, w = grey.shape
    rh, rw = max(16, int(round(h * roi_per_input))), max(16, int(round(w * roi_per_input)))
    roi_scaled = cv2.resize(grey, (rw, rh), interpolation=cv2.INTER_AREA if roi_per_input < 1 else cv2.INTER_LINEAR)
    tiles = (max(1, int(round(rw / (ROI_SIZE[1] / clahe_tile)))), max(1, int(round(rh / (ROI_SIZE[0] / clahe_tile)))))
    roi_scaled = cv2.createCLAHE(clipLimit=float(clahe_clip), tileGridSize=tiles).apply(roi_scaled)
    sy, sx = model_per_roi
    mh, mw = max(16, int(round(rh * sy))), max(16, int(round(rw * sx)))
    m = cv2.resize(roi_scaled, (mw, mh), interpolation=cv2.INTER_AREA)
    # canvas sides rounded up to multiples of 64 (the network needs 16; coarser steps mean fewer
    # distinct shapes, each of which costs one network build and trace)
    h16 = min(-(-mh // 64) * 64, Localizer.MAX_SIDE)
    w16 = min(-(-mw // 64) * 64, Localizer.MAX_SIDE)
    canvas = np.zeros((h16, w16), np.float32)
    canvas[:min(mh, h16), :min(mw, w16)] = m[:h16, :w16] / 255.0
    affine = resize_affine((rh, rw), (mh, mw)) @ resize_affine((h, w), (rh, rw))
    return canvas, affine


def template_search(heat: np.ndarray, ref: np.ndarray, scales, rotations_deg, pool_px: int,
                    top: int = 3, nms_px: float = 15.0) -> list[dict]:
    """Best placements of the 19-point template ``ref (19, 2)`` (model px, centred at 0) on heatmaps
    ``heat (h, w, 19)``: ``score(t) = mean_k maxpool(H_k)(t + M·ref_k)`` over translations ``t`` for
    each similarity ``M`` (scale × rotation).

    Returns up to ``top`` hypotheses, best first, whose centres are ≥ ``nms_px`` apart:
    ``{"score": float, "points": (19, 2) model px, "shape_scale": float}``."""
    size = 2 * pool_px + 1
    pooled = cv2.dilate(np.ascontiguousarray(heat), np.ones((size, size), np.uint8)) if pool_px else heat
    # search on a grid `step` px apart (the pooling covers the gaps); channel-major for fast slices
    step = max(1, pool_px)
    pooled = np.ascontiguousarray(np.clip(pooled[::step, ::step], 0.0, 1.0).transpose(2, 0, 1))
    k, h, w = pooled.shape
    ref = np.asarray(ref, np.float64) / step
    peaks = []
    kernel = np.ones((max(1, int(nms_px / step)),) * 2, np.uint8)
    for s in scales:
        for deg in rotations_deg:
            a = np.deg2rad(deg)
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * s
            off = np.rint(ref @ rot.T).astype(int)  # (19, 2) integer offsets (x, y)
            acc = np.zeros((h, w), np.float32)
            for c in range(k):
                dx, dy = off[c]
                # acc[y, x] += pooled[y + dy, x + dx, c] where inside
                ys0, ys1 = max(0, -dy), min(h, h - dy)
                xs0, xs1 = max(0, -dx), min(w, w - dx)
                if ys1 > ys0 and xs1 > xs0:
                    acc[ys0:ys1, xs0:xs1] += pooled[c, ys0 + dy:ys1 + dy, xs0 + dx:xs1 + dx]
            acc /= k
            local = (acc >= cv2.dilate(acc, kernel)) & (acc > 0)
            ys, xs = np.nonzero(local)
            order = np.argsort(-acc[ys, xs])[:top]
            for y, x in zip(ys[order], xs[order]):
                peaks.append((float(acc[y, x]), (np.array([x, y], float) + ref @ rot.T) * step, float(s)))
    peaks.sort(key=lambda p: -p[0])
    out: list[dict] = []
    for sc, pts, s in peaks:
        c = pts.mean(0)
        if all(np.linalg.norm(c - o["points"].mean(0)) >= nms_px for o in out):
            out.append({"score": sc, "points": pts, "shape_scale": s})
            if len(out) == top:
                break
    return out


class AutoRoi:
    """Finds the ROI with a heatmap U-Net :class:`~cvs_core.predict.Predictor` (the localiser).

    Coarse to fine: (1) the U-Net over the whole image at model scale + the template search gives a
    few candidate placements (one orientation; the mirrored one too when the best score is low);
    (2) each candidate's ROI is cut and run through the U-Net as a batch, decoded with the shape
    prior, and the candidate whose decoded landmarks are most confident wins; (3) the box is
    re-centred on those landmarks (and re-scaled when the spacing is unknown) once more."""

    def __init__(self, localizer_predictor, config: AutoRoiConfig | None = None):
        self.localizer = Localizer(localizer_predictor)
        self.predictor = localizer_predictor
        self.config = config or AutoRoiConfig()
        pc = localizer_predictor.config
        self.clahe = (pc.clahe_clip, pc.clahe_tile)
        self._ref_roi = np.asarray(MEAN_SHAPE_ROI, np.float64)

    def _coarse(self, grey: np.ndarray, roi_per_input: float, scales, mirrored: bool) -> list[dict]:
        """One orientation → template hypotheses with ``points`` in the *working* image's px."""
        model_per_roi = self.localizer.model_per_roi
        canvas, to_canvas = _to_model_scale(grey, roi_per_input, model_per_roi, *self.clahe)
        heat = self.localizer.heatmaps(canvas[None])[0]
        ref = apply_affine(np.diag([model_per_roi[1], model_per_roi[0], 1.0]), self._ref_roi)
        ref = ref - ref.mean(0)
        hyps = template_search(heat, ref, scales, self.config.rotations_deg, self.config.pool_px,
                               top=self.config.hypotheses)
        back = invert_affine(to_canvas)
        for hyp in hyps:
            hyp["points"] = apply_affine(back, hyp["points"])
            hyp["mirrored"] = mirrored
        return hyps

    def _affine(self, centre_work: np.ndarray, scale: float, mirrored: bool, width: int) -> np.ndarray:
        return placement_affine(centre_work, scale, mirrored, width, self._ref_roi.mean(0))

    def _fine(self, grey: np.ndarray, affines: list[np.ndarray], scales: list[float]):
        """Cut and run the ROIs → ``[(roi_image, landmarks_roi (19, 2), confidence (19,))]``."""
        from cvs_core.preprocess import preprocess

        config = self.predictor.config.replace(roi="none", roi_scale=1.0)
        rois = [cut_roi(grey, a, s) for a, s in zip(affines, scales)]
        pres = [preprocess(r, config) for r in rois]
        raw = self.predictor._run(np.stack([p.image for p in pres]))
        out = []
        for roi_img, pre, r in zip(rois, pres, raw):
            pts, conf = self.predictor.codec.decode(r)
            out.append((roi_img, pre.model_to_roi(pts), np.asarray(conf, np.float64)))
        return out

    @staticmethod
    def quality(landmarks_roi: np.ndarray, confidence: np.ndarray) -> float:
        """Decoding quality of one candidate ROI in [0, 1]: the mean landmark confidence (0 for
        points the shape prior had to fill in), halved when the outline fails
        :func:`check_plausibility`."""
        q = float(np.mean(np.nan_to_num(confidence, nan=0.0)))
        return q if check_plausibility(landmarks_roi).ok else 0.5 * q

    def find(self, image: np.ndarray, spacing_mm: float | None = None) -> RoiResult:
        """Greyscale ``(H, W)`` full cephalogram → :class:`RoiResult`. ``spacing_mm``: mm per input px."""
        from cvs_core.preprocess import greyscale_2d, to_uint8

        t0 = time.perf_counter()
        grey = greyscale_2d(image, "an automatic ROI", 64,
                            hint="; it needs a full cephalogram: pass roi='none' for an image that already is the ROI")
        grey = to_uint8(grey)
        h, w = grey.shape
        cfg = self.config
        notes = []
        known = spacing_mm is not None
        if known:
            spacing = float(spacing_mm)
            if not (np.isfinite(spacing) and spacing > 0):
                raise ValueError(f"pixel spacing must be > 0 mm/px, got {spacing_mm}")
            scales = cfg.scales
        else:
            spacing = cfg.field_mm / h
            scales = cfg.scales_unknown_spacing
            notes.append(f"pixel spacing unknown: guessed {spacing:.3f} mm/px from the image height "
                         f"(≈ {cfg.field_mm:g} mm field), shape scale searched")
        roi_per_input = spacing / ROI_MM_PER_PX
        fixed_scale = known and cfg.fixed_scale_when_spacing_known

        # 1. coarse: whole image, template hypotheses
        cue = facing_left_cue(grey)
        order = {"never": [False], "always": [True], "both": [False, True],
                 "auto": [cue > 0] if abs(cue) >= cfg.cue_margin else [cue > 0, cue <= 0]}[cfg.mirror]
        hyps: list[dict] = []
        for k, mirrored in enumerate(order):
            img = np.ascontiguousarray(grey[:, ::-1]) if mirrored else grey
            hyps += self._coarse(img, roi_per_input, scales, mirrored)  # top hypotheses of each orientation

        # 2. fine: each hypothesis' ROI through the U-Net, most confident decoding wins
        def scale_of(hyp):
            return roi_per_input if fixed_scale else roi_per_input / hyp["shape_scale"]

        affines = [self._affine(hp["points"].mean(0), scale_of(hp), hp["mirrored"], w) for hp in hyps]
        fine = self._fine(grey, affines, [scale_of(hp) for hp in hyps])
        quality = [self.quality(pts, conf) for _, pts, conf in fine]
        b = int(np.argmax(quality))
        best, affine, scale = hyps[b], affines[b], scale_of(hyps[b])
        mirrored = best["mirrored"]
        result = fine[b]
        final_quality = quality[b]

        # 3. re-centre (and re-scale without a known spacing) on the decoded landmarks; a step is
        # kept only when the decoding on the new ROI is at least as good
        for _ in range(cfg.refine_steps):
            _, pts_roi, conf = result
            wgt = np.maximum(conf, 0.05)
            shift = (wgt[:, None] * (self._ref_roi - pts_roi)).sum(0) / wgt.sum()
            s_rel = 1.0
            if not fixed_scale:
                d_ref = np.linalg.norm(self._ref_roi - self._ref_roi.mean(0), axis=1).mean()
                d_pts = np.linalg.norm(pts_roi - pts_roi.mean(0), axis=1).mean()
                s_rel = float(np.clip(d_ref / max(d_pts, 1e-6), 0.8, 1.25))
            if np.hypot(*shift) < cfg.refine_min_shift and abs(s_rel - 1.0) < 0.02:
                break  # already centred: another pass would change nothing measurable
            c = self._ref_roi.mean(0)
            # new ROI = scale s_rel about the shape centre, after the shift
            adjust = translation(*c) @ np.diag([s_rel, s_rel, 1.0]) @ translation(*(-c + shift))
            new = self._fine(grey, [adjust @ affine], [scale * s_rel])[0]
            q = self.quality(new[1], new[2])
            if q < final_quality:
                break
            affine, scale, result, final_quality = adjust @ affine, scale * s_rel, new, q
        roi_image, pts_roi, conf = result
        if mirrored:
            notes.append("patient faces left: the ROI is mirrored (landmarks are mapped back)")
        return _result(affine, roi_image, pts_roi, scale, mirrored, float(best["score"]),
                       float(np.clip(final_quality, 0.0, 1.0)), spacing, known, (time.perf_counter() - t0) * 1e3, notes)


def _box_of(affine: np.ndarray) -> tuple[float, float, float, float]:
    """Axis-aligned ``(x0, y0, x1, y1)`` input-px box (pixel edges) of the 250×600 ROI under ``affine``."""
    corners = apply_affine(invert_affine(affine), np.array([[-0.5, -0.5], [ROI_SIZE[1] - 0.5, ROI_SIZE[0] - 0.5]]))
    x0, x1 = sorted(corners[:, 0])
    y0, y1 = sorted(corners[:, 1])
    return (float(x0 + 0.5), float(y0 + 0.5), float(x1 + 0.5), float(y1 + 0.5))


def _result(affine, roi_image, pts_roi, scale, mirrored, score, confidence, spacing, known, ms, notes) -> RoiResult:
    return RoiResult(box=_box_of(affine), affine=affine, roi_image=roi_image,
                     landmarks=apply_affine(invert_affine(affine), pts_roi), scale=float(scale),
                     mirrored=bool(mirrored), score=score, confidence=confidence, spacing_mm=spacing,
                     spacing_known=known, ms=ms, notes=notes)


def roi_around(image: np.ndarray, centre: tuple[float, float], scale: float, mirrored: bool = False,
               centre_roi: tuple[float, float] | None = None, spacing_mm: float | None = None) -> RoiResult:
    """A :class:`RoiResult` for a given placement instead of a search (a hand-drawn box, a box from
    known landmarks): ``centre`` (x, y) input px lands on ``centre_roi`` (default: the mean shape's
    centre, where the models expect C2–C4) of the 250×600 ROI, at ``scale`` ROI px per input px,
    mirrored when the patient faces left. ``image``: greyscale ``(H, W)``. ``confidence`` is NaN."""
    from cvs_core.preprocess import to_uint8

    grey = to_uint8(np.asarray(image))
    if grey.ndim != 2:
        raise ValueError(f"expected a greyscale (H, W) image, got shape {grey.shape}")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"ROI scale must be > 0, got {scale}")
    ref_c = np.asarray(MEAN_SHAPE_ROI, np.float64).mean(0) if centre_roi is None else np.asarray(centre_roi, float)
    c = np.asarray(centre, np.float64)
    w = grey.shape[1]
    if mirrored:
        c = apply_affine(mirror_affine(w), c)
    affine = placement_affine(c, scale, mirrored, w, ref_c)
    roi_image = cut_roi(grey, affine, scale)
    sp = float(spacing_mm) if spacing_mm is not None else float(ROI_MM_PER_PX * scale)
    return _result(affine, roi_image, np.full((len(MEAN_SHAPE_ROI), 2), np.nan), scale, mirrored, float("nan"),
                   float("nan"), sp, spacing_mm is not None, 0.0, ["ROI placed by hand"])


def cut_roi(grey: np.ndarray, affine: np.ndarray, scale: float) -> np.ndarray:
    """The ``(600, 250)`` uint8 ROI of ``grey (H, W)`` under ``affine`` (3×3 input → ROI, a scale by
    ``scale``, an optional mirror and a translation). Downscaling uses INTER_AREA on the whole image
    first (as the study's crop did), then a linear warp; black outside the image."""
    h, w = grey.shape
    pre = np.eye(3)
    src = grey
    if scale < 1:
        sh, sw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        src = cv2.resize(grey, (sw, sh), interpolation=cv2.INTER_AREA)
        pre = resize_affine((h, w), (sh, sw))
    m = affine @ invert_affine(pre)
    return cv2.warpAffine(src, m[:2], (ROI_SIZE[1], ROI_SIZE[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def roi_from_box(image: np.ndarray, box, mirrored: bool = False, spacing_mm: float | None = None) -> RoiResult:
    """A :class:`RoiResult` from a box ``(x0, y0, x1, y1)`` in input px (e.g. the auto box after the
    user moved or resized it on the Compare page): the ROI keeps the study's 250×600 proportions,
    its scale set by the box height, centred on the box centre; ``mirrored`` for patients facing
    left. Pass it as ``Predictor.predict(image, roi=result)``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {tuple(box)}")
    scale = ROI_SIZE[0] / (y1 - y0)
    centre = ((x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5)  # pixel-edge box → pixel-centre coordinates
    roi_centre = ((ROI_SIZE[1] - 1) / 2, (ROI_SIZE[0] - 1) / 2)
    return roi_around(image, centre, scale, mirrored=mirrored, centre_roi=roi_centre, spacing_mm=spacing_mm)


def preprocess_with_roi(image: np.ndarray, roi: RoiResult, config):
    """Model input for ``image (H, W)`` through a found ROI: the model's own preprocessing (a
    :class:`~cvs_core.preprocess.PreprocessConfig`, its ROI setting ignored) run on ``roi.roi_image``,
    with the affines composed so ``Preprocessed.to_original`` maps back to ``image``'s pixels
    (mirror included). Returns :class:`~cvs_core.preprocess.Preprocessed`."""
    from cvs_core.preprocess import preprocess

    pre = preprocess(roi.roi_image, config.replace(roi="none", roi_scale=1.0))
    pre.affine = pre.affine @ roi.affine
    pre.roi_affine = pre.roi_affine @ roi.affine
    return pre


# --- plausibility of a decoded C2–C4 configuration ------------------------------------------------

@dataclass
class Plausibility:
    """Whether 19 landmarks look like three consecutive vertebrae C2, C3, C4 of plausible sizes.

    ok: every rule passed (rules with missing landmarks are skipped). failed: one line per failed
    rule. measures: the numbers the rules used (ratios, in units of the mean C3/C4 body height or
    width; ``c3_width_roi`` in ROI px).
    """

    ok: bool
    failed: list[str]
    measures: dict

    @property
    def message(self) -> str:
        return "C2–C4 outline plausible" if self.ok else "implausible C2–C4 outline: " + "; ".join(self.failed)


#: Rule limits (engineering defaults, checked to pass on the 15 public label sets and the dev labels).
PLAUSIBILITY_LIMITS = {
    "disc_gap": (-0.25, 0.9),        # vertebra gap / mean body height (a skipped vertebra is > 1)
    "height_ratio": (0.55, 1.8),     # C3 height / C4 height
    "width_ratio": (0.65, 1.5),      # C3 inferior chord / C4 inferior chord
    "c2_width_ratio": (0.55, 1.7),   # C2 inferior chord / C3 inferior chord
    "aspect": (0.3, 2.0),            # body height / body width, C3 and C4
    "c3_width_roi": (0.5, 2.0),      # C3 inferior chord / the mean shape's (ROI scale check)
}


def check_plausibility(landmarks: np.ndarray, roi_frame: bool = True) -> Plausibility:
    """Rules on ``landmarks (19, 2)`` (x, y) px (0-based order of ``landmarks.NAMES``): the borders
    come in the order C2 inferior < C3 superior < C3 inferior < C4 superior < C4 inferior along the
    column axis, the two discs are thinner than a vertebra (else a vertebra was skipped or two
    outlines collapsed), C3/C4 heights and widths and the C2 chord are of similar size, and — with
    ``roi_frame`` (points in the 250×600 study ROI) — C3 has about the mean shape's width."""
    p = np.asarray(landmarks, np.float64).reshape(-1, 2)
    lim = PLAUSIBILITY_LIMITS
    failed: list[str] = []
    measures: dict = {}

    def mid(a, b):
        return 0.5 * (p[a] + p[b])

    def chord(a, b):
        return float(np.linalg.norm(p[a] - p[b]))

    borders = {"C2 inferior": mid(0, 2), "C3 superior": mid(3, 5), "C3 inferior": mid(8, 10),
               "C4 superior": mid(11, 13), "C4 inferior": mid(16, 18)}
    finite = {k: v for k, v in borders.items() if np.isfinite(v).all()}
    if len(finite) < 3:
        return Plausibility(False, ["fewer than 3 vertebral borders found"], measures)
    keys = list(finite)
    axis = finite[keys[-1]] - finite[keys[0]]
    if np.linalg.norm(axis) < 1e-6:
        return Plausibility(False, ["all borders at one point (collapsed outline)"], measures)
    axis = axis / np.linalg.norm(axis)
    pos = {k: float(v @ axis) for k, v in finite.items()}

    def check(name, value, label, key=None):
        measures[key or name] = round(float(value), 4)
        lo, hi = lim[name]
        if not (lo <= value <= hi):
            failed.append(f"{label} {value:.2f} outside [{lo:g}, {hi:g}]")

    order = [k for k in borders if k in pos]
    for a, b in zip(order, order[1:]):
        if pos[b] <= pos[a]:
            failed.append(f"{b} border not below the {a} border")
    heights = [pos[b] - pos[a] for a, b in (("C3 superior", "C3 inferior"), ("C4 superior", "C4 inferior"))
               if a in pos and b in pos]
    if heights and min(heights) > 0:
        mean_h = float(np.mean(heights))
        for a, b, label, key in (("C2 inferior", "C3 superior", "C2–C3 gap / body height", "disc_gap_c2c3"),
                                 ("C3 inferior", "C4 superior", "C3–C4 gap / body height", "disc_gap_c3c4")):
            if a in pos and b in pos:
                check("disc_gap", (pos[b] - pos[a]) / mean_h, label, key)
        if len(heights) == 2:
            check("height_ratio", heights[0] / heights[1], "C3/C4 height ratio")
    w3, w4, w2 = chord(8, 10), chord(16, 18), chord(0, 2)
    if np.isfinite(w3) and np.isfinite(w4) and w4 > 0:
        check("width_ratio", w3 / w4, "C3/C4 width ratio")
    if np.isfinite(w2) and np.isfinite(w3) and w3 > 0:
        check("c2_width_ratio", w2 / w3, "C2/C3 width ratio")
    for (a, b), w, name in ((("C3 superior", "C3 inferior"), w3, "C3"), (("C4 superior", "C4 inferior"), w4, "C4")):
        if a in pos and b in pos and np.isfinite(w) and w > 0:
            check("aspect", (pos[b] - pos[a]) / w, f"{name} height/width", f"aspect_{name.lower()}")
    if roi_frame and np.isfinite(w3):
        ref = np.asarray(MEAN_SHAPE_ROI)
        check("c3_width_roi", w3 / float(np.linalg.norm(ref[8] - ref[10])), "C3 width / mean-shape C3 width")
    return Plausibility(not failed, failed, measures)


#: Below this mean landmark confidence a heatmap decoding is reported as unreliable.
FIT_MIN_CONFIDENCE = 0.2


def fit_check(landmarks_roi: np.ndarray, confidence: np.ndarray, roi: RoiResult | None = None
              ) -> tuple[bool, float, str]:
    """Decoding-level check of one prediction: ``landmarks_roi (19, 2)`` in the study ROI frame,
    ``confidence (19,)`` (NaN for regression models), the auto ROI result if any.

    Returns ``(ok, quality, message)``: ``quality`` is the mean landmark confidence (NaN for
    regression models); ``ok`` is False when the outline fails :func:`check_plausibility` or the
    quality is below :data:`FIT_MIN_CONFIDENCE` — then read no stage from it."""
    conf = np.asarray(confidence, np.float64)
    quality = float(np.mean(np.nan_to_num(conf, nan=0.0))) if np.isfinite(conf).any() else float("nan")
    plaus = check_plausibility(landmarks_roi)
    problems = list(plaus.failed)
    if np.isfinite(quality) and quality < FIT_MIN_CONFIDENCE:
        problems.append(f"low landmark confidence {quality:.2f} (< {FIT_MIN_CONFIDENCE:g})")
    if roi is not None and roi.notes:
        notes = "; ".join(roi.notes)
    else:
        notes = ""
    if problems:
        msg = "low confidence, do not trust the stage: " + "; ".join(problems)
    else:
        msg = "C2–C4 outline plausible"
    if notes:
        msg += f" ({notes})"
    return not problems, quality, msg


_DEFAULT_LOCALIZER = None


def default_localizer():
    """The shipped ``unet_heatmap`` :class:`~cvs_core.predict.Predictor`, loaded once per process; it
    finds the ROI for models that cannot (regression models)."""
    global _DEFAULT_LOCALIZER
    if _DEFAULT_LOCALIZER is None:
        from cvs_core.predict import Predictor

        _DEFAULT_LOCALIZER = Predictor.load("unet_heatmap")
    return _DEFAULT_LOCALIZER

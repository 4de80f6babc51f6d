"""What the Compare screen shows, computed without Streamlit: inputs, ROI spacing, stages, tables, report.

An :class:`InputImage` is a decoded greyscale input (a bundled sample, a phantom or an upload);
:func:`analyse` turns one input and each model's :class:`~cvs_core.predict.Prediction` into a
:class:`Comparison` (everything in the ROI frame: the frame the models' landmarks and the stage
rules are defined in).
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cvs_core.landmarks import N_LANDMARKS, NAMES
from cvs_core.preprocess import SEED_ROI_SCALE, PreprocessConfig

NOMINAL_ROI_SPACING = 0.25      # mm per px in the study's 250×600 ROI frame (the study published none)
NOMINAL_FULL_SPACING = 0.125    # mm per px in the study's full cephalograms
MAX_SIDE = 2600                 # uploads are downscaled so their longer side is at most this
ROI_ASPECT = 250 / 600          # width / height of the study's vertebral ROI


# ----------------------------------------------------------------------------- inputs
@dataclass
class InputImage:
    """A decoded input: only the (possibly downscaled) uint8 pixels are kept.

    image: ``(H, W)`` uint8; kind: "roi" or "full"; spacing_mm: mm/px of ``image`` from the file
    (DICOM header) or None (then the nominal spacing of ``kind`` applies); truth: ``(19, 2)``
    landmarks (x, y) in ``image``'s frame or None; key: content hash for caching."""

    image: np.ndarray
    name: str
    kind: str
    source: str
    key: str
    spacing_mm: float | None = None
    truth: np.ndarray | None = None
    true_stage: int | None = None
    notes: list[str] = field(default_factory=list)
    original_size: tuple[int, int] | None = None  # (width, height) before downscaling
    scale: float = 1.0

    def nominal_spacing(self) -> float:
        """mm/px of ``image``: the file's own when it has one, else the nominal one for ``kind``."""
        if self.spacing_mm:
            return float(self.spacing_mm)
        return NOMINAL_FULL_SPACING if self.kind == "full" else NOMINAL_ROI_SPACING

    def spacing_source(self) -> str:
        return "from the DICOM header" if self.spacing_mm and self.source == "upload" else "nominal"


def image_key(image: np.ndarray) -> str:
    """A short content hash of a ``(H, W)`` array (cache key)."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


def decode_upload(name: str, data: bytes, kind: str = "roi", max_side: int = MAX_SIDE) -> InputImage:
    """Decode uploaded bytes (PNG/JPEG/TIFF/BMP/DICOM) at once into a small uint8 array.

    Wider images (16-bit, DICOM) are range-scaled to uint8; images whose longer side exceeds
    ``max_side`` are downscaled (INTER_AREA) and their spacing scaled with them. The raw bytes are
    not kept. Raises ``cvs_core.imaging.ImageError`` with the library's message for bad files."""
    from cvs_core.imaging import read_image
    from cvs_core.viz import downscale

    loaded = read_image(data, name=name)
    grey = loaded.as_uint8()
    notes = list(loaded.notes)
    spacing = None
    if loaded.spacing_mm:
        spacing = float(np.mean(loaded.spacing_mm))
        notes.append(f"pixel spacing from the DICOM header: {spacing:.4g} mm/px")
    small, s = downscale(grey, max_side)
    if s != 1.0:
        notes.append(f"downscaled ×{s:.3f} from {grey.shape[1]}×{grey.shape[0]} px for the app")
        if spacing:
            spacing /= s
    return InputImage(image=np.ascontiguousarray(small), name=name, kind=kind, source="upload",
                      key=image_key(small), spacing_mm=spacing, notes=notes,
                      original_size=(grey.shape[1], grey.shape[0]), scale=s)


def read_truth_csv(data: bytes, image_name: str) -> np.ndarray:
    """Landmarks ``(19, 2)`` for ``image_name`` from an uploaded study-format CSV (the row whose
    image_name matches, else the only row). Raises ``ValueError`` with the library's message."""
    from cvs_core.annotations import read_annotations

    aset = read_annotations(io.StringIO(data.decode("utf-8-sig", errors="replace")), check_bounds=False)
    if image_name in aset.names:
        return aset.get(image_name)
    if len(aset) == 1:
        return aset.landmarks[0]
    raise ValueError(f"the CSV has {len(aset)} rows and none is named {image_name!r}")


def sample_input(name: str, kind: str, image: np.ndarray, truth_roi: np.ndarray | None) -> InputImage:
    """A bundled sample: ``image`` ``(H, W)`` uint8; ``truth_roi`` ``(19, 2)`` in the study ROI frame
    (moved to the full cephalogram's frame when ``kind == "full"``)."""
    from cvs_core.preprocess import apply_affine, invert_affine, seed_roi_affine

    truth = truth_roi
    if truth is not None and kind == "full":
        truth = apply_affine(invert_affine(seed_roi_affine()), truth)
    return InputImage(image=image, name=name, kind=kind, source="sample", key=f"sample:{kind}:{name}", truth=truth)


def full_cephalogram_warning(image: np.ndarray) -> str | None:
    """Why a ``(H, W)`` image given as a vertebral ROI looks like a whole cephalogram, or None.

    The study's ROI is a tall strip (250×600 px, width/height 0.42); lateral cephalograms are
    about square (1804×2136, 0.84) and large. An image at least 0.65 as wide as high and over
    900 px high is flagged."""
    h, w = image.shape[:2]
    aspect = w / max(h, 1)
    if aspect >= 0.65 and h > 900:
        return (f"This image ({w}×{h} px, width/height {aspect:.2f}) looks like a whole cephalogram, not the "
                f"vertebral ROI (a tall strip, width/height {ROI_ASPECT:.2f}). Treated as a ROI, the models put "
                "landmarks on the skull and teeth and the stage is meaningless: choose **Full cephalogram**.")
    return None


def roi_scale(config: PreprocessConfig) -> float:
    """ROI pixels per input pixel for a preprocessing config (the study preset halves the image)."""
    return float(SEED_ROI_SCALE if config.roi == "seed" else config.roi_scale)


# ----------------------------------------------------------------------------- the ROI of a full cephalogram
FULL_ROI_MODES = ("auto", "seed", "none")   # find C2–C4 · the study's crop · the whole image


def find_roi(predictor, image: np.ndarray, spacing_mm: float | None = None):
    """Find C2–C4 in a full cephalogram ``image (H, W)`` with ``predictor``'s auto-ROI finder (the
    model itself when it is a heatmap U-Net, else the shipped ``unet_heatmap``) →
    :class:`~cvs_core.roi.RoiResult`. Passing that result to every model's ``predict(image, roi=…)``
    is what ``predict(image, roi="auto")`` does, with one search shared by the models compared."""
    return predictor.auto_roi().find(image, spacing_mm)


def moved_roi(image: np.ndarray, box, found, spacing_mm: float | None = None):
    """The ROI after the user moved or redrew the found box: ``box`` ``(x0, y0, x1, y1)`` input px
    (may run past the image edges, but its centre must lie on the image); ``found``: the auto
    :class:`~cvs_core.roi.RoiResult` (its mirror setting is kept). Raises ValueError for a bad box."""
    from cvs_core.roi import roi_from_box

    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"ROI box must be four numbers x0, y0, x1, y1; got {box!r}") from None
    h, w = image.shape[:2]
    if not (np.isfinite([x0, y0, x1, y1]).all() and x1 - x0 >= 8 and y1 - y0 >= 8):
        raise ValueError(f"ROI box {[x0, y0, x1, y1]} must be at least 8×8 px with x1 > x0 and y1 > y0")
    if not (0 <= (x0 + x1) / 2 <= w and 0 <= (y0 + y1) / 2 <= h) or y1 - y0 > 4 * h:
        raise ValueError(f"ROI box {[x0, y0, x1, y1]} must be centred on the {w}×{h} image")
    return roi_from_box(image, (x0, y0, x1, y1), mirrored=bool(found.mirrored) if found is not None else False,
                        spacing_mm=spacing_mm)


def roi_box(roi) -> list[int]:
    """A :class:`~cvs_core.roi.RoiResult`'s box as rounded ints ``[x0, y0, x1, y1]`` (input px)."""
    return [int(round(float(v))) for v in roi.box]


def describe_roi(roi) -> object:
    """A JSON-serialisable description of the ROI used: "seed" / "none" / a box list as given, or
    ``{"mode": "auto" | "moved", **RoiResult.to_json_dict()}`` for a found / moved ROI."""
    if hasattr(roi, "to_json_dict"):
        mode = "moved" if "ROI placed by hand" in roi.notes else "auto"
        return {"mode": mode, **roi.to_json_dict()}
    return roi


# ----------------------------------------------------------------------------- the comparison
@dataclass
class ModelResult:
    """One model's result in the ROI frame.

    landmarks: ``(19, 2)`` (x, y) ROI px; confidence ``(19,)`` (NaN for regression); codec_kind:
    "mask", "heatmap" or "regression"; summary: error vs truth (see :func:`viz.error_summary`) or None;
    outside: 1-based indices of landmarks outside the ROI image."""

    name: str
    landmarks: np.ndarray
    confidence: np.ndarray
    codec_kind: str
    input_size: tuple[int, int]
    ms: float
    stage: object | None = None          # StageResult
    stage_error: str | None = None
    summary: dict | None = None
    outside: list[int] = field(default_factory=list)
    fit_ok: bool = True                  # False: implausible outline / low confidence — the stage is unreliable
    fit_message: str = ""
    warnings: list[str] = field(default_factory=list)   # predict.prediction_warnings

    @property
    def n_found(self) -> int:
        return int(np.isfinite(self.landmarks).all(axis=1).sum())

    @property
    def has_response(self) -> bool:
        return self.codec_kind in ("mask", "heatmap")

    @property
    def stage_reliable(self) -> bool:
        """A stage was read and the fit check passed (else show it as unreliable, not as a result)."""
        return self.stage is not None and self.fit_ok


@dataclass
class Comparison:
    """Everything the Compare screen shows about one input and its models, in the ROI frame.

    roi_image: ``(H_roi, W_roi)`` uint8; roi_spacing_mm: mm per ROI px; roi_scale: ROI px per input px;
    truth: ``(19, 2)`` ROI-frame ground truth or None; table: per-landmark DataFrame;
    warnings: sentences for the user (points outside the ROI, identical models, …)."""

    input: InputImage
    roi: object
    roi_image: np.ndarray
    roi_spacing_mm: float
    roi_scale: float
    input_spacing_mm: float
    models: dict[str, ModelResult]
    truth: np.ndarray | None
    truth_stage: object | None
    truth_outside: list[int]
    table: pd.DataFrame
    warnings: list[str]

    @property
    def response_model(self) -> str | None:
        """The first model with a mask/heatmap output (drawn as an overlay), or None."""
        return next((m for m, r in self.models.items() if r.has_response), None)

    def spacing_caption(self) -> str:
        scale = f", ROI scale ×{self.roi_scale:.3g}" if abs(self.roi_scale - 1) > 1e-6 else ""
        return (f"Coordinates in the ROI frame ({self.roi_image.shape[1]}×{self.roi_image.shape[0]} px) · spacing "
                f"**{self.roi_spacing_mm:.4g} mm/px** ({self.input.spacing_source()}: "
                f"{self.input_spacing_mm:.4g} mm/px in the input{scale})")

    def report(self, predictions: dict, caveat: str) -> dict:
        """The JSON-serialisable report (``report.json``): image, models (ROI and input-frame landmarks,
        confidence, timings, stage, preprocessing), truth, the per-landmark table and the caveat."""
        from cvs_core.viz import json_report

        inp = self.input
        report = json_report(
            image={"name": inp.name, "source": inp.source, "kind": inp.kind, "width": int(inp.image.shape[1]),
                   "height": int(inp.image.shape[0]), "roi": self.roi, "roi_size": list(self.roi_image.shape[::-1]),
                   "scale_from_file": inp.scale, "generated_stage": inp.true_stage,
                   "input_spacing_mm": self.input_spacing_mm},
            models={m: {"landmarks_roi": r.landmarks, "landmarks_input": predictions[m].landmarks,
                        "confidence": r.confidence, "codec": r.codec_kind, "timings_ms": predictions[m].ms,
                        "stage": r.stage.to_dict() if r.stage is not None else None,
                        "stage_reliable": r.stage_reliable, "fit_message": r.fit_message,
                        "warnings": list(r.warnings),
                        "landmarks_outside_roi": r.outside,
                        "preprocess": predictions[m].preprocessed.config.to_dict()}
                    for m, r in self.models.items()},
            truth=self.truth, spacing_mm=self.roi_spacing_mm)
        from cvs_core.registry import to_jsonable

        report["comparison"] = to_jsonable(self.table.to_dict(orient="records"), digits=4)
        report["warnings"] = list(self.warnings)
        report["caveat"] = caveat
        return report

    def html_report(self, overlay_png: bytes, caveat: str) -> str:
        """A one-page, self-contained HTML report: the overlay, each model's stage and errors, the
        per-landmark table, the spacing and the caveat (print it to PDF from the browser)."""
        import base64
        import html

        esc = html.escape
        inp = self.input
        cards = []
        for m, r in self.models.items():
            stage = (f"<b>{esc(r.stage.label)}</b> ({esc(r.stage.confidence_level)} fit) — {esc(r.stage.rationale)}"
                     if r.stage is not None else f"no stage: {esc(str(r.stage_error))}")
            if not r.fit_ok:
                stage = f"<span class='warn'>UNRELIABLE ({esc(r.fit_message)})</span><br>{stage}"
            stage += "".join(f"<br><span class='warn'>{esc(w)}</span>" for w in r.warnings)
            err = ""
            if r.summary is not None and r.summary.get("mre_mm") is not None:
                err = f"<br>MRE {r.summary['mre_mm']:.2f} mm ({r.summary['mre_px']:.1f} ROI px)"
            cards.append(f"<li><b>{esc(m)}</b> · {esc(r.codec_kind)} · {r.n_found}/19 landmarks · {r.ms:.0f} ms"
                         f"<br>{stage}{err}</li>")
        if self.truth_stage is not None:
            cards.append(f"<li><b>ground truth</b>: {esc(self.truth_stage.label)}</li>")
        warnings = "".join(f"<p class='warn'>{esc(w)}</p>" for w in self.warnings)
        img = base64.b64encode(overlay_png).decode()
        return f"""<!doctype html><html><head><meta charset="utf-8"><title>CVS comparison · {esc(inp.name)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
.row{{display:flex;gap:2em}} img{{max-height:640px}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} .warn{{color:#a15c00}}
.caveat{{font-size:13px;color:#555}}</style></head><body>
<h1>CVS comparison: {esc(inp.name)}</h1>
<p>{esc(inp.source)} · {esc(inp.kind)} · {inp.image.shape[1]}×{inp.image.shape[0]} px · ROI
{self.roi_image.shape[1]}×{self.roi_image.shape[0]} px at {self.roi_spacing_mm:.4g} mm/px ({esc(inp.spacing_source())})</p>
{warnings}<div class="row"><img src="data:image/png;base64,{img}" alt="overlay"><ul>{''.join(cards)}</ul></div>
<p class="caveat">{esc(caveat)}</p>
<h2>Landmarks (ROI px)</h2>{self.table.to_html(index=False, na_rep="—")}
</body></html>"""

    def landmarks_csv(self, model: str, predictions: dict) -> str:
        """One model's landmarks as a study CSV row in the uploaded file's pixel frame."""
        from cvs_core.annotations import format_annotations

        lm = predictions[model].landmarks / self.input.scale
        return format_annotations(([self.input.name], lm[None]))


def outside_indices(landmarks: np.ndarray, shape: tuple[int, int]) -> list[int]:
    """1-based indices of ``(19, 2)`` points (x, y) outside an image of ``shape`` (H, W)."""
    pts = np.asarray(landmarks, np.float64)
    h, w = shape[:2]
    ok = np.isfinite(pts).all(axis=1)
    out = ok & ((pts[:, 0] < -0.5) | (pts[:, 1] < -0.5) | (pts[:, 0] > w - 0.5) | (pts[:, 1] > h - 0.5))
    return [int(i) + 1 for i in np.flatnonzero(out)]


def _outside_sentence(who: str, idx: list[int]) -> str:
    names = ", ".join(f"{i} {NAMES[i - 1]}" for i in idx)
    return (f"{who}: {len(idx)} landmark{'s' if len(idx) > 1 else ''} ({names}) fall outside the ROI image; "
            "the views are extended to show them, and a heatmap model's confidence there is not meaningful.")


def comparison_table(results: dict[str, ModelResult], truth: np.ndarray | None, spacing_mm: float) -> pd.DataFrame:
    """Per-landmark table: ``#``, ``landmark``; with two models ``A↔B px``/``mm`` next; with truth
    ``<m> err px``/``mm`` per model; then ``<m> x``, ``<m> y`` and (heatmap models only) ``<m> conf``.
    Values are rounded; -0.0 is written 0.0."""
    rows: dict = {"#": np.arange(1, N_LANDMARKS + 1), "landmark": list(NAMES)}
    names = list(results)

    def r(a, d):
        return np.round(np.asarray(a, np.float64), d) + 0.0  # + 0.0 turns -0.0 into 0.0

    if len(names) == 2:
        d = np.linalg.norm(results[names[0]].landmarks - results[names[1]].landmarks, axis=1)
        rows["A↔B px"] = r(d, 1)
        rows["A↔B mm"] = r(d * spacing_mm, 2)
    if truth is not None:
        for m in names:
            e = np.linalg.norm(results[m].landmarks - truth, axis=1)
            rows[f"{m} err px"] = r(e, 1)
            rows[f"{m} err mm"] = r(e * spacing_mm, 2)
    for m in names:
        res = results[m]
        rows[f"{m} x"] = r(res.landmarks[:, 0], 1)
        rows[f"{m} y"] = r(res.landmarks[:, 1], 1)
        if res.has_response:
            rows[f"{m} conf"] = r(res.confidence, 3)
    return pd.DataFrame(rows)


def analyse(inp: InputImage, predictions: dict, codec_kinds: dict[str, str], roi,
            input_spacing_mm: float | None = None, staging_config=None) -> Comparison:
    """One input and each model's prediction → :class:`Comparison`.

    predictions: model → :class:`~cvs_core.predict.Prediction` (all made with the same ``roi``);
    codec_kinds: model → its codec's ``kind`` ("mask", "heatmap", "regression");
    input_spacing_mm: mm/px of ``inp.image`` (default: :meth:`InputImage.nominal_spacing`). The ROI
    spacing is that divided by the ROI scale of the preprocessing (×0.5 for the study preset, the
    found ROI's scale for an auto / moved ROI); staging_config: a shipped staging name
    ("default" = calibrated, "textbook", "learned") or a config, for every stage shown."""
    from cvs_core.predict import prediction_warnings
    from cvs_core.preprocess import apply_affine
    from cvs_core.staging import stage_landmarks
    from cvs_core.viz import error_summary

    if not predictions:
        raise ValueError("no model produced a prediction")
    first = next(iter(predictions.values()))
    pre = first.preprocessed
    found = getattr(first, "roi_result", None)
    scale = float(found.scale) if found is not None else roi_scale(pre.config)
    roi = describe_roi(found) if found is not None else roi
    spacing_in = float(input_spacing_mm) if input_spacing_mm else inp.nominal_spacing()
    spacing = spacing_in / scale
    truth = apply_affine(pre.roi_affine, inp.truth) if inp.truth is not None else None
    shape = pre.roi_image.shape
    results, warnings = {}, []
    if inp.kind == "roi":
        w = full_cephalogram_warning(inp.image)
        if w:
            warnings.append(w)
    for m, p in predictions.items():
        res = ModelResult(name=m, landmarks=np.asarray(p.landmarks_roi, np.float64),
                          confidence=np.asarray(p.confidence, np.float64), codec_kind=codec_kinds.get(m, "?"),
                          input_size=tuple(p.preprocessed.config.input_size), ms=float(p.ms["total"]),
                          outside=outside_indices(p.landmarks_roi, shape), fit_ok=bool(getattr(p, "fit_ok", True)),
                          fit_message=str(getattr(p, "fit_message", "")),
                          warnings=prediction_warnings(inp.image, p))
        try:
            res.stage = stage_landmarks(res.landmarks, spacing, config=staging_config)
        except ValueError as exc:
            res.stage_error = str(exc)
        if truth is not None:
            res.summary = error_summary(res.landmarks, truth, spacing)
        if res.outside:
            warnings.append(_outside_sentence(m, res.outside))
        results[m] = res
    truth_stage, truth_outside = None, []
    if truth is not None:
        truth_outside = outside_indices(truth, shape)
        if truth_outside:
            warnings.append(_outside_sentence("Ground truth", truth_outside))
        try:
            truth_stage = stage_landmarks(truth, spacing, config=staging_config)
        except ValueError:
            truth_stage = None
    if len(results) == 2:
        a, b = results.values()
        if np.allclose(a.landmarks, b.landmarks, equal_nan=True, atol=1e-3):
            warnings.append("Models A and B put every landmark at the same place: are they the same model?")
    return Comparison(input=inp, roi=roi, roi_image=pre.roi_image, roi_spacing_mm=spacing, roi_scale=scale,
                      input_spacing_mm=spacing_in, models=results, truth=truth, truth_stage=truth_stage,
                      truth_outside=truth_outside, table=comparison_table(results, truth, spacing),
                      warnings=warnings)


def model_input_preview(prediction) -> np.ndarray:
    """What the model actually sees: its preprocessed input's first channel, range-scaled to uint8
    ``(h, w)`` (after ROI cut, CLAHE/bilateral and resizing to the model's input size)."""
    from cvs_core.preprocess import to_uint8

    x = np.asarray(prediction.preprocessed.image, np.float32)
    return to_uint8(x[..., 0] if x.ndim == 3 else x)

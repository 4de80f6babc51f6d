"""Dataset evaluation: stream images from disk through a :class:`~cvs_core.predict.Predictor`,
score the landmarks (DESIGN §5), cache predictions, and write reports (``cvs evaluate``).

Frames and units
----------------
* Labels (``Dataset.landmarks``) are ``(N, 19, 2)`` (x, y) pixels in the *label frame*: the ROI
  frame of the study (the 250×600 vertebral ROI). Predictions are compared in that frame, via
  ``Prediction.landmarks_roi`` — so a full cephalogram evaluated with ``roi="seed"`` is scored in
  the same ROI pixels as its label.
* ``spacing_mm`` is mm per ROI pixel (nominal 0.25).
* Errors are Euclidean, same-index, in ROI px; a missing prediction (NaN) is an infinite error
  (a failure for SDR/PCK, left out of means and counted in ``n_missing``; see ``metrics``).

Memory stays flat in the number of images: images are read batch by batch (the next batch is
read on a helper thread while the current one runs through the model) and only the landmarks
and confidences ``(N, 19, 2)`` / ``(N, 19)`` are kept.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import pandas as pd

from cvs_core import metrics
from cvs_core.landmarks import N_LANDMARKS, NAMES, ROI_SIZE

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "data" / "samples"
CACHE_VERSION = 1
LEGACY_NOTE = ("LEGACY study metrics, reproduced only to compare with the study's table: "
               "unet_pck = identity-free blob matching (a predicted blob within 5 px of ANY true blob "
               "counts; can exceed 1) on 256x256 masks rendered here from the predicted and true "
               "landmarks with the study's MaskCodec (our re-rendering, not the model's raw mask); "
               "inception_pck = same-index distance < 40 ROI px (about 10 mm). Use pck/sdr instead.")
SDR_KEYS = tuple(str(float(r)) for r in metrics.SDR_RADII_MM)

Progress = Callable[[int, int], None]


# ----------------------------------------------------------------------------- datasets
@dataclass
class Dataset:
    """Labelled (or unlabelled) images on disk.

    names : N image names; image_paths : N paths (read lazily, batch by batch).
    landmarks : ``(N, 19, 2)`` labels in the label (ROI) frame, or None.
    stages : ``(N,)`` int CS stages 1..6 (0 = unknown), or None.
    spacing_mm : mm per ROI pixel. source : a label for reports.
    """

    names: list[str]
    image_paths: list[Path]
    landmarks: np.ndarray | None
    stages: np.ndarray | None
    spacing_mm: float
    source: str
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.names = [str(n) for n in self.names]
        self.image_paths = [Path(p) for p in self.image_paths]
        if len(self.names) != len(self.image_paths):
            raise ValueError(f"{len(self.names)} names for {len(self.image_paths)} image paths")
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, np.float64)
            if self.landmarks.shape != (len(self.names), N_LANDMARKS, 2):
                raise ValueError(f"landmarks must be shaped ({len(self.names)}, {N_LANDMARKS}, 2), "
                                 f"got {self.landmarks.shape}")
        if self.stages is not None:
            self.stages = np.asarray(self.stages, np.int64).reshape(-1)
            if len(self.stages) != len(self.names):
                raise ValueError(f"{len(self.stages)} stages for {len(self.names)} images")
        if not (self.spacing_mm > 0):
            raise ValueError(f"spacing_mm must be > 0 mm/px, got {self.spacing_mm}")

    def __len__(self) -> int:
        return len(self.names)

    def fingerprint(self) -> str:
        """sha256 of the names, labels and each image file's size and mtime (cheap, no pixel reads)."""
        h = hashlib.sha256()
        for name, path in zip(self.names, self.image_paths):
            try:
                st = path.stat()
                stat = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stat = "missing"
            h.update(f"{name}\0{path.resolve()}\0{stat}\n".encode())
        if self.landmarks is not None:
            h.update(np.ascontiguousarray(self.landmarks, np.float64).tobytes())
        if self.stages is not None:
            h.update(np.ascontiguousarray(self.stages, np.int64).tobytes())
        return h.hexdigest()


def _parse_stages(extra: pd.DataFrame) -> np.ndarray | None:
    """A ``cs_stage`` (or ``stage``) column → ``(N,)`` int, 0 where unknown; None if absent."""
    for col in ("cs_stage", "stage", "cvm_stage"):
        if col in extra.columns:
            out = np.zeros(len(extra), np.int64)
            for i, v in enumerate(extra[col].tolist()):
                text = str(v).strip().upper().removeprefix("CS")
                try:
                    s = int(float(text))
                except ValueError:
                    continue
                out[i] = s if 1 <= s <= 6 else 0
            return out if (out > 0).any() else None
    return None


def load_dataset(csv, images, spacing_mm: float = 0.25) -> Dataset:
    """A study-format CSV (labels in the ROI frame) + its image folder → :class:`Dataset`.

    Rows whose image is missing are skipped; landmarks outside an image are a warning, not an
    error (the study's ``LC (11)`` has three just below its 600-px ROI). A ``cs_stage`` column
    gives the stages."""
    from cvs_core.annotations import read_annotations

    aset = read_annotations(csv, image_dir=images, missing_images="skip", check_bounds="warn")
    if len(aset) == 0:
        raise ValueError(f"{csv}: none of the images named in the CSV is in {images}")
    folder = Path(images)
    return Dataset(names=list(aset.names), image_paths=[folder / n for n in aset.names],
                   landmarks=aset.landmarks, stages=_parse_stages(aset.extra), spacing_mm=float(spacing_mm),
                   source=str(csv), warnings=list(aset.skipped) + list(aset.warnings))


def phantom_dataset(n: int = 32, seed: int = 0, cache_dir: Path | None = None, spacing_mm: float = 0.25) -> Dataset:
    """``n`` phantoms (written once to ``cache_dir/phantoms_{n}_{seed}``, reused afterwards)."""
    from cvs_core.registry import cvs_home
    from cvs_core.synth import write_phantom_dataset

    base = Path(cache_dir) if cache_dir is not None else cvs_home() / "cache"
    folder = base / f"phantoms_{int(n)}_{int(seed)}"
    csv_path = folder / "labels.csv"
    if not csv_path.is_file():
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        write_phantom_dataset(tmp, n=int(n), seed=int(seed))
        try:
            os.replace(tmp, folder)
        except OSError:  # written concurrently by someone else: use theirs
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        from cvs_core.limits import evict_phantom_cache
        evict_phantom_cache(base, keep=(folder,))  # ≈ 90 KB per phantom: bounded by max_phantom_cache_bytes
    else:
        os.utime(folder)  # recently used: evicted last
    ds = load_dataset(csv_path, folder / "images", spacing_mm=spacing_mm)
    ds.source = f"phantoms n={n} seed={seed}"
    return ds


def samples_dataset(spacing_mm: float = 0.25) -> Dataset:
    """The bundled public ROI images that have labels (``LC (1)``, ``LC (11)``) from both study CSVs."""
    from cvs_core.annotations import read_annotations

    names, lms = [], []
    for csv in ("train_data.csv", "test_data.csv"):
        aset = read_annotations(SAMPLES_DIR / csv, image_dir=SAMPLES_DIR / "roi", missing_images="skip",
                                check_bounds="warn")
        for name, lm in zip(aset.names, aset.landmarks):
            if name not in names:
                names.append(name)
                lms.append(lm)
    return Dataset(names=names, image_paths=[SAMPLES_DIR / "roi" / n for n in names],
                   landmarks=np.asarray(lms), stages=None, spacing_mm=spacing_mm, source="data/samples/roi")


def read_grey(path: Path) -> np.ndarray:
    """A greyscale ``(H, W)`` image from disk: OpenCV first (fast), ``imaging.read_image`` for the rest
    (DICOM, 16-bit TIFF, …)."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is not None:
        return img
    from cvs_core.imaging import read_image

    return read_image(path).pixels


# ----------------------------------------------------------------------------- predictions
@dataclass
class PredictionSet:
    """One model's landmarks on a dataset.

    pred : ``(N, 19, 2)`` ROI-frame px (NaN = not found); confidence : ``(N, 19)``;
    true : ``(N, 19, 2)`` labels or None; ms_per_image : end-to-end wall time per image (reading,
    preprocessing, inference, decoding) of the run that produced them (also when read from cache).
    """

    model: str
    names: list[str]
    pred: np.ndarray
    confidence: np.ndarray
    true: np.ndarray | None
    ms_per_image: float
    stages: np.ndarray | None = None
    spacing_mm: float = 0.25
    cached: bool = False
    key: str = ""

    def __len__(self) -> int:
        return len(self.names)


def default_cache_dir() -> Path:
    from cvs_core.registry import cvs_home

    return cvs_home() / "cache" / "predictions"


def model_fingerprint(predictor) -> str:
    """sha256 of the weights (from the manifest when recorded, else of the files)."""
    sha = predictor.manifest.get("weights_sha256")
    if sha:
        return sha
    from cvs_core.registry import WEIGHTS, sha256_file

    weights = Path(predictor.folder) / WEIGHTS
    if weights.is_file():
        return sha256_file(weights)
    h = hashlib.sha256()
    for p in sorted(Path(predictor.folder).rglob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def _roi_config(predictor, roi):
    from cvs_core.predict import _roi_override

    return _roi_override(predictor.config, roi)


def cache_key(predictor, dataset: Dataset, roi=None) -> str:
    """sha256 of (weights, codec, preprocessing after the ROI override, roi, dataset fingerprint)."""
    payload = json.dumps({
        "v": CACHE_VERSION,
        "weights": model_fingerprint(predictor),
        "codec": predictor.codec.to_dict(),
        "preprocess": _roi_config(predictor, roi).to_dict(),
        "roi": roi,
        "dataset": dataset.fingerprint(),
    }, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _load_cached(path: Path, dataset: Dataset):
    try:
        with np.load(path, allow_pickle=False) as z:
            names = [str(n) for n in z["names"]]
            if names != dataset.names:
                return None
            return z["pred"].astype(np.float64), z["confidence"].astype(np.float64), float(z["ms_per_image"])
    except (OSError, KeyError, ValueError):
        return None


def _save_cached(path: Path, names, pred, conf, ms) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, names=np.asarray(names, dtype=str), pred=pred, confidence=conf,
                        ms_per_image=np.float64(ms))
    os.replace(tmp, path)


def predict_dataset(predictor, dataset: Dataset, roi=None, batch_size: int = 8, cache_dir: Path | None = None,
                    progress: Progress | None = None, use_cache: bool = True) -> PredictionSet:
    """Run ``predictor`` over every image of ``dataset`` in batches → :class:`PredictionSet`.

    roi : None (the model's own preprocessing), "none", "seed" or ``[x0, y0, x1, y1]``.
    Images are read from disk batch by batch (the next batch on a helper thread), pushed through
    ``Predictor.predict_batch`` (one compiled model call per batch), and only the ROI-frame landmarks
    and confidences are kept. Results are cached in ``cache_dir`` (default
    ``$CVS_HOME/cache/predictions``) as ``<sha256>.npz``; ``use_cache=False`` neither reads nor
    writes it. ``progress(done, total)`` is called after every batch (and once at the start).
    """
    n = len(dataset)
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    key = cache_key(predictor, dataset, roi)
    cache_path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{key}.npz"
    common = dict(model=predictor.name, names=list(dataset.names), true=dataset.landmarks,
                  stages=dataset.stages, spacing_mm=dataset.spacing_mm, key=key)
    if progress:
        progress(0, n)
    if use_cache and cache_path.is_file():
        hit = _load_cached(cache_path, dataset)
        if hit is not None:
            if progress:
                progress(n, n)
            pred, conf, ms = hit
            return PredictionSet(pred=pred, confidence=conf, ms_per_image=ms, cached=True, **common)

    pred = np.full((n, N_LANDMARKS, 2), np.nan)
    conf = np.full((n, N_LANDMARKS), np.nan)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]

    def load(idx):
        return [read_grey(dataset.image_paths[i]) for i in idx]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvs-read") as pool:
        pending = pool.submit(load, batches[0]) if batches else None
        for b, idx in enumerate(batches):
            images = pending.result()
            pending = pool.submit(load, batches[b + 1]) if b + 1 < len(batches) else None
            results = predictor.predict_batch(images, roi=roi)
            del images
            for i, r in zip(idx, results):
                pred[i] = r.landmarks_roi
                conf[i] = r.confidence
            del results
            if progress:
                progress(idx[-1] + 1, n)
    ms = (time.perf_counter() - t0) * 1e3 / max(n, 1)
    if use_cache:
        try:
            _save_cached(cache_path, dataset.names, pred, conf, ms)
        except OSError as exc:  # a read-only cache is not an error
            print(f"warning: could not write the prediction cache {cache_path}: {exc}", file=sys.stderr)
    return PredictionSet(pred=pred, confidence=conf, ms_per_image=ms, cached=False, **common)


# ----------------------------------------------------------------------------- scoring
def legacy_unet_pck_from_landmarks(pred, true, roi_size=ROI_SIZE, mask_size=(256, 256)) -> float:
    """LEGACY study U-Net "PCK" computed our way: render predicted and true ROI landmarks
    ``(N, 19, 2)`` into the study's 256×256 square masks (:class:`~cvs_core.codecs.MaskCodec`), then
    :func:`metrics.legacy_unet_pck`. Missing predicted landmarks draw no square."""
    from cvs_core.codecs import render_study_masks

    pm = render_study_masks(pred, roi_size, mask_size)
    tm = render_study_masks(true, roi_size, mask_size)
    return metrics.legacy_unet_pck(pm, tm)


def _stages_of(landmarks: np.ndarray, spacing_mm: float) -> np.ndarray:
    """CS stage (1..6) per landmark set; 0 where staging is impossible (missing landmarks)."""
    from cvs_core.staging import stage_landmarks

    out = np.zeros(len(landmarks), np.int64)
    for i, lm in enumerate(landmarks):
        if not np.isfinite(lm).all():
            continue
        try:
            out[i] = stage_landmarks(lm, spacing_mm).stage
        except ValueError:
            pass
    return out


def _agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = (a > 0) & (b > 0)
    return float(np.mean(a[ok] == b[ok])) if ok.any() else None


def _jf(v):
    v = float(v)
    return round(v, 6) if math.isfinite(v) else None


def score(pset: PredictionSet, spacing_mm: float | None = None, threshold_mm: float = 2.0, stages=None) -> dict:
    """Score a :class:`PredictionSet` against its labels.

    spacing_mm : mm per ROI px (default: the set's). threshold_mm : the PCK threshold.
    stages : ``(N,)`` CS labels (default: the set's); 0 = unknown.

    Returns ``{"summary": dict (JSON-ready), "per_image": DataFrame, "per_landmark": DataFrame,
    "errors_px": (N, 19) ndarray}``. The summary holds :func:`metrics.summarize`'s keys plus
    ``legacy`` (clearly labelled study metrics with a ``note``), ``stage_agreement``,
    ``ms_per_image``, ``model``, ``cached``.
    """
    if pset.true is None:
        raise ValueError(f"{pset.model}: the dataset has no labels to score against")
    spacing = float(spacing_mm if spacing_mm is not None else pset.spacing_mm)
    stages = pset.stages if stages is None else np.asarray(stages, np.int64)
    pred, true = pset.pred, pset.true
    e = metrics.radial_errors(pred, true)
    summary = metrics.summarize(pred, true, spacing, pck_threshold_mm=threshold_mm)
    summary["legacy"] = {
        "unet_pck": _jf(legacy_unet_pck_from_landmarks(pred, true)),
        "inception_pck": _jf(metrics.legacy_inception_pck(pred, true)),
        "unet_radius_px": 5, "unet_mask_size": 256, "inception_radius_px": 40,
        "note": LEGACY_NOTE,
    }

    stage_pred = _stages_of(pred, spacing)
    stage_from_true = _stages_of(true, spacing)
    agreement = {
        "pred_vs_true_landmarks": _agreement(stage_pred, stage_from_true),
        "n_staged": int(np.sum(stage_pred > 0)),
    }
    if stages is not None:
        agreement["pred_vs_label"] = _agreement(stage_pred, stages)
        agreement["true_landmarks_vs_label"] = _agreement(stage_from_true, stages)
        agreement["n_labelled"] = int(np.sum(stages > 0))
    summary["stage_agreement"] = agreement
    summary["ms_per_image"] = _jf(pset.ms_per_image)
    summary["model"] = pset.model
    summary["cached"] = bool(pset.cached)
    summary["mean_confidence"] = _jf(np.nanmean(pset.confidence)) if np.isfinite(pset.confidence).any() else None

    finite = np.where(np.isfinite(e), e, np.nan)
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_img_mean = np.nanmean(finite, axis=1)
            per_img_max = np.max(e, axis=1)
            per_lm_mean = np.nanmean(finite, axis=0)
            per_lm_sd = np.nanstd(finite, axis=0)
            per_lm_median = np.nanmedian(finite, axis=0)
    per_image = pd.DataFrame({
        "model": pset.model,
        "image_name": pset.names,
        "mre_px": per_img_mean,
        "mre_mm": per_img_mean * spacing,
        "max_err_px": per_img_max,
        "max_err_mm": per_img_max * spacing,
        "n_missing": np.sum(~np.isfinite(e), axis=1),
        f"pck@{threshold_mm:g}mm": np.mean(e * spacing <= threshold_mm, axis=1),
        "mean_confidence": np.nanmean(np.where(np.isfinite(pset.confidence), pset.confidence, np.nan), axis=1)
        if np.isfinite(pset.confidence).any() else np.nan,
        "stage_pred": stage_pred,
        "stage_from_true_landmarks": stage_from_true,
        "stage_true": stages if stages is not None else 0,
    })
    per_image["stage_match"] = np.where(
        (per_image["stage_pred"] > 0) & (per_image["stage_true"] > 0),
        per_image["stage_pred"] == per_image["stage_true"], pd.NA)
    per_landmark = pd.DataFrame({
        "model": pset.model,
        "landmark": np.arange(1, N_LANDMARKS + 1),
        "name": list(NAMES),
        "mre_px": per_lm_mean,
        "sd_px": per_lm_sd,
        "median_px": per_lm_median,
        "mre_mm": per_lm_mean * spacing,
        "sd_mm": per_lm_sd * spacing,
        "pck": metrics.pck_per_landmark(e, threshold_mm, unit="mm", spacing_mm=spacing),
        "pck_threshold_mm": threshold_mm,
        **{f"sdr@{r}mm": metrics.pck_per_landmark(e, float(r), unit="mm", spacing_mm=spacing) for r in SDR_KEYS},
        "n_missing": np.sum(~np.isfinite(e), axis=0),
    })
    return {"summary": summary, "per_image": per_image, "per_landmark": per_landmark, "errors_px": e}


# ----------------------------------------------------------------------------- charts (PNG via OpenCV)
PALETTE = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880"]


def _bgr(hex_color: str) -> tuple[int, int, int]:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return (b, g, r)


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


class _Chart:
    """A tiny raster chart on a white canvas: axes with ticks and labels, title, legend."""

    FONT = cv2.FONT_HERSHEY_SIMPLEX

    def __init__(self, title: str, xlabel: str, ylabel: str, xlim, ylim, size=(1000, 600),
                 margins=(80, 30, 50, 70)):
        self.w, self.h = size
        self.img = np.full((self.h, self.w, 3), 255, np.uint8)
        self.left, self.right, self.top, self.bottom = margins
        self.x0, self.x1 = xlim
        self.y0, self.y1 = ylim
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel

    def px(self, x, y):
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        pw = self.w - self.left - self.right
        ph = self.h - self.top - self.bottom
        u = self.left + (x - self.x0) / (self.x1 - self.x0) * pw
        v = self.h - self.bottom - (y - self.y0) / (self.y1 - self.y0) * ph
        return u, v

    def text(self, s, org, scale=0.5, color=(40, 40, 40), thickness=1, anchor="left"):
        (tw, th), _ = cv2.getTextSize(s, self.FONT, scale, thickness)
        x, y = org
        if anchor == "center":
            x -= tw // 2
        elif anchor == "right":
            x -= tw
        cv2.putText(self.img, s, (int(x), int(y)), self.FONT, scale, color, thickness, cv2.LINE_AA)
        return tw, th

    def axes(self, xticks=None, xticklabels=None, yticks=None, grid=True):
        L, R, T, B = self.left, self.w - self.right, self.top, self.h - self.bottom
        yticks = yticks if yticks is not None else _nice_ticks(self.y0, self.y1)
        for t in yticks:
            _, v = self.px(self.x0, t)
            v = int(round(float(v)))
            if T - 1 <= v <= B + 1:
                if grid:
                    cv2.line(self.img, (L, v), (R, v), (230, 230, 230), 1)
                cv2.line(self.img, (L - 5, v), (L, v), (60, 60, 60), 1)
                self.text(_fmt(t), (L - 8, v + 5), 0.45, anchor="right")
        if xticks is None:
            xticks = _nice_ticks(self.x0, self.x1, 8)
        labels = xticklabels if xticklabels is not None else [_fmt(t) for t in xticks]
        for t, lab in zip(xticks, labels):
            u, _ = self.px(t, self.y0)
            u = int(round(float(u)))
            if L - 1 <= u <= R + 1:
                if grid and xticklabels is None:
                    cv2.line(self.img, (u, T), (u, B), (236, 236, 236), 1)
                cv2.line(self.img, (u, B), (u, B + 5), (60, 60, 60), 1)
                self.text(lab, (u, B + 20), 0.42, anchor="center")
        cv2.rectangle(self.img, (L, T), (R, B), (60, 60, 60), 1)
        self.text(self.title, (self.w // 2, 30), 0.65, (20, 20, 20), 2, anchor="center")
        self.text(self.xlabel, ((L + R) // 2, self.h - 14), 0.5, anchor="center")
        # vertical y label: draw on a strip then rotate
        (tw, th), _ = cv2.getTextSize(self.ylabel, self.FONT, 0.5, 1)
        strip = np.full((th + 10, tw + 6, 3), 255, np.uint8)
        cv2.putText(strip, self.ylabel, (3, th + 3), self.FONT, 0.5, (40, 40, 40), 1, cv2.LINE_AA)
        strip = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
        sh, sw = strip.shape[:2]
        y_start = max(0, (T + B) // 2 - sh // 2)
        sh = min(sh, self.h - y_start)
        self.img[y_start:y_start + sh, 4:4 + sw] = strip[:sh]

    def polyline(self, xs, ys, color, thickness=2):
        u, v = self.px(xs, ys)
        pts = np.stack([u, v], axis=1)
        pts = pts[np.isfinite(pts).all(1)]
        if len(pts) >= 2:
            cv2.polylines(self.img, [np.round(pts).astype(np.int32)], False, _bgr(color), thickness, cv2.LINE_AA)

    def vline(self, x, color="#555555", label=None):
        u, _ = self.px(x, self.y0)
        u = int(round(float(u)))
        T, B = self.top, self.h - self.bottom
        for y in range(T, B, 12):
            cv2.line(self.img, (u, y), (u, min(y + 6, B)), _bgr(color), 1, cv2.LINE_AA)
        if label:
            self.text(label, (u + 5, T + 16), 0.45, _bgr(color))

    def legend(self, items, corner="bottom-right"):
        if not items:
            return
        sizes = [cv2.getTextSize(lab, self.FONT, 0.5, 1)[0] for lab, _ in items]
        bw = max(s[0] for s in sizes) + 50
        bh = 22 * len(items) + 10
        R, B, L, T = self.w - self.right, self.h - self.bottom, self.left, self.top
        x = R - bw - 10 if "right" in corner else L + 10
        y = B - bh - 10 if "bottom" in corner else T + 10
        cv2.rectangle(self.img, (x, y), (x + bw, y + bh), (255, 255, 255), -1)
        cv2.rectangle(self.img, (x, y), (x + bw, y + bh), (150, 150, 150), 1)
        for i, (lab, color) in enumerate(items):
            yy = y + 20 + 22 * i
            cv2.line(self.img, (x + 8, yy - 5), (x + 36, yy - 5), _bgr(color), 3, cv2.LINE_AA)
            self.text(lab, (x + 42, yy), 0.5)

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), self.img):
            raise OSError(f"could not write {path}")
        return path


def pck_curve_data(errors_px: np.ndarray, spacing_mm: float, max_mm: float, n: int = 201):
    """``(thresholds_mm (n,), pck (n,))`` on [0, max_mm]."""
    t = np.linspace(0.0, max_mm, n)
    return t, metrics.pck_curve(errors_px, t, unit="mm", spacing_mm=spacing_mm)


def _curve_max(threshold_mm: float) -> float:
    return max(4.0, 2.5 * threshold_mm)


def pck_curve_png(results: dict, spacing_mm: float, threshold_mm: float, path: Path) -> Path:
    """PCK curves of all models (``results``: model → score dict) as a PNG, threshold marked."""
    tmax = _curve_max(threshold_mm)
    ch = _Chart("PCK curve (same-index landmarks)", "threshold (mm)", "PCK (share of landmarks within threshold)",
                (0.0, tmax), (0.0, 1.02))
    ch.axes(yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
    items = []
    for i, (name, res) in enumerate(results.items()):
        color = PALETTE[i % len(PALETTE)]
        t, p = pck_curve_data(res["errors_px"], spacing_mm, tmax)
        ch.polyline(t, p, color)
        pck_at = res["summary"]["pck"]
        items.append((f"{name}  PCK@{threshold_mm:g}mm={pck_at:.1%}  AUC={res['summary']['pck_auc']:.3f}", color))
    ch.vline(threshold_mm, label=f"{threshold_mm:g} mm")
    ch.legend(items)
    return ch.save(path)


def _box_stats(v: np.ndarray):
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return None
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    iqr = q3 - q1
    lo = v[v >= q1 - 1.5 * iqr].min()
    hi = v[v <= q3 + 1.5 * iqr].max()
    out = v[(v < lo) | (v > hi)]
    return q1, med, q3, lo, hi, out


def landmark_box_png(results: dict, spacing_mm: float, threshold_mm: float, path: Path) -> Path:
    """Per-landmark error boxes (mm) of all models, side by side per landmark, as a PNG."""
    errs = {name: np.where(np.isfinite(r["errors_px"]), r["errors_px"] * spacing_mm, np.nan)
            for name, r in results.items()}
    allv = np.concatenate([e[np.isfinite(e)] for e in errs.values()] + [np.array([threshold_mm])])
    ymax = float(np.percentile(allv, 99.5)) * 1.1 if allv.size else 1.0
    ymax = max(ymax, threshold_mm * 1.2, 0.5)
    ch = _Chart("Error per landmark (box: quartiles, whiskers: 1.5 IQR)", "landmark", "radial error (mm)",
                (0.5, N_LANDMARKS + 0.5), (0.0, ymax), size=(1300, 620))
    ch.axes(xticks=list(range(1, N_LANDMARKS + 1)), xticklabels=list(NAMES))
    m = len(errs)
    width = 0.8 / max(m, 1)
    items = []
    for j, (name, e) in enumerate(errs.items()):
        color = PALETTE[j % len(PALETTE)]
        items.append((name, color))
        for k in range(N_LANDMARKS):
            st = _box_stats(e[:, k])
            if st is None:
                continue
            q1, med, q3, lo, hi, out = st
            xc = k + 1 - 0.4 + width * (j + 0.5)
            (ul, ur), (vq1, vq3) = ch.px([xc - width * 0.4, xc + width * 0.4], [q1, q3])
            uc, (vlo, vhi, vmed) = ch.px(xc, [lo, hi, med])
            clipv = lambda v: int(np.clip(round(float(v)), ch.top, ch.h - ch.bottom))  # noqa: E731
            col = _bgr(color)
            cv2.line(ch.img, (int(uc), clipv(vlo)), (int(uc), clipv(vq1)), col, 1)
            cv2.line(ch.img, (int(uc), clipv(vq3)), (int(uc), clipv(vhi)), col, 1)
            light = tuple(int(255 - (255 - c) * 0.35) for c in col)
            cv2.rectangle(ch.img, (int(ul), clipv(vq3)), (int(ur), clipv(vq1)), light, -1)
            cv2.rectangle(ch.img, (int(ul), clipv(vq3)), (int(ur), clipv(vq1)), col, 1)
            cv2.line(ch.img, (int(ul), clipv(vmed)), (int(ur), clipv(vmed)), (30, 30, 30), 2)
            for o in out[:50]:
                _, vo = ch.px(xc, o)
                if ch.top <= vo <= ch.h - ch.bottom:
                    cv2.circle(ch.img, (int(uc), int(vo)), 2, col, -1, cv2.LINE_AA)
    _, v = ch.px(0.5, threshold_mm)
    for x in range(ch.left, ch.w - ch.right, 12):
        cv2.line(ch.img, (x, int(v)), (x + 6, int(v)), (90, 90, 90), 1)
    ch.text(f"{threshold_mm:g} mm", (ch.w - ch.right - 60, int(v) - 5), 0.45, (90, 90, 90))
    ch.legend(items, corner="top-right")
    return ch.save(path)


# ----------------------------------------------------------------------------- charts (plotly HTML)
def pck_curve_figure(results: dict, spacing_mm: float, threshold_mm: float):
    import plotly.graph_objects as go

    tmax = _curve_max(threshold_mm)
    fig = go.Figure()
    for i, (name, res) in enumerate(results.items()):
        t, p = pck_curve_data(res["errors_px"], spacing_mm, tmax)
        fig.add_trace(go.Scatter(x=t, y=p, mode="lines", name=name, line=dict(color=PALETTE[i % len(PALETTE)]),
                                 hovertemplate="%{x:.2f} mm: %{y:.1%}<extra>" + name + "</extra>"))
    fig.add_vline(x=threshold_mm, line_dash="dash", line_color="#555",
                  annotation_text=f"{threshold_mm:g} mm", annotation_position="top right")
    fig.update_layout(title="PCK curve (same-index landmarks)", xaxis_title="threshold (mm)",
                      yaxis_title="PCK", yaxis=dict(range=[0, 1.02], tickformat=".0%"), template="plotly_white")
    return fig


def landmark_box_figure(results: dict, spacing_mm: float, threshold_mm: float):
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, res) in enumerate(results.items()):
        e = res["errors_px"] * spacing_mm
        n = e.shape[0]
        xs = np.repeat(np.array(NAMES)[None], n, axis=0).ravel()
        ys = e.ravel()
        ok = np.isfinite(ys)
        fig.add_trace(go.Box(x=xs[ok], y=ys[ok], name=name, marker_color=PALETTE[i % len(PALETTE)],
                             boxpoints="outliers"))
    fig.add_hline(y=threshold_mm, line_dash="dash", line_color="#555", annotation_text=f"{threshold_mm:g} mm")
    fig.update_layout(title="Error per landmark", boxmode="group", xaxis_title="landmark",
                      yaxis_title="radial error (mm)", template="plotly_white")
    return fig


def write_plots(results: dict, spacing_mm: float, threshold_mm: float, out: Path) -> list[Path]:
    """PNG (OpenCV) and self-contained HTML (plotly, no CDN) of the PCK curves and landmark boxes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [pck_curve_png(results, spacing_mm, threshold_mm, out / "pck_curve.png"),
             landmark_box_png(results, spacing_mm, threshold_mm, out / "landmark_errors.png")]
    for fig, name in ((pck_curve_figure(results, spacing_mm, threshold_mm), "pck_curve.html"),
                      (landmark_box_figure(results, spacing_mm, threshold_mm), "landmark_errors.html")):
        fig.write_html(out / name, include_plotlyjs=True, full_html=True)
        paths.append(out / name)
    return paths


# ----------------------------------------------------------------------------- reports / CLI
def write_report(results: dict, out: Path, spacing_mm: float, threshold_mm: float, plots: bool = True) -> dict:
    """Write ``per_image.csv``, ``per_landmark.csv``, ``summary.json`` (+ plots) for ``results``
    (model name → :func:`score` output). Returns the summary dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pd.concat([r["per_image"] for r in results.values()], ignore_index=True).to_csv(out / "per_image.csv", index=False)
    pd.concat([r["per_landmark"] for r in results.values()], ignore_index=True).to_csv(
        out / "per_landmark.csv", index=False, float_format="%.6g")
    summary = {name: r["summary"] for name, r in results.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    if plots:
        write_plots(results, spacing_mm, threshold_mm, out)
    return summary


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o)}")


def stderr_progress(label: str) -> Progress:
    """A ``progress(done, total)`` that draws a bar on stderr."""
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        frac = done / total if total else 1.0
        bar = "#" * int(30 * frac)
        rate = done / max(time.perf_counter() - t0, 1e-9)
        sys.stderr.write(f"\r{label} [{bar:<30}] {done}/{total} ({rate:.1f} img/s)")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return progress


def _unique_name(name: str, taken: Sequence[str]) -> str:
    if name not in taken:
        return name
    i = 2
    while f"{name}_{i}" in taken:
        i += 1
    return f"{name}_{i}"


def evaluate_models(models: Sequence, dataset: Dataset, roi=None, threshold_mm: float = 2.0,
                    cache_dir: Path | None = None, use_cache: bool = True, batch_size: int = 8,
                    progress_factory: Callable[[str], Progress] | None = None) -> dict:
    """Predict and score every model (names, folders or loaded Predictors) → model name → :func:`score`."""
    from cvs_core.predict import Predictor

    results: dict = {}
    for m in models:
        predictor = m if hasattr(m, "predict_batch") else Predictor.load(m)
        name = _unique_name(predictor.name, list(results))
        pset = predict_dataset(predictor, dataset, roi=roi, batch_size=batch_size, cache_dir=cache_dir,
                               progress=progress_factory(name) if progress_factory else None, use_cache=use_cache)
        pset.model = name
        res = score(pset, dataset.spacing_mm, threshold_mm)
        res["summary"]["dataset"] = dataset.source
        res["summary"]["roi"] = roi
        res["prediction_set"] = pset
        results[name] = res
    return results


def format_summary(summary: dict, threshold_mm: float) -> str:
    head = (f"{'model':<24} {'n':>5} {'MRE px':>8} {'MRE mm':>8} {'SDR2':>7} {'SDR2.5':>7} {'SDR3':>7} {'SDR4':>7} "
            f"{'PCK@' + format(threshold_mm, 'g') + 'mm':>10} {'stage':>7} {'ms/img':>8}")
    lines = [head, "-" * len(head)]

    def pct(v):
        return "   n/a" if v is None else f"{v:6.1%}"

    for name, s in summary.items():
        sa = s.get("stage_agreement", {})
        st = sa.get("pred_vs_label", sa.get("pred_vs_true_landmarks"))
        mre_px = "n/a" if s["mre_px"] is None else f"{s['mre_px']:.2f}"
        mre_mm = "n/a" if s["mre_mm"] is None else f"{s['mre_mm']:.3f}"
        lines.append(f"{name[:24]:<24} {s['n_images']:>5} {mre_px:>8} {mre_mm:>8} "
                     + " ".join(f"{pct(s['sdr'][k]):>7}" for k in SDR_KEYS)
                     + f" {pct(s['pck']):>10} {pct(st):>7} {s['ms_per_image'] or 0:>8.1f}"
                     + ("  (cached)" if s.get("cached") else ""))
    lines.append("stage = CS agreement of stages from predicted landmarks with the labels "
                 "(or with stages from the true landmarks when there are no labels)")
    lines.append("legacy study metrics are in summary.json under 'legacy' (not comparable with PCK/SDR; see its note)")
    return "\n".join(lines)


def evaluate_command(args) -> int:
    """``cvs evaluate --model M [--model M2 …] --csv CSV --images DIR [--roi R] [--spacing MM]
    [--threshold MM] --out DIR [--no-cache]``."""
    from cvs_core.registry import ModelError

    dataset = load_dataset(args.csv, args.images, spacing_mm=float(args.spacing))
    if dataset.landmarks is None:
        raise ValueError(f"{args.csv} has no landmarks to evaluate against")
    for w in dataset.warnings[:10]:
        print(f"note: {w}", file=sys.stderr)
    out = Path(args.out)
    try:
        results = evaluate_models(
            args.model, dataset, roi=args.roi, threshold_mm=float(args.threshold),
            use_cache=not getattr(args, "no_cache", False),
            progress_factory=lambda name: stderr_progress(f"{name:<20}"))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = write_report(results, out, dataset.spacing_mm, float(args.threshold))
    print(f"evaluated {len(results)} model(s) on {len(dataset)} images from {dataset.source} "
          f"(spacing {dataset.spacing_mm:g} mm/px, PCK threshold {float(args.threshold):g} mm)")
    print(format_summary(summary, float(args.threshold)))
    print(f"wrote {out / 'per_image.csv'}, {out / 'per_landmark.csv'}, {out / 'summary.json'}, "
          f"pck_curve.png/.html, landmark_errors.png/.html")
    return 0

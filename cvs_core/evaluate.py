"""Dataset evaluation: stream a :class:`~cvs_core.datasets.Dataset` through a
:class:`~cvs_core.predict.Predictor` (with a prediction cache), score the landmarks, and the
``cvs evaluate`` command. Datasets live in :mod:`cvs_core.datasets`, tables and charts in
:mod:`cvs_core.reports`; metric definitions in docs/architecture.md, "Metrics".

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
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from cvs_core import metrics
from cvs_core.datasets import (REPO_ROOT, SAMPLES_DIR, Dataset, load_dataset,  # noqa: F401 (re-exported)
                               phantom_dataset, read_grey, samples_dataset)
from cvs_core.fileio import atomic_path, json_float
from cvs_core.landmarks import N_LANDMARKS, NAMES, ROI_SIZE
from cvs_core.reports import (SDR_KEYS, Progress, format_summary, stderr_progress,  # noqa: F401 (re-exported)
                              summary_table, write_plots, write_report)

CACHE_VERSION = 1
LEGACY_NOTE = ("LEGACY study metrics, reproduced only to compare with the study's table: "
               "unet_pck = identity-free blob matching (a predicted blob within 5 px of ANY true blob "
               "counts; can exceed 1) on 256x256 masks rendered here from the predicted and true "
               "landmarks with the study's MaskCodec (our re-rendering, not the model's raw mask); "
               "inception_pck = same-index distance < 40 ROI px (about 10 mm). Use pck/sdr instead.")


# ----------------------------------------------------------------------------- predictions
def _j6(v) -> float | None:
    return json_float(v, 6)


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


def cache_key(predictor, dataset: Dataset, roi=None, tta: bool = True) -> str:
    """sha256 of (weights, codec, preprocessing after the ROI override, roi, dataset fingerprint, and
    the test-time shifts when the model has them and ``tta`` is on)."""
    fields = {
        "v": CACHE_VERSION,
        "weights": model_fingerprint(predictor),
        "codec": predictor.codec.to_dict(),
        "preprocess": _roi_config(predictor, roi).to_dict(),
        "roi": roi,
        "dataset": dataset.fingerprint(),
    }
    step = getattr(getattr(predictor, "tta", None), "step_px", 0)
    if tta and step:  # absent otherwise, so the keys of models without shifts did not change
        fields["tta_step_px"] = step
    if roi == "auto":  # the automatic ROI depends on the spacing and on its own parameters
        from cvs_core.roi import AutoRoiConfig

        fields.update(spacing=dataset.spacing_mm, auto_roi=repr(AutoRoiConfig()))
    payload = json.dumps(fields, sort_keys=True, default=str)
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
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, names=np.asarray(names, dtype=str), pred=pred, confidence=conf,
                            ms_per_image=np.float64(ms))


def _predict_in_process(predictor, dataset: Dataset, batch_size: int, roi, extra: dict, pred: np.ndarray,
                        conf: np.ndarray, progress: Progress | None) -> None:
    """Fill ``pred (n, 19, 2)`` and ``conf (n, 19)`` batch by batch, the next batch read on a helper thread."""
    n = len(dataset)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]

    def load(idx):
        return [read_grey(dataset.image_paths[i]) for i in idx]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvs-read") as pool:
        pending = pool.submit(load, batches[0]) if batches else None
        for b, idx in enumerate(batches):
            images = pending.result()
            pending = pool.submit(load, batches[b + 1]) if b + 1 < len(batches) else None
            results = predictor.predict_batch(images, roi=roi, **extra)
            del images
            for i, r in zip(idx, results):
                pred[i] = r.landmarks if roi == "auto" else r.landmarks_roi
                conf[i] = r.confidence
            del results
            if progress:
                progress(idx[-1] + 1, n)


def predict_dataset(predictor, dataset: Dataset, roi=None, batch_size: int = 8, cache_dir: Path | None = None,
                    progress: Progress | None = None, use_cache: bool = True, tta: bool = True) -> PredictionSet:
    """Run ``predictor`` over every image of ``dataset`` in batches → :class:`PredictionSet`.

    roi : None (the model's own preprocessing), "none", "seed" or ``[x0, y0, x1, y1]``.
    Images are read from disk batch by batch (the next batch on a helper thread), pushed through
    ``Predictor.predict_batch`` (one compiled model call per batch), and only the ROI-frame landmarks
    and confidences are kept. Results are cached in ``cache_dir`` (default
    ``$CVS_HOME/cache/predictions``) as ``<sha256>.npz``; ``use_cache=False`` neither reads nor
    writes it. ``progress(done, total)`` is called after every batch (and once at the start).
    ``tta``: the model's test-time shifts (``Predictor.predict_batch``); False = one plain call per image.
    ``predictor`` may also be a :class:`cvs_core.workers.WorkerPool` (the same model in several
    processes, each reading its own images; same results).
    """
    n = len(dataset)
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    key = cache_key(predictor, dataset, roi, tta)
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
    # roi="auto": labels are in the full image's pixels and the spacing is per image pixel
    extra = {"spacing_mm": dataset.spacing_mm} if roi == "auto" else {}
    if not tta:
        extra["tta"] = False
    t0 = time.perf_counter()
    if hasattr(predictor, "predict_paths"):  # a cvs_core.workers.WorkerPool: the images go to its processes
        full, in_roi, conf = predictor.predict_paths(dataset.image_paths, batch_size=batch_size, roi=roi,
                                                     progress=(lambda k: progress(k, n)) if progress else None,
                                                     **extra)
        pred = full if roi == "auto" else in_roi
    else:
        _predict_in_process(predictor, dataset, batch_size, roi, extra, pred, conf, progress)
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
        try:  # 13-landmark sets are staged too (the missing six are derived from the corners)
            out[i] = stage_landmarks(lm, spacing_mm).stage
        except ValueError:
            pass
    return out


def _agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = (a > 0) & (b > 0)
    return float(np.mean(a[ok] == b[ok])) if ok.any() else None


@dataclass
class Score:
    """One model scored on a dataset.

    summary: JSON-ready dict (see :func:`score`). per_image: one row per image (MRE, max error,
    missing, PCK, confidence, stages). per_landmark: one row per landmark (MRE, SD, median, PCK,
    SDR, missing). errors_px: ``(N, 19)`` radial errors in ROI px (inf = missed).
    prediction_set: the predictions scored.
    """

    summary: dict
    per_image: pd.DataFrame
    per_landmark: pd.DataFrame
    errors_px: np.ndarray
    prediction_set: PredictionSet | None = None

    def to_dict(self) -> dict:
        """``{"summary", "per_image", "per_landmark", "errors_px", "prediction_set"}`` (the same
        objects, not copies): the dict that :func:`score` used to return."""
        return {"summary": self.summary, "per_image": self.per_image, "per_landmark": self.per_landmark,
                "errors_px": self.errors_px, "prediction_set": self.prediction_set}

    def __getitem__(self, key: str):
        """``score["summary"]`` etc., for callers written against the old dict."""
        return self.to_dict()[key]


def score(pset: PredictionSet, spacing_mm: float | None = None, threshold_mm: float = 2.0, stages=None) -> Score:
    """Score a :class:`PredictionSet` against its labels.

    spacing_mm : mm per ROI px (default: the set's). threshold_mm : the PCK threshold.
    stages : ``(N,)`` CS labels (default: the set's); 0 = unknown.

    Returns a :class:`Score`. Its summary holds :func:`metrics.summarize`'s keys plus ``legacy``
    (clearly labelled study metrics with a ``note``), ``stage_agreement``, ``ms_per_image``,
    ``model``, ``cached``, ``mean_confidence``.
    """
    if pset.true is None:
        raise ValueError(f"{pset.model}: the dataset has no labels to score against")
    spacing = float(spacing_mm if spacing_mm is not None else pset.spacing_mm)
    stages = pset.stages if stages is None else np.asarray(stages, np.int64)
    pred, true = pset.pred, pset.true
    # empty label cells (subset annotations, e.g. the 13-landmark scheme) are not scored: NaN
    # error; a missing prediction is inf (a failure)
    e = metrics.radial_errors(pred, true, missing_truth="skip")
    summary = metrics.summarize(pred, true, spacing, pck_threshold_mm=threshold_mm, missing_truth="skip")
    summary["landmarks_scored"] = [int(k) + 1 for k in np.flatnonzero(np.isfinite(true).all(axis=2).any(axis=0))]
    summary["legacy"] = {
        "unet_pck": _j6(legacy_unet_pck_from_landmarks(pred, true)),
        "inception_pck": _j6(metrics.legacy_inception_pck(pred, true, missing_truth="skip")),
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
    summary["ms_per_image"] = _j6(pset.ms_per_image)
    summary["model"] = pset.model
    summary["cached"] = bool(pset.cached)
    summary["mean_confidence"] = _j6(np.nanmean(pset.confidence)) if np.isfinite(pset.confidence).any() else None

    finite = np.where(np.isfinite(e), e, np.nan)
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_img_mean = np.nanmean(finite, axis=1)
            per_img_max = np.nanmax(e, axis=1)
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
        "n_missing": np.sum(np.isinf(e), axis=1),
        "n_scored": np.sum(~np.isnan(e), axis=1),
        f"pck@{threshold_mm:g}mm": metrics.scored_rate(e * spacing <= threshold_mm, e, axis=1),
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
        "n_missing": np.sum(np.isinf(e), axis=0),
        "n_scored": np.sum(~np.isnan(e), axis=0),
    })
    return Score(summary=summary, per_image=per_image, per_landmark=per_landmark, errors_px=e, prediction_set=pset)


# ----------------------------------------------------------------------------- many models / CLI
def _unique_name(name: str, taken: Sequence[str]) -> str:
    if name not in taken:
        return name
    i = 2
    while f"{name}_{i}" in taken:
        i += 1
    return f"{name}_{i}"


def evaluate_models(models: Sequence, dataset: Dataset, roi=None, threshold_mm: float = 2.0,
                    cache_dir: Path | None = None, use_cache: bool = True, batch_size: int = 8,
                    progress_factory: Callable[[str], Progress] | None = None, tta: bool = True,
                    workers: int = 1) -> dict[str, Score]:
    """Predict and score every model (names, folders or loaded Predictors) → model name → :class:`Score`.
    ``workers`` > 1: a model given by name or folder runs in that many processes
    (:class:`cvs_core.workers.WorkerPool`, one per model, stopped after it)."""
    from contextlib import nullcontext

    from cvs_core.predict import Predictor
    from cvs_core.workers import WorkerPool

    results: dict = {}
    for m in models:
        if hasattr(m, "predict_batch") or hasattr(m, "predict_paths"):
            holder = nullcontext(m)
        elif workers > 1:
            holder = WorkerPool(m, workers=workers, start=False)  # not started on a cache hit
        else:
            holder = nullcontext(Predictor.load(m))
        with holder as predictor:
            name = _unique_name(predictor.name, list(results))
            pset = predict_dataset(predictor, dataset, roi=roi, batch_size=batch_size, cache_dir=cache_dir,
                                   progress=progress_factory(name) if progress_factory else None,
                                   use_cache=use_cache, tta=tta)
        pset.model = name
        res = score(pset, dataset.spacing_mm, threshold_mm)
        res.summary["dataset"] = dataset.source
        res.summary["roi"] = roi
        results[name] = res
    return results


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
            use_cache=not getattr(args, "no_cache", False), tta=not getattr(args, "no_tta", False),
            workers=int(getattr(args, "workers", 1) or 1), progress_factory=lambda name: stderr_progress(f"{name:<20}"))
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

"""Real cephalograms from another clinic: accuracy of the shipped models with the automatic ROI and
with a hand box, on an external labelled folder (validation only — never training).

    python bench/real_dev.py ../shared/data/external_dev/isbi10 --spacing 0.1 [--out table.md] [--write-manifest]

DATA_DIR holds ``labels.csv`` (study format, full-image pixels, empty cells = landmark not
annotated, e.g. the 13-landmark scheme) and ``images/``. For each model (default: the two shipped
ones) and each ROI mode it reports per-landmark mm errors (mean / median over the annotated ones),
SDR at 2 / 2.5 / 4 mm, the median error, the images off by a vertebra, and the auto-ROI time.

ROI modes
* ``auto``: ``roi="auto"`` with the true spacing (``cvs_core.roi``).
* ``hand``: the box a careful user would draw, derived from the true landmarks: the study's
  proportions (250×600 ROI at 0.25 mm/px, i.e. the scale fixed by the spacing) with the centroid of
  the annotated landmarks placed where the mean shape puts the same landmarks.

"Off by a vertebra": an image whose mean error over its annotated landmarks exceeds half the
vertebra period (mean distance between the true C3 and C4 points of the same kind), or whose
predicted C3 points lie closer to the true C4 points than to the true C3 ones (or C4 to C3).
Numbers are measured, not copied: run it to reproduce them (≈ 1–2 min on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cvs_core.annotations import read_annotations  # noqa: E402
from cvs_core.landmarks import MEAN_SHAPE_ROI, NAMES  # noqa: E402
from cvs_core.metrics import radial_errors  # noqa: E402

C3 = np.arange(3, 11)   # 0-based C3 landmarks (C3sp … C3ia)
C4 = np.arange(11, 19)  # the same kinds on C4


def hand_box(image, true_pts, spacing_mm):
    """:class:`~cvs_core.roi.RoiResult` of the hand box for ``true_pts (19, 2)`` (NaN = not annotated)."""
    from cvs_core.roi import ROI_MM_PER_PX, roi_around

    ok = np.isfinite(true_pts).all(1)
    centre = true_pts[ok].mean(0)
    centre_roi = np.asarray(MEAN_SHAPE_ROI, float)[ok].mean(0)
    return roi_around(image, centre, spacing_mm / ROI_MM_PER_PX, centre_roi=centre_roi, spacing_mm=spacing_mm)


def vertebra_period(true_pts) -> float:
    """Mean distance between true C3 and C4 points of the same kind (px)."""
    d = np.linalg.norm(true_pts[C4] - true_pts[C3], axis=1)
    return float(np.nanmean(d))


def off_by_vertebra(pred, true) -> tuple[bool, str]:
    """(off, why) for one image; ``pred``, ``true`` ``(19, 2)`` px (true NaN = not annotated)."""
    e = radial_errors(pred, true, missing_truth="skip")[0]
    period = vertebra_period(true)
    mean_e = float(np.nanmean(np.where(np.isinf(e), np.nan, e))) if np.isfinite(e).any() else np.inf
    if np.isinf(e).any():
        return True, "missing landmarks"
    reasons = []
    if mean_e > 0.5 * period:
        reasons.append(f"mean error {mean_e / period:.2f} vertebra")
    ok3 = np.isfinite(true[C3]).all(1) & np.isfinite(true[C4]).all(1)
    if ok3.any():
        own = np.linalg.norm(pred[C3][ok3] - true[C3][ok3], axis=1).mean()
        below = np.linalg.norm(pred[C3][ok3] - true[C4][ok3], axis=1).mean()
        own4 = np.linalg.norm(pred[C4][ok3] - true[C4][ok3], axis=1).mean()
        above = np.linalg.norm(pred[C4][ok3] - true[C3][ok3], axis=1).mean()
        if below < own:
            reasons.append("C3 outline on the true C4 (one vertebra low)")
        if above < own4:
            reasons.append("C4 outline on the true C3 (one vertebra high)")
    return bool(reasons), "; ".join(reasons)


def run(data_dir: Path, spacing: float, models, modes):
    from cvs_core.evaluate import read_grey
    from cvs_core.predict import Predictor

    aset = read_annotations(data_dir / "labels.csv", image_dir=data_dir / "images", missing_images="skip",
                            check_bounds="warn", allow_missing=True)
    images = [read_grey(data_dir / "images" / n) for n in aset.names]
    rows = {}
    for model in models:
        predictor = Predictor.load(model)
        for mode in modes:
            if mode == "auto":  # warm-up: builds the whole-image network once (not timed)
                predictor.predict(images[0], roi="auto", spacing_mm=spacing)
            preds, ms, fit_ok, off = [], [], [], []
            for name, img, true in zip(aset.names, images, aset.landmarks):
                t0 = time.perf_counter()
                if mode == "auto":
                    p = predictor.predict(img, roi="auto", spacing_mm=spacing)
                    ms.append(p.ms.get("auto_roi", np.nan))
                else:
                    p = predictor.predict(img, roi=hand_box(img, true, spacing), spacing_mm=spacing)
                preds.append(p.landmarks)
                fit_ok.append(p.fit_ok)
                o, why = off_by_vertebra(p.landmarks, true)
                off.append((name, o, why, p.fit_ok, (time.perf_counter() - t0) * 1e3))
            pred = np.asarray(preds)
            e = radial_errors(pred, aset.landmarks, missing_truth="skip") * spacing  # mm, NaN = not annotated
            rows[(predictor.name, mode)] = dict(e=e, ms=ms, off=off, fit_ok=fit_ok)
    return aset, rows


def markdown(aset, rows, spacing, data_dir) -> str:
    out = [f"Data: `{data_dir.name}` — {len(aset)} images, spacing {spacing:g} mm/px, "
           f"{int(np.isfinite(aset.landmarks).all(-1).sum())} annotated landmarks "
           f"(landmarks {', '.join(str(k + 1) for k in np.flatnonzero(np.isfinite(aset.landmarks).all(-1).any(0)))}).",
           "",
           "| model | ROI | SDR@2 mm | SDR@2.5 mm | SDR@4 mm | median (mm) | mean (mm) | off by a vertebra | flagged (fit_ok false) | auto-ROI ms/img |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for (model, mode), r in rows.items():
        e = r["e"]
        v = e[~np.isnan(e)]
        fin = v[np.isfinite(v)]
        n_off = sum(o for _, o, _, _, _ in r["off"])
        offs = ", ".join(n for n, o, _, _, _ in r["off"] if o) or "none"
        flagged = sum(not f for f in r["fit_ok"])
        ms = f"{np.nanmedian(r['ms']):.0f}" if r["ms"] else "–"
        out.append(f"| {model} | {mode} | {np.mean(v <= 2):.1%} | {np.mean(v <= 2.5):.1%} | {np.mean(v <= 4):.1%} | "
                   f"{np.median(v):.2f} | {fin.mean():.2f} | {n_off}/{len(aset)} ({offs}) | {flagged}/{len(aset)} | {ms} |")
    out += ["", "Per-landmark error, mean / median (mm), annotated landmarks only:", ""]
    keys = list(rows)
    lm = np.flatnonzero(np.isfinite(aset.landmarks).all(-1).any(0))
    out.append("| landmark | " + " | ".join(f"{m} {mode}" for m, mode in keys) + " |")
    out.append("|---|" + "---|" * len(keys))
    for k in lm:
        cells = []
        for key in keys:
            col = rows[key]["e"][:, k]
            col = col[~np.isnan(col)]
            cells.append(f"{np.mean(col):.2f} / {np.median(col):.2f} (n={len(col)})")
        out.append(f"| {k + 1} {NAMES[k]} | " + " | ".join(cells) + " |")
    out += ["", "Per image (mean error mm; off-by-a-vertebra reason; fit_ok):", ""]
    out.append("| image | " + " | ".join(f"{m} {mode}" for m, mode in keys) + " |")
    out.append("|---|" + "---|" * len(keys))
    for i, name in enumerate(aset.names):
        cells = []
        for key in keys:
            r = rows[key]
            e = r["e"][i]
            fin = e[np.isfinite(e)]
            _, o, why, ok, _ = r["off"][i]
            cells.append(f"{fin.mean():.2f}" + (f" OFF ({why})" if o else "") + ("" if ok else " [flagged]"))
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def summaries(aset, rows) -> dict:
    """``run``'s rows → model → ROI mode → SDR at 2 / 2.5 / 4 mm, median mm, images off, n images."""
    by_model: dict = {}
    for (model, mode), r in rows.items():
        v = r["e"][~np.isnan(r["e"])]
        by_model.setdefault(model, {})[mode] = {
            "sdr_2mm": round(float(np.mean(v <= 2)), 4), "sdr_2_5mm": round(float(np.mean(v <= 2.5)), 4),
            "sdr_4mm": round(float(np.mean(v <= 4)), 4), "median_mm": round(float(np.median(v)), 3),
            "off_by_a_vertebra": int(sum(o for _, o, _, _, _ in r["off"])), "n_images": len(aset)}
    return by_model


def write_into_manifests(aset, rows, spacing, data_dir) -> None:
    """Store each model's auto/hand summary (:func:`summaries`) as ``metrics.external_dev`` in its manifest."""
    from cvs_core.registry import read_manifest, resolve_model, write_manifest

    for model, res in summaries(aset, rows).items():
        folder = resolve_model(model)
        manifest = read_manifest(folder)
        manifest.setdefault("metrics", {})["external_dev"] = {
            **res, "spacing_mm": spacing, "note": "validation only, never trained on",
            "data": f"{data_dir.name}: {len(aset)} images, "
                    f"{int(np.isfinite(aset.landmarks).all(-1).any(0).sum())} of 19 landmarks (bench/real_dev.py)"}
        write_manifest(folder, manifest)
        print(f"wrote metrics.external_dev into {folder.name}/manifest.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--spacing", type=float, required=True, help="true mm per image pixel (0.1 for ISBI 2015)")
    ap.add_argument("--models", nargs="+", default=["unet_heatmap", "inception_resnet_v2"])
    ap.add_argument("--modes", nargs="+", default=["auto", "hand"], choices=["auto", "hand"])
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    ap.add_argument("--write-manifest", action="store_true",
                    help="store each model's summary as metrics.external_dev in its manifest")
    args = ap.parse_args(argv)
    if not (args.data_dir / "labels.csv").is_file():
        print(f"error: {args.data_dir}/labels.csv not found", file=sys.stderr)
        return 2
    aset, rows = run(args.data_dir, args.spacing, args.models, args.modes)
    text = markdown(aset, rows, args.spacing, args.data_dir)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.write_manifest:
        write_into_manifests(aset, rows, args.spacing, args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

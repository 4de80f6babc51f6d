"""What the PCK evaluation screen shows, computed without Streamlit: tables, curves and thumbnails.

Input: per model, a :class:`~cvs_core.evaluate.PredictionSet` (``pred``/``true`` ``(N, 19, 2)`` ROI
px) and its :class:`~cvs_core.evaluate.Score` from :func:`cvs_core.evaluate.score` (``to_dict()``:
``summary``, ``errors_px`` ``(N, 19)`` and ``per_image``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# unit → (label, slider min, max, default, step)
UNITS = {"mm": ("mm", 0.0, 10.0, 2.0, 0.1), "px": ("ROI px", 0.0, 40.0, 8.0, 0.5),
         "c3": ("× C3 width", 0.0, 0.5, 0.1, 0.01)}
UNIT_NAMES = {"mm": "mm", "px": "pixels", "c3": "fraction of C3 width"}
PERCENT_COLUMNS = ("legacy U-Net PCK", "legacy Inception PCK", "SDR 2 mm", "SDR 2.5 mm", "SDR 3 mm", "SDR 4 mm")
NUMBER_COLUMNS = ("MRE mm", "SD mm", "MRE px", "PCK AUC 0–4 mm", "Dice (masks)", "Dice loss", "MAE px", "ms / image")
AGREEMENT_COLUMNS = ("vs stage of the true landmarks", "vs generated / labelled stage", "true landmarks vs label")
TRAINING_IMAGES_NOTE = ("LC (1) and LC (11) were in the shipped demo models' training data, so their scores "
                        "here measure memorisation, not accuracy on new patients (100 % is expected).")


@dataclass
class ModelScore:
    """One model's scores: summary dict, errors ``(N, 19)`` ROI px, per-image DataFrame, mask Dice."""

    summary: dict
    errors_px: np.ndarray
    per_image: pd.DataFrame
    mask: dict


def score_model(pset, spacing_mm: float) -> ModelScore:
    """Score one PredictionSet at ``spacing_mm`` mm per ROI px (SDR at 2 mm) plus the study's mask Dice."""
    from cvs_core.evaluate import score
    from cvs_core.viz import rendered_mask_dice

    s = score(pset, spacing_mm=float(spacing_mm), threshold_mm=2.0).to_dict()
    return ModelScore(summary=s["summary"], errors_px=s["errors_px"], per_image=s["per_image"],
                      mask=rendered_mask_dice(pset.pred, pset.true))


def metrics_table(scores: dict[str, ModelScore]) -> pd.DataFrame:
    """One row per model: the legacy (study) PCKs first, then MRE/SD, SDRs, AUC, Dice, MAE, timing."""
    rows = []
    for m, sc in scores.items():
        s = sc.summary
        rows.append({
            "model": m,
            "legacy U-Net PCK": s["legacy"]["unet_pck"], "legacy Inception PCK": s["legacy"]["inception_pck"],
            "MRE mm": s["mre_mm"], "SD mm": s["sd"], "MRE px": s["mre_px"],
            "SDR 2 mm": s["sdr"]["2.0"], "SDR 2.5 mm": s["sdr"]["2.5"], "SDR 3 mm": s["sdr"]["3.0"],
            "SDR 4 mm": s["sdr"]["4.0"], "PCK AUC 0–4 mm": s["pck_auc"],
            "Dice (masks)": sc.mask["dice"], "Dice loss": sc.mask["dice_loss"],
            "MAE px": s["coordinate_mae"], "missing": s["n_missing"], "ms / image": s["ms_per_image"],
        })
    return pd.DataFrame(rows)


def stage_agreement_table(scores: dict[str, ModelScore]) -> pd.DataFrame:
    """One row per model: share of images whose predicted stage equals each reference."""
    rows = []
    for m, sc in scores.items():
        a = sc.summary["stage_agreement"]
        rows.append({"model": m, AGREEMENT_COLUMNS[0]: a.get("pred_vs_true_landmarks"),
                     AGREEMENT_COLUMNS[1]: a.get("pred_vs_label"), AGREEMENT_COLUMNS[2]: a.get("true_landmarks_vs_label"),
                     "images staged": a.get("n_staged")})
    return pd.DataFrame(rows)


def curve_grid(unit: str, threshold: float, n: int = 121) -> np.ndarray:
    """Thresholds ``(n,)`` for the PCK curve: 0 to the unit's usual range (or 1.5 × the threshold)."""
    top = {"mm": 6.0, "px": 30.0, "c3": 0.4}[unit]
    return np.linspace(0, max(top, threshold * 1.5), n)


def sorted_errors(score: ModelScore, unit: str, spacing_mm: float, landmarks: np.ndarray | None):
    """:class:`~cvs_core.metrics.SortedErrors` of a model's errors in ``unit`` (c3: needs the true
    landmarks ``(N, 19, 2)`` for the C3 widths)."""
    from cvs_core.metrics import SortedErrors, c3_width

    return SortedErrors(score.errors_px, unit=unit, spacing_mm=float(spacing_mm) if unit == "mm" else None,
                        c3_widths=c3_width(landmarks) if unit == "c3" else None)


def worst_images(score: ModelScore, k: int) -> list[dict]:
    """The ``k`` images with the largest MRE (failures first): dicts with image_name, mre_mm, stage_pred
    and a ready caption."""
    per = score.per_image.sort_values("mre_px", ascending=False, na_position="first").head(k)
    out = []
    for _, row in per.iterrows():
        mre = f"{row['mre_mm']:.2f} mm" if np.isfinite(row["mre_mm"]) else "—"
        stage = f" · CS{int(row['stage_pred'])}" if row["stage_pred"] else ""
        out.append({"image_name": row["image_name"], "caption": f"{row['image_name']} · MRE {mre}{stage}"})
    return out


def thumbnail(path: str, roi, pred: np.ndarray, true: np.ndarray, color: str) -> bytes:
    """JPEG of one dataset image's ROI with predicted ``(19, 2)`` and true ``(19, 2)`` landmarks."""
    from cvs_core import evaluate, viz
    from cvs_core.preprocess import PreprocessConfig, select_roi

    grey = evaluate.read_grey(path)
    if roi == "seed":
        grey, _ = select_roi(grey, PreprocessConfig(roi="seed", roi_scale=0.5))
    img = viz.render_overlay(grey, [viz.PointLayer("prediction", pred, color),
                                    viz.PointLayer("truth", true, viz.TRUTH_COLOR, truth=True)],
                             scale=1.0, legend=False)
    return viz.encode_image(img, "jpeg", 85)


def per_image_csv(scores: dict[str, ModelScore]) -> str:
    return pd.concat([sc.per_image for sc in scores.values()]).to_csv(index=False)


def summary_json(scores: dict[str, ModelScore]) -> str:
    import json

    from cvs_core.registry import to_jsonable

    return json.dumps(to_jsonable({m: sc.summary for m, sc in scores.items()}), indent=2)

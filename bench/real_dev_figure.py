"""Figure of the shipped models on an external labelled folder (e.g. the ISBI-2015 dev images):
one tile per image, cropped around C2–C4, with the true landmarks (green), the U-Net (red) and the
InceptionResNetV2 (blue) outlines from ``roi="auto"``, the auto ROI box (yellow, when it fits in the
tile) and each model's mean error in mm.

    python bench/real_dev_figure.py ../shared/data/external_dev/isbi10 --spacing 0.1 --out /tmp/real_dev.png

The figure shows the dev images themselves, which must not be committed into the project: write
it outside the repository (``--out`` is required) and look at it locally.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cvs_core.landmarks import OUTLINES  # noqa: E402

COLOURS = {"truth": (80, 200, 80), "unet_heatmap": (60, 60, 235), "inception_resnet_v2": (235, 140, 40)}
TILE = 360  # px


def _draw(img, pts, colour, offset, scale, radius=3):
    p = (np.asarray(pts, float) - offset) * scale
    for idx in OUTLINES.values():
        q = p[[i - 1 for i in idx]]
        q = q[np.isfinite(q).all(1)]
        if len(q) >= 2:
            cv2.polylines(img, [np.round(q).astype(np.int32)], False, colour, 1, cv2.LINE_AA)
    for x, y in p[np.isfinite(p).all(1)]:
        cv2.circle(img, (int(round(x)), int(round(y))), radius, colour, -1, cv2.LINE_AA)


def make_figure(data_dir: Path, spacing: float, models, out: Path, columns: int = 5, margin_mm: float = 22.0) -> Path:
    from cvs_core.annotations import read_annotations
    from cvs_core.evaluate import read_grey
    from cvs_core.metrics import radial_errors
    from cvs_core.predict import Predictor

    aset = read_annotations(data_dir / "labels.csv", image_dir=data_dir / "images", missing_images="skip",
                            check_bounds="warn", allow_missing=True)
    predictors = [Predictor.load(m) for m in models]
    tiles = []
    for name, true in zip(aset.names, aset.landmarks):
        grey = read_grey(data_dir / "images" / name)
        preds = {p.name: p.predict(grey, roi="auto", spacing_mm=spacing) for p in predictors}
        centre = np.nanmean(true, axis=0)
        half = margin_mm / spacing
        x0, y0 = centre - half
        crop_scale = TILE / (2 * half)
        m = np.array([[1, 0, -x0], [0, 1, -y0]], float) * crop_scale
        tile = cv2.warpAffine(grey, m, (TILE, TILE), flags=cv2.INTER_AREA, borderValue=0)
        tile = cv2.cvtColor(cv2.createCLAHE(2.0, (4, 4)).apply(tile), cv2.COLOR_GRAY2BGR)
        _draw(tile, true, COLOURS["truth"], (x0, y0), crop_scale, 4)
        lines = [name]
        for mname, pr in preds.items():
            _draw(tile, pr.landmarks, COLOURS.get(mname, (200, 200, 200)), (x0, y0), crop_scale)
            e = radial_errors(pr.landmarks, true, missing_truth="skip")[0] * spacing
            lines.append(f"{mname.split('_')[0]} {np.nanmean(np.where(np.isinf(e), np.nan, e)):.1f} mm"
                         + ("" if pr.fit_ok else " (flagged)"))
        for i, text in enumerate(lines):
            cv2.putText(tile, text, (6, 18 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    blank = np.zeros_like(tiles[0])
    grid = np.vstack([np.hstack(r + [blank] * (columns - len(r))) for r in rows])
    legend = np.full((28, grid.shape[1], 3), 255, np.uint8)
    x = 8
    for label, colour in (("truth", COLOURS["truth"]), *((m, COLOURS.get(m, (200, 200, 200))) for m in models)):
        cv2.circle(legend, (x + 6, 14), 6, colour, -1)
        cv2.putText(legend, label, (x + 18, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (30, 30, 30), 1, cv2.LINE_AA)
        x += 40 + 10 * len(label)
    cv2.putText(legend, f"roi='auto', {spacing:g} mm/px", (x + 20, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (30, 30, 30), 1,
                cv2.LINE_AA)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), np.vstack([legend, grid])):
        raise OSError(f"could not write {out}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--spacing", type=float, required=True)
    ap.add_argument("--out", type=Path, required=True, help="PNG path (keep it out of the repository)")
    ap.add_argument("--models", nargs="+", default=["unet_heatmap", "inception_resnet_v2"])
    args = ap.parse_args(argv)
    print(make_figure(args.data_dir, args.spacing, args.models, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

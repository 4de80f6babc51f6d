"""Figure ``docs/wide_phantoms_vs_real.png``: wide phantoms (``cvs_core.synth.render_wide_phantom``)
next to the same neck region of the bundled study cephalograms (``data/samples/original``, never the
external dev images).

    .venv/bin/python scripts/wide_phantom_figure.py [--out docs/wide_phantoms_vs_real.png]

Top row: the real images scaled by 0.5 (the study's ROI scale, ≈ 0.25 mm/px) and cut to
x 0–560, y 250–1150 (the study ROI is x 0–250, y 400–1000, drawn in green). Bottom row: wide phantoms
at 0.25 mm/px cut to the same frame around their ROI box (green), landmarks in red.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cvs_core.synth import render_wide_phantom  # noqa: E402

CUT = (560, 900)  # (width, height) of each panel at 0.25 mm/px
ROI_IN_CUT = (0, 150)  # where the study ROI's top-left sits in a panel


def _panel(grey: np.ndarray, roi_xy, pts=None) -> np.ndarray:
    """Cut a CUT-sized panel placing the ROI's top-left at ROI_IN_CUT (black outside the image)."""
    x0 = int(roi_xy[0]) - ROI_IN_CUT[0]
    y0 = int(roi_xy[1]) - ROI_IN_CUT[1]
    m = np.float32([[1, 0, -x0], [0, 1, -y0]])
    cut = cv2.warpAffine(grey, m, CUT, flags=cv2.INTER_LINEAR, borderValue=0)
    rgb = cv2.cvtColor(cut, cv2.COLOR_GRAY2BGR)
    cv2.rectangle(rgb, ROI_IN_CUT, (ROI_IN_CUT[0] + 249, ROI_IN_CUT[1] + 599), (0, 200, 0), 2)
    if pts is not None:
        for x, y in pts - np.array([x0, y0]):
            cv2.circle(rgb, (int(round(x)), int(round(y))), 3, (0, 0, 255), -1)
    return rgb


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "docs" / "wide_phantoms_vs_real.png"))
    p.add_argument("--n", type=int, default=4)
    args = p.parse_args()
    real = []
    for path in sorted((REPO / "data" / "samples" / "original").glob("*.jpg"))[: args.n]:
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        half = cv2.resize(grey, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        panel = _panel(half, (0, 400))
        cv2.putText(panel, f"real {path.stem}", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 255, 255), 2)
        real.append(panel)
    synth = []
    for i in range(args.n):
        wp = render_wide_phantom(300 + i, stage=i % 6 + 1, spacing_mm=0.25)
        panel = _panel(wp.image, wp.roi_box[:2], wp.landmarks)
        cv2.putText(panel, f"wide phantom {300 + i} CS{wp.stage}", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9,
                    (0, 255, 255), 2)
        synth.append(panel)
    fig = np.vstack([np.hstack(real), np.hstack(synth)])
    fig = cv2.resize(fig, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), fig):
        raise OSError(f"could not write {out}")
    print(f"wrote {out} ({fig.shape[1]}×{fig.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

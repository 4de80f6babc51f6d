"""Make docs/phantoms_vs_real.png (5 real ROIs over 6 phantoms CS1..CS6) and
docs/phantoms_landmarks.png (phantoms with landmarks and outlines). Also times the renderer.

Usage: .venv/bin/python bench/make_phantom_figure.py [--seed 7]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import sys

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cvs_core.landmarks import OUTLINES
from cvs_core.synth import render_phantom

ROOT = Path(__file__).resolve().parents[1]
REAL = [ROOT / "data" / "samples" / "roi" / f"LC ({n}).jpg" for n in (1, 2, 3, 8, 11)]


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img.copy()
    cv2.rectangle(out, (0, 0), (120, 26), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _overlay(img: np.ndarray, lm: np.ndarray) -> np.ndarray:
    out = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    for idx in OUTLINES.values():
        pts = np.round(lm[[i - 1 for i in idx]] * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [pts], False, (0, 200, 255), 1, cv2.LINE_AA, 4)
    for x, y in lm:
        cv2.circle(out, (int(round(x * 16)), int(round(y * 16))), 2 * 16, (0, 0, 255), -1, cv2.LINE_AA, 4)
    return out


def _row(tiles: list[np.ndarray]) -> np.ndarray:
    pad = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
    parts = []
    for t in tiles:
        parts += [t, pad]
    return np.hstack(parts[:-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    phantoms = [render_phantom(args.seed * 100 + s, stage=s) for s in range(1, 7)]
    real = [_label(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), p.stem) for p in REAL]
    real.append(np.full_like(real[0], 255))
    fake = [_label(p.image, f"CS{p.stage}") for p in phantoms]
    top, bottom = _row(real), _row(fake)
    gap = np.full((8, top.shape[1], 3), 255, np.uint8)
    (ROOT / "docs").mkdir(exist_ok=True)
    cv2.imwrite(str(ROOT / "docs" / "phantoms_vs_real.png"), np.vstack([top, gap, bottom]))
    lms = [_label(_overlay(p.image, p.landmarks), f"CS{p.stage}") for p in phantoms]
    cv2.imwrite(str(ROOT / "docs" / "phantoms_landmarks.png"), _row(lms))

    render_phantom(0)  # warm up
    t0 = time.perf_counter()
    for s in range(50):
        render_phantom(1000 + s)
    ms = (time.perf_counter() - t0) / 50 * 1e3
    print(f"render_phantom: {ms:.1f} ms/image (mean of 50, one core)")


if __name__ == "__main__":
    main()

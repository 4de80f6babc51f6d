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
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 2)
    cv2.rectangle(out, (0, 0), (tw + 14, 38), (0, 0, 0), -1)
    cv2.putText(out, text, (7, 28), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2, cv2.LINE_AA)
    return out


def _overlay(img: np.ndarray, lm: np.ndarray) -> np.ndarray:
    out = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    for idx in OUTLINES.values():
        pts = np.round(lm[[i - 1 for i in idx]] * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [pts], False, (0, 200, 255), 1, cv2.LINE_AA, 4)
    for x, y in lm:
        cv2.circle(out, (int(round(x * 16)), int(round(y * 16))), 2 * 16, (0, 0, 255), -1, cv2.LINE_AA, 4)
    return out


BG = (23, 17, 14)  # the app's dark background (BGR), so the figure has no white cells


def _legend_tile(like: np.ndarray) -> np.ndarray:
    """The empty sixth cell of the top row: a dark tile that says what the rows are."""
    tile = np.empty((*like.shape[:2], 3), np.uint8)
    tile[:] = BG
    for k, line in enumerate(("top:", "public", "study", "ROIs", "", "bottom:", "phantoms", "CS1-CS6")):
        cv2.putText(tile, line, (14, 60 + 44 * k), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (230, 230, 230), 2, cv2.LINE_AA)
    return tile


def _row(tiles: list[np.ndarray]) -> np.ndarray:
    pad = np.empty((tiles[0].shape[0], 6, 3), np.uint8)
    pad[:] = BG
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
    real.append(_legend_tile(real[0]))
    fake = [_label(p.image, f"CS{p.stage}") for p in phantoms]
    top, bottom = _row(real), _row(fake)
    gap = np.empty((8, top.shape[1], 3), np.uint8)
    gap[:] = BG
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

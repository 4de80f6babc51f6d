"""Tests of the phantom generator (cvs_core.synth).

The stage check re-implements the staging measurements (docs/architecture.md#cvm-staging) here with plain geometry, on purpose
independent of cvs_core.staging (the generator's label must never come from the staging code)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from cvs_core.landmarks import csv_columns
from cvs_core.synth import (Phantom, generate_phantoms, render_phantom, sample_landmarks,
                            write_phantom_dataset)

ROOT = Path(__file__).resolve().parents[1]


# --- independent staging (docs/architecture.md#cvm-staging) -----------------------------------------
def _frame(lm, a, c):
    p, q = lm[a - 1], lm[c - 1]
    d = q - p
    e1 = d / np.linalg.norm(d)
    up = np.array([e1[1], -e1[0]])  # towards smaller y when the chord is horizontal
    return p, up, float(np.linalg.norm(d))


def _height(lm, chord, i):
    p, up, _ = _frame(lm, *chord)
    return float(np.dot(lm[i - 1] - p, up))


def _concave(lm, a, m, c, thr=0.07):
    p, up, length = _frame(lm, a, c)
    return float(np.dot(lm[m - 1] - p, up)) / length >= thr


def _shape(lm, sp, sm, sa, mp, ma, ip, ia):
    h = _height(lm, (ip, ia), sm)
    w = float(np.linalg.norm(lm[mp - 1] - lm[ma - 1]))
    ah, ph = _height(lm, (ip, ia), sa), _height(lm, (ip, ia), sp)
    if ah / ph < 0.85:
        return "trap"
    r = h / w
    return "vert" if r > 1.1 else ("hor" if r < 0.9 else "sq")


def design_stage(lm: np.ndarray) -> int | None:
    conc = (_concave(lm, 1, 2, 3), _concave(lm, 9, 10, 11), _concave(lm, 17, 18, 19))
    s3 = _shape(lm, 4, 5, 6, 7, 8, 9, 11)
    s4 = _shape(lm, 12, 13, 14, 15, 16, 17, 19)
    both = {s3, s4}
    if conc == (False, False, False) and both == {"trap"}:
        return 1
    if conc == (True, False, False) and both == {"trap"}:
        return 2
    if conc == (True, True, False) and both <= {"trap", "hor"}:
        return 3
    if conc == (True, True, True):
        if both == {"hor"}:
            return 4
        if "sq" in both and both <= {"sq", "hor"}:
            return 5
        if "vert" in both and both <= {"vert", "sq"}:
            return 6
    return None


def test_stage_recovered_from_true_landmarks():
    rng = np.random.default_rng(123)
    stages = np.arange(300) % 6 + 1
    got = np.array([design_stage(sample_landmarks(rng, int(s))) for s in stages], dtype=object)
    agreement = float(np.mean(got == stages))
    assert agreement >= 0.95, agreement


def test_landmarks_in_real_range():
    rng = np.random.default_rng(5)
    lms = np.stack([sample_landmarks(rng, int(s)) for s in np.arange(120) % 6 + 1])
    assert lms.shape == (120, 19, 2) and lms.dtype == np.float64
    assert lms[..., 0].min() > 20 and lms[..., 0].max() < 248
    assert lms[..., 1].min() > 250 and lms[..., 1].max() < 590
    # vertebral order top to bottom: C2 border above C3 above C4
    assert np.all(lms[:, 3:6, 1].mean(1) > lms[:, 0:3, 1].mean(1))
    assert np.all(lms[:, 11:14, 1].mean(1) > lms[:, 8:11, 1].mean(1))


def test_render_shapes_and_determinism():
    a = render_phantom(42, stage=3)
    b = render_phantom(42, stage=3)
    assert isinstance(a, Phantom)
    assert a.image.shape == (600, 250) and a.image.dtype == np.uint8
    assert a.landmarks.shape == (19, 2) and a.landmarks.dtype == np.float64
    assert a.stage == 3 and a.seed == 42
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    c = render_phantom(43, stage=3)
    assert not np.array_equal(a.image, c.image)
    d = render_phantom(7)
    assert 1 <= d.stage <= 6 and render_phantom(7).stage == d.stage


def test_generate_all_stages_inside_image():
    ph = list(generate_phantoms(60, seed=3))
    assert len(ph) == 60
    assert {p.stage for p in ph} == {1, 2, 3, 4, 5, 6}
    for p in ph:
        assert p.image.shape == (600, 250)
        assert np.all(p.landmarks >= 0) and np.all(p.landmarks[:, 0] <= 249) and np.all(p.landmarks[:, 1] <= 599)
    again = next(iter(generate_phantoms(1, seed=3)))
    np.testing.assert_array_equal(again.image, ph[0].image)
    assert len({p.seed for p in ph}) == 60


def test_landmarks_sit_on_edges():
    """Mean gradient magnitude at body landmarks is clearly above that at random points."""
    rng = np.random.default_rng(0)
    at_lm, at_random = [], []
    for p in generate_phantoms(24, seed=11):
        img = cv2.GaussianBlur(p.image.astype(np.float32), (0, 0), 1.0)
        gx = cv2.Sobel(img, cv2.CV_32F, 1, 0)
        gy = cv2.Sobel(img, cv2.CV_32F, 0, 1)
        mag = np.hypot(gx, gy)
        xy = np.round(p.landmarks).astype(int)
        at_lm.append(mag[xy[:, 1], xy[:, 0]].mean())
        # random points in the same band of the image (the vertebral column region)
        rx = rng.integers(xy[:, 0].min() - 40, xy[:, 0].max() + 40, 200).clip(0, 249)
        ry = rng.integers(xy[:, 1].min() - 40, xy[:, 1].max() + 40, 200).clip(0, 599)
        at_random.append(mag[ry, rx].mean())
    assert np.mean(at_lm) > 1.5 * np.mean(at_random), (np.mean(at_lm), np.mean(at_random))


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_write_dataset_byte_identical(tmp_path):
    c1 = write_phantom_dataset(tmp_path / "a", n=8, seed=9)
    write_phantom_dataset(tmp_path / "b", n=8, seed=9)
    assert c1 == tmp_path / "a" / "labels.csv"
    da, db = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert len(da) == 9 and da == db
    header = c1.read_text().splitlines()[0].split(",")
    assert header == ["image_name", *csv_columns(), "cs_stage"]
    row = c1.read_text().splitlines()[1].split(",")
    assert row[0] == "phantom_00000.png" and row[1].count(".") == 1 and len(row[1].split(".")[1]) == 3
    assert int(row[-1]) == 1
    img = cv2.imread(str(tmp_path / "a" / "images" / "phantom_00000.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(img, next(iter(generate_phantoms(1, seed=9))).image)


def test_cli_synth(tmp_path):
    out = tmp_path / "tmp"
    r = subprocess.run([sys.executable, "-m", "cvs_core.cli", "synth", "--n", "12", "--seed", "1",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(list((out / "images").glob("phantom_*.png"))) == 12
    lines = (out / "labels.csv").read_text().splitlines()
    assert lines[0].split(",") == ["image_name", *csv_columns(), "cs_stage"]
    assert len(lines) == 13
    assert sorted({int(l.split(",")[-1]) for l in lines[1:]}) == [1, 2, 3, 4, 5, 6]

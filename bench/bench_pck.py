"""PCK re-scoring benchmark (docs/architecture.md#targets: 1,000 images × 19 landmarks × 2 models, target ≤ 5 ms).

Scenario: the errors of two models on 1,000 images are known; the user moves the threshold slider
and every score has to be recomputed at the new threshold.

(a) study-style: a plain-Python loop per image, per landmark — compute the distance from the
    coordinates and compare with the threshold (as the study's notebooks did);
(b) ``cvs_core.metrics.SortedErrors`` built once per model, then re-scored (overall PCK and the
    per-landmark PCK) for both models — binary searches;
(c) plain numpy ``(errors <= t).mean()`` (overall and per landmark) for both models.

Run: ``.venv/bin/python bench/bench_pck.py``; ``run() -> dict`` for a bench runner.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvs_core.metrics import SortedErrors, radial_errors  # noqa: E402

N_IMAGES, N_LANDMARKS, MODELS = 1000, 19, ("unet", "inception")
TARGET_MS = 5.0


def _best_ms(fn, repeats: int, number: int = 1) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best * 1e3


def _make_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    true = rng.uniform(0, 250, size=(N_IMAGES, N_LANDMARKS, 2))
    preds = {m: true + rng.normal(0, s, size=true.shape) for m, s in zip(MODELS, (3.0, 6.0))}
    return true, preds


def _study_loop(pred_list, true_list, threshold: float):
    """Per-point Python loop, re-scoring both models (overall + per landmark) from coordinates."""
    out = {}
    for name, pred in pred_list.items():
        correct = 0
        per_lm = [0] * N_LANDMARKS
        for i in range(N_IMAGES):
            p_img, t_img = pred[i], true_list[i]
            for k in range(N_LANDMARKS):
                dx = p_img[k][0] - t_img[k][0]
                dy = p_img[k][1] - t_img[k][1]
                if math.sqrt(dx * dx + dy * dy) <= threshold:
                    correct += 1
                    per_lm[k] += 1
        out[name] = (correct / (N_IMAGES * N_LANDMARKS), [c / N_IMAGES for c in per_lm])
    return out


def _study_loop_numpy(preds, true, threshold: float):
    """The same loop over numpy arrays with ``np.linalg.norm`` per point (notebook style)."""
    out = {}
    for name, pred in preds.items():
        correct = 0
        per_lm = np.zeros(N_LANDMARKS)
        for i in range(N_IMAGES):
            for k in range(N_LANDMARKS):
                if np.linalg.norm(pred[i][k] - true[i][k]) <= threshold:
                    correct += 1
                    per_lm[k] += 1
        out[name] = (correct / (N_IMAGES * N_LANDMARKS), per_lm / N_IMAGES)
    return out


def run(repeats: int = 7, verbose: bool = True) -> dict:
    true, preds = _make_data()
    errors = {m: radial_errors(p, true) for m, p in preds.items()}
    # the study's notebooks held coordinates as Python lists
    true_list = true.tolist()
    pred_list = {m: p.tolist() for m, p in preds.items()}
    threshold = 8.0

    t_loop = _best_ms(lambda: _study_loop(pred_list, true_list, threshold), repeats=max(3, repeats // 2))

    t_loop_np = _best_ms(lambda: _study_loop_numpy(preds, true, threshold), repeats=2)
    t_build = _best_ms(lambda: {m: SortedErrors(e) for m, e in errors.items()}, repeats)
    index = {m: SortedErrors(e) for m, e in errors.items()}

    def sorted_rescore():
        return {m: (ix.pck(threshold), ix.pck_per_landmark(threshold)) for m, ix in index.items()}

    def sorted_rescore_overall():
        return {m: ix.pck(threshold) for m, ix in index.items()}

    def numpy_rescore():
        return {m: ((e <= threshold).mean(), (e <= threshold).mean(axis=0)) for m, e in errors.items()}

    t_sorted = _best_ms(sorted_rescore, repeats, number=200)
    t_sorted_overall = _best_ms(sorted_rescore_overall, repeats, number=1000)
    t_numpy = _best_ms(numpy_rescore, repeats, number=200)

    # all three give the same numbers
    ref = _study_loop(pred_list, true_list, threshold)
    got, np_got = sorted_rescore(), numpy_rescore()
    ref_np = _study_loop_numpy(preds, true, threshold)
    agree = all(abs(ref_np[m][0] - ref[m][0]) < 1e-12 and abs(ref[m][0] - got[m][0]) < 1e-12 and abs(ref[m][0] - np_got[m][0]) < 1e-12
                and np.allclose(ref[m][1], got[m][1]) for m in MODELS)

    result = dict(
        n_images=N_IMAGES, n_landmarks=N_LANDMARKS, n_models=len(MODELS),
        loop_ms=t_loop, loop_numpy_ms=t_loop_np, sorted_build_ms=t_build, sorted_rescore_ms=t_sorted,
        sorted_rescore_overall_ms=t_sorted_overall, numpy_rescore_ms=t_numpy,
        ratio_loop_over_sorted=t_loop / t_sorted, ratio_loop_numpy_over_sorted=t_loop_np / t_sorted, ratio_loop_over_numpy=t_loop / t_numpy,
        target_ms=TARGET_MS, results_agree=bool(agree),
        passed=bool(agree and t_sorted <= TARGET_MS),
    )
    if verbose:
        print(f"PCK re-score at a new threshold: {N_IMAGES} images × {N_LANDMARKS} landmarks × {len(MODELS)} models")
        print(f"  (a) study-style Python loop (overall + per landmark)   {t_loop:10.3f} ms")
        print(f"  (a') same loop on numpy arrays, np.linalg.norm per point {t_loop_np:10.3f} ms")
        print(f"  (b) SortedErrors re-score (overall + per landmark)     {t_sorted:10.4f} ms"
              f"   [overall only {t_sorted_overall:.4f} ms; one-off build {t_build:.3f} ms]")
        print(f"  (c) numpy (errors <= t).mean() (overall + per lm.)     {t_numpy:10.4f} ms")
        print(f"  ratio loop / SortedErrors = {t_loop / t_sorted:,.0f}×   loop / numpy = {t_loop / t_numpy:,.0f}×"
              f"   numpy-element loop / SortedErrors = {t_loop_np / t_sorted:,.0f}×")
        print(f"  results agree: {agree}")
        print(f"  {'PASS' if result['passed'] else 'FAIL'}: SortedErrors re-score {t_sorted:.4f} ms vs target ≤ {TARGET_MS} ms"
              f"; ≥100× vs loop: {'PASS' if t_loop / t_sorted >= 100 else 'FAIL'}")
    return result


if __name__ == "__main__":
    r = run()
    sys.exit(0 if r["passed"] else 1)

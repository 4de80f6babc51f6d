"""Save, or compare against, both shipped models' landmarks on the sample images and 50 phantoms.

    python scripts/check_predictions_unchanged.py --save /tmp/before.npz      # before a refactor
    python scripts/check_predictions_unchanged.py --compare /tmp/before.npz   # after it

Inputs: the 5 ROI images in ``data/samples/roi`` (manifest ROI), the 5 originals in
``data/samples/original`` (``roi="seed"``) and 50 phantoms (``synth.generate_phantoms(50, seed=4242)``).
Also records the phantoms' true landmarks and an image checksum, so a change in the generator shows
up too. ``--compare`` prints the max |Δ| in pixels per model and set and exits 1 when it is ≥ ``--tol``.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cvs_core.predict import Predictor  # noqa: E402
from cvs_core.registry import DEMO_MODELS, SHIPPED_MODELS_DIR, ensure_demo_models  # noqa: E402
from cvs_core.synth import generate_phantoms  # noqa: E402


def _images(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(folder.glob("*.jpg"))]


def collect() -> dict[str, np.ndarray]:
    """Name → array: ``{model}/{set}`` landmarks ``(N, 19, 2)``, phantom truths and checksums."""
    ensure_demo_models()
    roi = _images(REPO / "data" / "samples" / "roi")
    orig = _images(REPO / "data" / "samples" / "original")
    phantoms = list(generate_phantoms(50, seed=4242))
    out = {"phantoms/true": np.stack([p.landmarks for p in phantoms]),
           "phantoms/image_sha": np.array([hashlib.sha256(p.image.tobytes()).hexdigest() for p in phantoms])}
    for name in DEMO_MODELS:
        pred = Predictor(SHIPPED_MODELS_DIR / name)
        out[f"{name}/roi"] = np.stack([p.landmarks for p in pred.predict_batch(roi)])
        out[f"{name}/original_seed"] = np.stack([pred.predict(im, roi="seed").landmarks for im in orig])
        out[f"{name}/phantoms"] = np.concatenate([
            np.stack([p.landmarks for p in pred.predict_batch([ph.image for ph in phantoms[i:i + 10]])])
            for i in range(0, len(phantoms), 10)])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", type=Path)
    group.add_argument("--compare", type=Path)
    ap.add_argument("--tol", type=float, default=0.01, help="max allowed |Δ| in px (default 0.01)")
    args = ap.parse_args(argv)
    now = collect()
    if args.save:
        np.savez(args.save, **now)
        print(f"saved {len(now)} arrays to {args.save}")
        return 0
    with np.load(args.compare) as z:
        before = {k: z[k] for k in z.files}
    worst = 0.0
    # A phantom whose pixels changed (the generator was retuned) tests the generator, not the
    # models: predictions are compared on the phantoms rendered byte-identically only.
    same_image = before["phantoms/image_sha"] == now["phantoms/image_sha"]
    if not same_image.all():
        print(f"phantoms: {int((~same_image).sum())} of {len(same_image)} rendered differently "
              "(generator changed); model predictions compared on the other "
              f"{int(same_image.sum())}")
    for key in sorted(before):
        a, b = before[key], now[key]
        if key == "phantoms/image_sha":
            continue
        if key.endswith("/phantoms") or key == "phantoms/true":
            a, b = a[same_image], b[same_image]
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            print(f"{key:40s} NaN pattern differs")
            worst = float("inf")
            continue
        d = float(np.nanmax(np.abs(a - b))) if np.isfinite(a).any() else 0.0
        worst = max(worst, d)
        print(f"{key:40s} max |Δ| = {d:.6f} px")
    print(f"overall max |Δ| = {worst:.6f} px (tolerance {args.tol})")
    return 0 if worst < args.tol else 1


if __name__ == "__main__":
    sys.exit(main())

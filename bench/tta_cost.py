"""What test-time shifts (cvs_core.tta) cost: end-to-end ``Predictor.predict_batch`` time with the
model's shifts on and off, interleaved round by round (``bench/timing.py``).

    python bench/tta_cost.py [--model inception_resnet_v2] [--rounds 8] [--batch 32]

Single image: the 5 ROI samples (``data/samples/roi``) one at a time; batch: ``--batch`` phantoms in one
call. Prints the median ms per image of each and their ratio (on / off).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from timing import interleaved_rounds  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="inception_resnet_v2")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)

    from cvs_core.imaging import read_image
    from cvs_core.predict import Predictor
    from cvs_core.synth import render_phantom

    pred = Predictor.load(args.model)
    if pred.tta.step_px == 0:
        print(f"{pred.name}: its manifest has no test-time shifts (inference.tta_step_px); nothing to compare")
        return 1
    samples = [read_image(p).as_uint8() for p in sorted((ROOT / "data" / "samples" / "roi").glob("*.jpg"))]
    phantoms = [render_phantom(500 + i).image for i in range(args.batch)]
    for tta in (True, False):  # warm-up: both batch shapes traced before timing
        pred.predict_batch(samples[:1], tta=tta)
        pred.predict_batch(phantoms, tta=tta)

    def singles(tta):
        return lambda k: [pred.predict(img) if tta else pred.predict_batch([img], tta=False)[0] for img in samples]

    rounds = interleaved_rounds({
        "single, shifts on": singles(True), "single, shifts off": singles(False),
        "batch, shifts on": lambda k: pred.predict_batch(phantoms),
        "batch, shifts off": lambda k: pred.predict_batch(phantoms, tta=False)}, args.rounds)
    n_single, n_batch = len(samples), len(phantoms)
    print(f"{pred.name}: {len(pred.tta.offsets)} copies per image (±{pred.tta.step_px} px), {args.rounds} rounds")
    for kind, per in (("single", n_single), ("batch", n_batch)):
        on, off = rounds.median_ms(f"{kind}, shifts on", per), rounds.median_ms(f"{kind}, shifts off", per)
        label = "1 image per call" if kind == "single" else f"batch of {n_batch}"
        print(f"  {label}: {on:.1f} ms/image with shifts, {off:.1f} without ({on / off:.2f}×; "
              f"{1e3 / on:.1f} vs {1e3 / off:.1f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

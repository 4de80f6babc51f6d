"""CPU inference engines on the shipped models (issue 15, item 2).

For each model (default: ``unet_heatmap``, ``inception_resnet_v2``) and each engine of
:data:`cvs_core.engines.ENGINES` (TensorFlow ``tf.function``, TensorFlow + XLA, ONNX Runtime,
OpenVINO f32) this loads one :class:`~cvs_core.predict.Predictor`, then times the model call alone
(``Predictor._run``: the preprocessed batch in, the raw output out) for one image and for a batch
of 8, in interleaved rounds (engine A, B, C, D, A, B, …) so that load from other processes hits
every engine alike; medians are reported. Agreement: landmarks of the 5 bundled ROI samples
(``data/samples/roi``) from ``predict_batch`` with each engine against the TensorFlow engine,
max |Δ| in pixels of the input image (target < 0.01 px). Also the first-load time of each engine
(export to ONNX the first time, cached afterwards).

Run: ``python bench/engines.py [--models unet_heatmap,inception_resnet_v2] [--engines tf,tf-xla,onnx,openvino]
[--rounds 15] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.timing import interleaved_rounds  # noqa: E402


def _samples() -> list[np.ndarray]:
    from cvs_core.imaging import read_image

    paths = sorted((REPO / "data" / "samples" / "roi").glob("*.jpg"))
    return [read_image(p).as_uint8() for p in paths]


def bench_model(model: str, engines: list[str], rounds: int = 15) -> dict:
    """Per engine: load_s, single_ms, batch8_ms_per_image, max_dpx vs the "tf" engine."""
    from cvs_core.predict import Predictor

    images = _samples()
    preds: dict = {}
    out: dict = {"model": model, "engines": {}}
    for eng in engines:
        t0 = time.perf_counter()
        try:
            preds[eng] = Predictor.load(model, engine=eng)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other engines
            out["engines"][eng] = {"error": f"{exc.__class__.__name__}: {exc}"[:300]}
            continue
        out["engines"][eng] = {"load_s": time.perf_counter() - t0}
    ok = [e for e in engines if e in preds]
    ref_pred = preds.get("tf") or preds[ok[0]]
    batch = np.stack([p.preprocessed.image for p in ref_pred.predict_batch((images * 2)[:8])])  # (8, H, W, C)
    single = batch[:1]
    # agreement on the samples
    lms = {e: np.stack([p.landmarks for p in preds[e].predict_batch(images)]) for e in ok}
    raws = {e: preds[e]._run(batch) for e in ok}
    for e in ok:
        d = np.abs(lms[e] - lms["tf"]) if "tf" in lms else np.full(1, np.nan)
        out["engines"][e]["max_dpx"] = float(np.nanmax(d))
        out["engines"][e]["max_draw"] = float(np.abs(raws[e] - raws["tf"]).max()) if "tf" in raws else float("nan")
    # timings, interleaved (bench/timing.py): every round each engine on 1 image, then each on 8
    for e in ok:  # one extra warm call each
        preds[e]._run(single)
        preds[e]._run(batch)
    calls = {f"single:{e}": (lambda k, e=e: preds[e]._run(single)) for e in ok}
    calls.update({f"batch:{e}": (lambda k, e=e: preds[e]._run(batch)) for e in ok})
    timed = interleaved_rounds(calls, rounds, rotate=False)
    for e in ok:
        out["engines"][e]["single_ms"] = timed.median_ms(f"single:{e}")
        out["engines"][e]["batch8_ms_per_image"] = timed.median_ms(f"batch:{e}", per=len(batch))
    if "tf" in ok:
        for e in ok:
            out["engines"][e]["speedup_single"] = out["engines"]["tf"]["single_ms"] / out["engines"][e]["single_ms"]
            out["engines"][e]["speedup_batch8"] = (out["engines"]["tf"]["batch8_ms_per_image"]
                                                   / out["engines"][e]["batch8_ms_per_image"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="CPU inference engines on the shipped models")
    ap.add_argument("--models", default="unet_heatmap,inception_resnet_v2")
    ap.add_argument("--engines", default="tf,tf-xla,onnx,openvino")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    engines = args.engines.split(",")
    results = []
    print(f"{os.cpu_count()} CPU cores; medians of {args.rounds} interleaved rounds (measured under load)")
    print(f"{'model':<22}{'engine':<10}{'load s':>8}{'1 img ms':>10}{'×tf':>6}{'b8 ms/img':>11}{'×tf':>6}"
          f"{'max Δ px':>10}{'max Δ raw':>11}")
    for m in args.models.split(","):
        r = bench_model(m, engines, args.rounds)
        results.append(r)
        for e in engines:
            x = r["engines"].get(e, {})
            if "error" in x:
                print(f"{m:<22}{e:<10} error: {x['error']}")
                continue
            print(f"{m:<22}{e:<10}{x['load_s']:8.1f}{x['single_ms']:10.1f}{x.get('speedup_single', float('nan')):6.2f}"
                  f"{x['batch8_ms_per_image']:11.1f}{x.get('speedup_batch8', float('nan')):6.2f}"
                  f"{x['max_dpx']:10.4f}{x['max_draw']:11.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

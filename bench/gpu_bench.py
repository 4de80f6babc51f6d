"""Latency and throughput of model folders under the current Keras backend (JAX on a GPU machine).

    KERAS_BACKEND=jax python bench/gpu_bench.py models/unet_heatmap models/inception_resnet_v2

Prints, per model: device, single-image latency (median of 50 calls on a preprocessed sample,
after warm-up) and throughput at batch 32 (images/s of model calls only, and end to end with
preprocessing and decoding).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def bench_model(folder: str, n_latency: int = 50, batch: int = 32, n_batches: int = 10) -> dict:
    import cv2
    import keras

    from cvs_core.predict import Predictor

    pred = Predictor.load(folder)
    image = cv2.imread(str(REPO / "data" / "samples" / "roi" / "LC (1).jpg"), cv2.IMREAD_GRAYSCALE)
    x1 = pred.predict(image).preprocessed.image[None]
    for _ in range(3):
        pred._run(x1)
    lat = []
    for _ in range(n_latency):
        t = time.perf_counter()
        pred._run(x1)
        lat.append((time.perf_counter() - t) * 1e3)
    xb = np.repeat(x1, batch, axis=0)
    pred._run(xb)
    t = time.perf_counter()
    for _ in range(n_batches):
        pred._run(xb)
    model_ips = batch * n_batches / (time.perf_counter() - t)
    images = [image] * batch
    pred.predict_batch(images)
    t = time.perf_counter()
    for _ in range(3):
        pred.predict_batch(images)
    e2e_ips = batch * 3 / (time.perf_counter() - t)
    e2e_single = []
    for _ in range(20):
        t = time.perf_counter()
        pred.predict(image)
        e2e_single.append((time.perf_counter() - t) * 1e3)
    return {"model": pred.name, "backend": keras.backend.backend(),
            "latency_ms_median": round(float(np.median(lat)), 2),
            "latency_ms_p90": round(float(np.percentile(lat, 90)), 2),
            "single_image_end_to_end_ms_median": round(float(np.median(e2e_single)), 2),
            f"throughput_model_ips_batch{batch}": round(model_ips, 1),
            f"throughput_end_to_end_ips_batch{batch}": round(e2e_ips, 1)}


def main(argv: list[str]) -> int:
    folders = argv or [str(REPO / "models" / "unet_heatmap"), str(REPO / "models" / "inception_resnet_v2")]
    for folder in folders:
        print(json.dumps(bench_model(folder)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Train the two shipped demo models (``models/unet_heatmap``, ``models/inception_resnet_v2``).

Backend-agnostic (TensorFlow here, JAX on a GPU machine):

    KERAS_BACKEND=jax python scripts/train_demo_models.py --out /tmp/demo --phantoms 6000 \\
        --unet-seconds 170 --inception-seconds 260 --workers 12

1. renders ``--phantoms`` phantoms (seed 1) to disk in parallel processes (before Keras starts);
2. trains ``unet_heatmap`` (improved preset) on them plus the two public labelled ROI images,
   each repeated ``--real-repeat`` times with keypoint-consistent augmentation; validation on 200
   held-out phantoms (different seeds);
3. trains ``inception_gap`` (InceptionResNetV2 backbone, GAP head, normalised targets) the same way,
   from scratch unless ImageNet weights are present locally;
4. writes the U-Net as a model folder and the InceptionResNetV2 as int8-packed shards
   (``cvs_core.packing``) with its manifest, and ``results.json`` with the validation numbers of the
   float and the de-quantised InceptionResNetV2.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _render_one(args):
    out_dir, i, seed = args
    import cv2

    from cvs_core.synth import _derived_seed, render_phantom

    ph = render_phantom(_derived_seed(seed, i), stage=i % 6 + 1)
    cv2.imwrite(str(out_dir / "images" / f"phantom_{i:05d}.png"), ph.image)
    return ph.landmarks, ph.stage


def render_parallel(out_dir: Path, n: int, seed: int, processes: int) -> Path:
    """Phantoms ``phantom_{i}.png`` + ``labels.csv`` (study format + cs_stage), in parallel."""
    import pandas as pd

    from cvs_core.landmarks import csv_columns

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    with mp.get_context("fork").Pool(processes) as pool:
        results = pool.map(_render_one, [(out_dir, i, seed) for i in range(n)], chunksize=32)
    rows = [[f"phantom_{i:05d}.png", *lm.reshape(-1).round(3).tolist(), st] for i, (lm, st) in enumerate(results)]
    pd.DataFrame(rows, columns=["image_name", *csv_columns(), "cs_stage"]).to_csv(out_dir / "labels.csv", index=False)
    return out_dir / "labels.csv"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--phantoms", type=int, default=6000)
    p.add_argument("--val-phantoms", type=int, default=200)
    p.add_argument("--real-repeat", type=int, default=150)
    p.add_argument("--unet-seconds", type=float, default=170)
    p.add_argument("--inception-seconds", type=float, default=260)
    p.add_argument("--unet-epochs", type=int, default=200)
    p.add_argument("--inception-epochs", type=int, default=200)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--processes", type=int, default=max(1, mp.cpu_count() - 1))
    p.add_argument("--skip", choices=["unet", "inception"], action="append", default=[])
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    labels = render_parallel(out / "phantoms", args.phantoms, seed=1, processes=args.processes)
    print(f"rendered {args.phantoms} phantoms in {time.time() - t0:.1f} s", flush=True)

    import keras  # noqa: E402  (after the fork pool)

    from cvs_core.architectures import get_arch
    from cvs_core.packing import load_packed_weights, pack_weights
    from cvs_core.registry import read_manifest, write_manifest
    from cvs_core.train import TrainConfig, train

    samples = REPO / "data" / "samples"
    common = dict(csv=[str(labels), str(samples / "train_data.csv")],
                  images=[str(labels.parent / "images"), str(samples / "roi")],
                  repeat_csv=[1, args.real_repeat], val_phantoms=args.val_phantoms, seed=0,
                  workers=args.workers, batch_size=32, early_stopping_patience=30, reduce_lr_patience=6,
                  mixed_precision="off")
    results = {"backend": keras.backend.backend(), "phantoms": args.phantoms, "real_repeat": args.real_repeat}
    if "unet" not in args.skip:
        cfg = TrainConfig(model="unet_heatmap", preset="improved", epochs=args.unet_epochs, lr=2e-3,
                          time_limit_s=args.unet_seconds, name="unet_heatmap", **common)
        t = time.time()
        folder = train(cfg, out / "run_unet")
        results["unet_heatmap"] = {"train_s": round(time.time() - t, 1), **read_manifest(folder)["metrics"],
                                   "epochs_run": read_manifest(folder)["training"]["epochs_run"]}
        shutil.copytree(folder, out / "unet_heatmap", dirs_exist_ok=True)
        print("unet_heatmap", results["unet_heatmap"], flush=True)
    if "inception" not in args.skip:
        cfg = TrainConfig(model="inception_gap", preset="improved", epochs=args.inception_epochs, lr=5e-4,
                          time_limit_s=args.inception_seconds, name="inception_resnet_v2", **common)
        t = time.time()
        folder = train(cfg, out / "run_inception")
        manifest = read_manifest(folder)
        results["inception_resnet_v2"] = {"train_s": round(time.time() - t, 1), **manifest["metrics"],
                                          "epochs_run": manifest["training"]["epochs_run"]}
        model = keras.saving.load_model(folder / "model.keras", compile=False)
        packed_dir = out / "inception_resnet_v2"
        assert get_arch(cfg.model).packed_weights  # too big for git: ships as int8 shards
        packed = pack_weights(model, packed_dir)
        manifest["packed_weights"] = packed
        manifest.pop("weights_sha256", None)
        write_manifest(packed_dir, manifest)
        # Validation error of the de-quantised weights, next to the float model's.
        model.set_weights(load_packed_weights(packed_dir, packed))
        from cvs_core.train import RunMonitor, build_datasets, make_codec
        codec = make_codec(cfg)
        _, val, _ = build_datasets(cfg, codec)
        mon = RunMonitor(out / "run_inception", cfg, codec, val, 0, False)
        mon.set_model(model)
        results["inception_resnet_v2"]["val_mre_px_int8"] = mon.val_mre_px()
        print("inception_resnet_v2", results["inception_resnet_v2"], flush=True)
    results["total_s"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

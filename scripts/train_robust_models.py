"""The next GPU run: a robust U-Net and the best InceptionResNetV2 recipe, trained, scored and
written with provenance — one command sized for a 9-minute budget (issues 8 and 9).

    KERAS_BACKEND=jax python scripts/train_robust_models.py --out $OUT/robust --work /tmp/robust \\
        --phantoms 6000 --wide-share 0.5 --unet-seconds 170 --inception-seconds 250 \\
        --workers 14 --processes 15 [--dev-dir ../shared/data/external_dev/isbi10 --spacing 0.1]

1. renders ``--phantoms`` training phantoms (seed 21) in parallel processes before Keras starts:
   a share ``--wide-share`` of them are study-frame ROIs cut from wide phantoms with a jittered box
   (``synth.wide_phantom_roi``: C1, the skull base or C5–C6 in view, scale ±20 %), the rest ROI
   phantoms (``synth.render_phantom``);
2. fine-tunes the shipped ``unet_heatmap`` (``--unet-init``, lr 3e-4 with a one-epoch per-batch warm-up
   and a cosine within the time limit: a fresh Adam at full rate visibly disturbs a trained model in
   its first steps) on them plus LC (1)/LC (11) ×``--real-repeat``
   with the ``realistic`` augmentation profile (scale ±35 %, rotation ±15°, shifts, clinic
   appearance), validation on 200 held-out ROI phantoms; at most ``--unet-seconds``;
3. trains ``--inception-arch`` (default ``inception_integral``: InceptionResNetV2 + soft-argmax head,
   NOT the study's head; or ``inception_gap`` with ``--inception-loss wing|smooth_l1``) the same way
   with a warm-up + cosine schedule that anneals within ``--inception-seconds``;
4. gives the fine-tuned U-Net the decoder settings of the model it started from (the shipped one
   decodes with the shape prior; a training run's codec has it off, and argmax decoding alone
   swaps vertebrae on real images), packs the InceptionResNetV2 as int8 shards, writes both model folders under ``--out``
   (``unet_heatmap/``, ``inception_resnet_v2/``; the float 220-MB InceptionResNetV2 stays in ``--work``)
   with ``training.provenance`` (script, arguments, backend, devices, seconds) in their manifests;
5. scores both: 200 held-out phantoms (seed 999) and the two public images (as
   ``scripts/score_demo_models.py``), 60 held-out wide-phantom crops (seed 555, scale/shift jitter: the
   robustness the realistic profile targets) and, with ``--dev-dir``, the external dev set
   (``bench/real_dev.py``, auto ROI and hand box, never trained on); the numbers go into the
   manifests' ``metrics`` and ``results.json``.

Installing into ``models/`` is a separate, deliberate step (copy the folders, then
``scripts/score_demo_models.py``), done only when the new numbers beat the shipped ones.
Tiny CPU check (seconds): ``--phantoms 12 --val-phantoms 4 --unet-seconds 5 --inception-seconds 5
--score-phantoms 6 --wide-score 4 --inception-size 160 80 --skip-pack-check``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _render_one(args):
    out_dir, i, seed, wide_share = args
    import cv2

    from cvs_core.synth import _derived_seed, render_phantom, wide_phantom_roi

    s = _derived_seed(seed, i)
    wide = (i * 37) % 100 < round(100 * wide_share)
    ph = (wide_phantom_roi(s, stage=i % 6 + 1, scale_range=0.2, shift_frac=(0.08, 0.1)) if wide
          else render_phantom(s, stage=i % 6 + 1))
    cv2.imwrite(str(out_dir / "images" / f"phantom_{i:05d}.png"), ph.image)
    return ph.landmarks, ph.stage, wide


def render_parallel(out_dir: Path, n: int, seed: int, wide_share: float, processes: int) -> tuple[Path, int]:
    """Phantoms ``phantom_{i}.png`` + ``labels.csv`` (study format + cs_stage + wide), in parallel;
    returns the CSV path and the number of wide crops."""
    import pandas as pd

    from cvs_core.landmarks import csv_columns

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir, i, seed, wide_share) for i in range(n)]
    if processes > 1:
        with mp.get_context("fork").Pool(processes) as pool:
            results = pool.map(_render_one, jobs, chunksize=16)
    else:
        results = [_render_one(j) for j in jobs]
    rows = [[f"phantom_{i:05d}.png", *lm.reshape(-1).round(3).tolist(), st, int(w)]
            for i, (lm, st, w) in enumerate(results)]
    pd.DataFrame(rows, columns=["image_name", *csv_columns(), "cs_stage", "wide"]).to_csv(out_dir / "labels.csv", index=False)
    return out_dir / "labels.csv", sum(int(w) for _, _, w in results)


def _devices() -> list[str]:
    import keras
    try:
        if keras.backend.backend() == "jax":
            import jax
            return [str(d) for d in jax.devices()]
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            return [d.name for d in tf.config.list_physical_devices()]
    except Exception as exc:  # noqa: BLE001
        return [f"unknown ({type(exc).__name__})"]
    return []


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def wide_scores(folder: Path, n: int, seed: int = 555) -> dict:
    """Mean radial error (ROI px, and the share of images with MRE > 10 px: a wrong vertebra or a
    collapse) on ``n`` held-out wide-phantom crops with the full jitter (scale ±35 %, shifts)."""
    import numpy as np

    from cvs_core.predict import Predictor
    from cvs_core.synth import _derived_seed, wide_phantom_roi

    pred = Predictor.load(folder, warmup=False)
    per_image = []
    for i in range(n):
        ph = wide_phantom_roi(_derived_seed(seed, i), stage=i % 6 + 1)
        p = pred.predict(ph.image)
        e = np.linalg.norm(p.landmarks - ph.landmarks, axis=1)
        per_image.append(float(np.nanmean(np.where(np.isfinite(e), e, 100.0))))
    per_image = np.asarray(per_image)
    return {"n_images": int(n), "seed": seed, "mre_px": round(float(per_image.mean()), 3),
            "median_image_mre_px": round(float(np.median(per_image)), 3),
            "share_images_over_10px": round(float(np.mean(per_image > 10)), 4),
            "note": "wide_phantom_roi crops (scale ±35 %, shift ±15 %/±20 %), never seen in training"}


def score(folder: Path, args) -> dict:
    """The numbers of ``scripts/score_demo_models.py`` plus wide crops and the dev set."""
    from cvs_core import evaluate

    keys = ("n_images", "mre_px", "mre_mm", "sd_px", "sdr", "stage_agreement", "n_missing", "ms_per_image")
    out = {}
    sets = {"heldout_phantoms": (evaluate.phantom_dataset(args.score_phantoms, seed=999),
                                 f"{args.score_phantoms} phantoms, seed 999, never seen in training"),
            "public_images": (evaluate.samples_dataset(), "LC (1) and LC (11): IN the training data (augmented)")}
    for key, (dataset, note) in sets.items():
        res = next(iter(evaluate.evaluate_models([folder], dataset, use_cache=False).values()))
        out[key] = {**{k: res.summary[k] for k in keys if k in res.summary}, "spacing_mm": dataset.spacing_mm,
                    "note": note}
    if args.wide_score:
        out["heldout_wide_phantoms"] = wide_scores(folder, args.wide_score)
    return out


def dev_scores(folders: list[Path], args) -> dict:
    """``bench/real_dev.py`` on the external dev set (validation only) for the new model folders."""
    sys.path.insert(0, str(REPO / "bench"))
    import real_dev

    aset, rows = real_dev.run(Path(args.dev_dir), args.spacing, [str(f) for f in folders], args.dev_modes)
    text = real_dev.markdown(aset, rows, args.spacing, Path(args.dev_dir))
    (Path(args.out) / "real_dev.md").write_text(text)
    return real_dev.summaries(aset, rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="model folders + results.json (small files only)")
    p.add_argument("--work", default=None, help="phantoms and run folders (default: OUT/../robust_work)")
    p.add_argument("--phantoms", type=int, default=6000)
    p.add_argument("--wide-share", type=float, default=0.5)
    p.add_argument("--val-phantoms", type=int, default=200)
    p.add_argument("--real-repeat", type=int, default=150)
    p.add_argument("--unet-init", default=str(REPO / "models" / "unet_heatmap"),
                   help="model folder the U-Net starts from ('' = from scratch)")
    p.add_argument("--unet-lr", type=float, default=3e-4)
    p.add_argument("--unet-profile", default="realistic", choices=["realistic", "standard"],
                   help="augmentation profile of the U-Net run (standard: the shipped model's)")
    p.add_argument("--unet-seconds", type=float, default=170)
    p.add_argument("--inception-arch", default="inception_integral", choices=["inception_integral", "inception_gap"])
    p.add_argument("--inception-loss", default=None, choices=["wing", "smooth_l1", "mse"])
    p.add_argument("--inception-lr", type=float, default=1e-3)
    p.add_argument("--inception-seconds", type=float, default=250)
    p.add_argument("--inception-size", type=int, nargs=2, default=[384, 160], metavar=("H", "W"))
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--processes", type=int, default=max(1, mp.cpu_count() - 1))
    p.add_argument("--score-phantoms", type=int, default=200)
    p.add_argument("--wide-score", type=int, default=60)
    p.add_argument("--dev-dir", default=None, help="external dev folder (labels.csv + images/); validation only")
    p.add_argument("--spacing", type=float, default=0.1, help="mm/px of the dev images")
    p.add_argument("--dev-modes", nargs="+", default=["auto", "hand"], choices=["auto", "hand"])
    p.add_argument("--skip", choices=["unet", "inception"], action="append", default=[])
    p.add_argument("--skip-pack-check", action="store_true", help="do not re-validate the int8 weights")
    p.add_argument("--keep-float", action="store_true", help="keep the packed model's rebuilt model.keras in --out")
    args = p.parse_args(argv)
    if args.dev_dir and not (Path(args.dev_dir) / "labels.csv").is_file():
        # never lose a GPU run to a missing folder: train and score the rest, score the dev set later
        print(f"warning: {args.dev_dir}/labels.csv not found; skipping the dev set (run bench/real_dev.py "
              "on the model folders afterwards)", file=sys.stderr)
        args.dev_dir = None
    out = Path(args.out)
    work = Path(args.work) if args.work else out.parent / "robust_work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    labels, n_wide = render_parallel(work / "phantoms", args.phantoms, seed=21, wide_share=args.wide_share,
                                     processes=args.processes)
    render_s = round(time.time() - t0, 1)
    print(f"rendered {args.phantoms} phantoms ({n_wide} wide crops) in {render_s} s", flush=True)

    import keras  # noqa: E402  (after the fork pool)

    from cvs_core.architectures import get_arch
    from cvs_core.packing import load_packed_weights, pack_weights
    from cvs_core.registry import read_manifest, write_manifest
    from cvs_core.train import TrainConfig, train

    samples = REPO / "data" / "samples"
    common = dict(csv=[str(labels), str(samples / "train_data.csv")],
                  images=[str(labels.parent / "images"), str(samples / "roi")],
                  repeat_csv=[1, args.real_repeat], val_phantoms=args.val_phantoms, seed=0,
                  workers=args.workers, batch_size=args.batch_size, early_stopping_patience=30,
                  reduce_lr_patience=6, mixed_precision="off", epochs=args.epochs)
    provenance = {"script": "scripts/train_robust_models.py", "argv": sys.argv[1:] if argv is None else list(argv),
                  "git_commit": _git_commit(), "backend": keras.backend.backend(), "devices": _devices(),
                  "host": platform.node(), "phantoms": args.phantoms, "wide_crops": n_wide, "render_s": render_s,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))}
    results = {"provenance": provenance}
    folders = {}

    def finish(name: str, folder: Path, train_s: float, packed: bool, decode_like: str | None = None) -> Path:
        manifest = read_manifest(folder)
        target = out / name
        if decode_like:  # decode like the model it was fine-tuned from (e.g. the shape-prior heatmap decoder)
            init_codec = read_manifest(Path(decode_like))["codec"]
            if init_codec.get("kind") == manifest["codec"].get("kind") and \
                    list(init_codec.get("input_size", [])) == list(manifest["codec"].get("input_size", [])):
                manifest["codec"] = {**manifest["codec"], **init_codec}
        if packed:
            model = keras.saving.load_model(folder / "model.keras", compile=False)
            packed_files = pack_weights(model, target)
            manifest["packed_weights"] = packed_files
            manifest.pop("weights_sha256", None)
            if not args.skip_pack_check:  # the int8 model's validation error next to the float one
                from cvs_core.train import RunMonitor, build_datasets, make_codec
                cfg = TrainConfig.from_json(json.dumps(manifest["training"]["config"]))
                codec = make_codec(cfg)
                _, val, _ = build_datasets(cfg, codec)
                model.set_weights(load_packed_weights(target, packed_files))
                mon = RunMonitor(work / f"run_{name}", cfg, codec, val, 0, False)
                mon.set_model(model)
                manifest["metrics"]["val_mre_px_int8"] = mon.val_mre_px()
        else:
            shutil.copytree(folder, target, dirs_exist_ok=True)
        manifest["name"] = name
        manifest["training"]["provenance"] = {**provenance, "train_s": round(train_s, 1),
                                              "time_limit_s": manifest["training"]["config"].get("time_limit_s")}
        write_manifest(target, manifest)
        if packed:
            from cvs_core.registry import unpack_model_folder
            unpack_model_folder(target)  # model.keras from the shards (git-ignored), for scoring here
        return target

    if "unet" not in args.skip:
        cfg = TrainConfig(model="unet_heatmap", preset="improved", lr=args.unet_lr, time_limit_s=args.unet_seconds,
                          init_from=args.unet_init or None, name="unet_heatmap", augment_profile=args.unet_profile,
                          lr_schedule="warmup_cosine", warmup_epochs=1, **common)
        t = time.time()
        folder = train(cfg, work / "run_unet_heatmap")
        folders["unet_heatmap"] = finish("unet_heatmap", folder, time.time() - t, packed=False,
                                         decode_like=args.unet_init or None)
        print("unet_heatmap trained", read_manifest(folder)["metrics"], flush=True)
    if "inception" not in args.skip:
        h, w = args.inception_size
        pre = {"input_size": [h, w], "resize_first": False, "channels": 3, "scaling": "symmetric"}
        cfg = TrainConfig(model=args.inception_arch, preset="improved", lr=args.inception_lr,
                          time_limit_s=args.inception_seconds, name="inception_resnet_v2", loss=args.inception_loss,
                          lr_schedule="warmup_cosine", warmup_epochs=2, preprocess=pre, augment_profile="realistic",
                          **common)
        t = time.time()
        folder = train(cfg, work / "run_inception_resnet_v2")
        assert get_arch(cfg.model).packed_weights  # too big for git: ships as int8 shards
        folders["inception_resnet_v2"] = finish("inception_resnet_v2", folder, time.time() - t, packed=True)
        print("inception_resnet_v2 trained", read_manifest(folder)["metrics"], flush=True)

    for name, folder in folders.items():
        t = time.time()
        manifest = read_manifest(folder)
        metrics = {"training_validation": {"best_val_mre_px": manifest["metrics"].get("best_val_mre_px"),
                                           **({"val_mre_px_int8": manifest["metrics"]["val_mre_px_int8"]}
                                              if "val_mre_px_int8" in manifest["metrics"] else {})},
                   **score(folder, args)}
        manifest["metrics"] = metrics
        write_manifest(folder, manifest)
        results[name] = {"metrics": metrics, "train_s": manifest["training"]["provenance"]["train_s"],
                         "epochs_run": manifest["training"]["epochs_run"], "score_s": round(time.time() - t, 1)}
        print(name, json.dumps({k: metrics[k].get("mre_px") for k in metrics if isinstance(metrics[k], dict)}),
              flush=True)
    if args.dev_dir and folders:
        dev = dev_scores(list(folders.values()), args)
        results["external_dev"] = dev
        for name, folder in folders.items():
            manifest = read_manifest(folder)
            if name in dev:
                manifest["metrics"]["external_dev"] = {**dev[name], "spacing_mm": args.spacing,
                                                       "note": "validation only, never trained on"}
                write_manifest(folder, manifest)
        print("external dev", json.dumps(dev), flush=True)
    for name, folder in folders.items():  # the float model rebuilt from int8 shards is not shipped
        manifest = read_manifest(folder)
        if manifest.get("packed_weights") and not args.keep_float:
            (folder / "model.keras").unlink(missing_ok=True)
            (folder / "manifest.local.json").unlink(missing_ok=True)
    results["total_s"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({k: v for k, v in results.items() if k != "provenance"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())

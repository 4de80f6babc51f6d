"""End-to-end evaluation throughput and memory (docs/architecture.md#targets).

Target: against a study-style pipeline (per-image Python loop, per-image ``model.predict``) on the
same machine, ≥ 3× end-to-end throughput; dataset evaluation streams from disk with peak memory
flat in the number of images.

On N phantoms written to a temporary folder (default 64):
(a) study-style: for each image ``cv2.imread`` → preprocess → ``model.predict(x[None])`` → decode
    → ROI frame, in plain Python (the same Keras model, preprocessing and codec as ours);
(b) ours: ``cvs_core.evaluate.predict_dataset`` (batches read ahead on a thread, one compiled
    ``Predictor`` call per batch), cache off.
Both are warmed up first (model load and tracing excluded), and produce the same landmarks.
Then peak RSS (``resource.getrusage``) of (b) for N and 4N images, each in its own subprocess.

Model: ``--model DIR`` or, by default, ``models/unet_heatmap`` when it holds a model; otherwise an
untrained model of the shipped architecture (unet_heatmap 384×160, 16 filters, depth 4) is built
into a temporary folder — throughput does not depend on the weights. ``--tiny`` trains the tiny
test model instead.

Run: ``.venv/bin/python bench/bench_pipeline.py [--n 64] [--model DIR]``; ``run() -> dict``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

TARGET_RATIO = 3.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux ≥ 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def default_model(workdir: Path, tiny: bool = False) -> tuple[Path, str]:
    """``(model folder, description)``: the shipped unet_heatmap, else a stand-in built in ``workdir``."""
    shipped = REPO / "models" / "unet_heatmap"
    if not tiny and (shipped / "manifest.json").is_file():
        try:
            from cvs_core.registry import load_keras_model
            load_keras_model(shipped)  # unpacks packed weights if needed
            return shipped, "shipped models/unet_heatmap"
        except Exception as exc:  # noqa: BLE001
            print(f"note: shipped models/unet_heatmap unusable ({exc}); using a stand-in", file=sys.stderr)
    if tiny:
        from cvs_core.preprocess import PreprocessConfig
        from cvs_core.train import TrainConfig, train

        config = TrainConfig(model="unet_heatmap", phantoms=8, val_phantoms=4, epochs=1, batch_size=4,
                             builder_kwargs=dict(base_filters=4, depth=3),
                             preprocess=PreprocessConfig(input_size=(96, 40), resize_first=False).to_dict())
        return train(config, workdir / "tiny_run", verbose=False), "tiny trained unet_heatmap 96×40, 4 filters, depth 3"
    from cvs_core.codecs import HeatmapCodec
    from cvs_core.networks import build_model
    from cvs_core.registry import base_manifest, save_model_folder
    from cvs_core.architectures import improved_unet_preprocess

    pre = improved_unet_preprocess()
    kwargs = dict(input_size=tuple(pre.input_size), base_filters=16, depth=4)
    model = build_model("unet_heatmap", **kwargs)
    manifest = base_manifest("unet_heatmap_untrained", "unet_heatmap", kwargs, pre, HeatmapCodec(input_size=pre.input_size))
    folder = save_model_folder(model, workdir / "unet_heatmap_untrained", manifest)
    return folder, "untrained unet_heatmap 384×160, 16 filters, depth 4 (shipped architecture)"


def study_style(folder: Path, dataset, warmup: bool = True) -> tuple[np.ndarray, float]:
    """Per-image loop with per-image ``model.predict``. Returns ``(pred (N, 19, 2) ROI px, seconds)``."""
    import cv2

    from cvs_core.codecs import codec_from_dict
    from cvs_core.preprocess import PreprocessConfig, preprocess
    from cvs_core.registry import load_keras_model, read_manifest

    manifest = read_manifest(folder)
    config = PreprocessConfig.from_dict(manifest["preprocess"])
    codec = codec_from_dict(manifest["codec"])
    model = load_keras_model(folder)
    if warmup:
        model.predict(np.zeros((1, *model.input_shape[1:]), np.float32), verbose=0)
    out = []
    t0 = time.perf_counter()
    for path in dataset.image_paths:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        pre = preprocess(image, config)
        raw = model.predict(pre.image[None], verbose=0)[0]
        pts, _conf = codec.decode(raw)
        out.append(pre.model_to_roi(pts))
    return np.asarray(out), time.perf_counter() - t0


def ours(folder: Path, dataset, batch_size: int = 8) -> tuple[np.ndarray, float]:
    from cvs_core.evaluate import predict_dataset
    from cvs_core.predict import Predictor

    predictor = Predictor(folder)  # loads and warms up
    t0 = time.perf_counter()
    pset = predict_dataset(predictor, dataset, batch_size=batch_size, use_cache=False)
    return pset.pred, time.perf_counter() - t0


def _child(args) -> None:
    """Subprocess: predict_dataset on the first ``--n`` images; print peak RSS as JSON."""
    from cvs_core.evaluate import load_dataset, predict_dataset
    from cvs_core.predict import Predictor

    ds = load_dataset(Path(args.data) / "labels.csv", Path(args.data) / "images")
    n = int(args.n)
    ds.names, ds.image_paths, ds.landmarks = ds.names[:n], ds.image_paths[:n], ds.landmarks[:n]
    ds.stages = ds.stages[:n] if ds.stages is not None else None
    predictor = Predictor(Path(args.model))
    before = _peak_rss_mb()
    rss_start = _current_rss_mb()
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    predict_dataset(predictor, ds, batch_size=int(args.batch_size), use_cache=False)
    dt = time.perf_counter() - t0
    print(json.dumps({"n": n, "peak_rss_mb": _peak_rss_mb(), "peak_rss_after_load_mb": before,
                      "rss_start_mb": rss_start, "rss_end_mb": _current_rss_mb(),
                      "peak_rss_during_predict_mb": _vm_hwm_mb() if reset else None, "seconds": dt}))


def _measure_memory(model: Path, data: Path, n: int, batch_size: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", "--n", str(n), "--model", str(model),
           "--data", str(data), "--batch-size", str(batch_size)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(n: int = 64, model: str | None = None, batch_size: int = 8, memory: bool = True, tiny: bool = False,
        verbose: bool = True) -> dict:
    from cvs_core.evaluate import load_dataset
    from cvs_core.synth import write_phantom_dataset

    with tempfile.TemporaryDirectory(prefix="cvs_bench_") as tmp:
        tmp = Path(tmp)
        if model:
            folder, desc = Path(model), f"model folder {model}"
        else:
            folder, desc = default_model(tmp, tiny=tiny)
        n_total = 4 * n if memory else n
        t0 = time.perf_counter()
        write_phantom_dataset(tmp / "phantoms", n=n_total, seed=123)
        t_write = time.perf_counter() - t0
        full = load_dataset(tmp / "phantoms" / "labels.csv", tmp / "phantoms" / "images")
        ds = load_dataset(tmp / "phantoms" / "labels.csv", tmp / "phantoms" / "images")
        ds.names, ds.image_paths, ds.landmarks = ds.names[:n], ds.image_paths[:n], ds.landmarks[:n]
        ds.stages = ds.stages[:n]

        pred_a, t_a = study_style(folder, ds)
        pred_b, t_b = ours(folder, ds, batch_size=batch_size)
        max_diff = float(np.nanmax(np.abs(pred_a - pred_b))) if np.isfinite(pred_a).any() else float("nan")
        ips_a, ips_b = n / t_a, n / t_b
        result = dict(model=desc, n_images=n, batch_size=batch_size, cpu_count=os.cpu_count(),
                      study_images_per_s=ips_a, ours_images_per_s=ips_b, ratio=ips_b / ips_a,
                      study_ms_per_image=1e3 * t_a / n, ours_ms_per_image=1e3 * t_b / n,
                      max_landmark_diff_px=max_diff, target_ratio=TARGET_RATIO, phantom_write_s=t_write)
        if memory:
            mem_n = _measure_memory(folder, tmp / "phantoms", n, batch_size)
            mem_4n = _measure_memory(folder, tmp / "phantoms", len(full), batch_size)
            result.update(peak_rss_mb_n=mem_n["peak_rss_mb"], peak_rss_mb_4n=mem_4n["peak_rss_mb"],
                          peak_rss_after_load_mb_n=mem_n["peak_rss_after_load_mb"],
                          peak_rss_after_load_mb_4n=mem_4n["peak_rss_after_load_mb"],
                          peak_rss_growth_mb=mem_4n["peak_rss_mb"] - mem_n["peak_rss_mb"],
                          predict_peak_mb_n=mem_n["peak_rss_during_predict_mb"],
                          predict_peak_mb_4n=mem_4n["peak_rss_during_predict_mb"],
                          rss_start_mb_n=mem_n["rss_start_mb"], rss_start_mb_4n=mem_4n["rss_start_mb"])
        result["passed"] = bool(result["ratio"] >= TARGET_RATIO and max_diff < 0.05)
    if verbose:
        print(f"End-to-end evaluation throughput: {n} phantoms (250×600 PNG on disk), {desc}, "
              f"{os.cpu_count()} CPU cores")
        print(f"  (a) study-style loop, per-image model.predict : {ips_a:8.1f} images/s  ({1e3 * t_a / n:7.1f} ms/image)")
        print(f"  (b) evaluate.predict_dataset, batch {batch_size:<3}      : {ips_b:8.1f} images/s  ({1e3 * t_b / n:7.1f} ms/image)")
        print(f"  ratio (b)/(a) = {result['ratio']:.1f}×  (target ≥ {TARGET_RATIO:g}×)   "
              f"same landmarks: max |Δ| = {max_diff:.2e} px")
        if memory:
            print(f"  peak RSS, predict_dataset in a fresh process: N={n}: {result['peak_rss_mb_n']:.0f} MB, "
                  f"4N={4 * n}: {result['peak_rss_mb_4n']:.0f} MB  (growth {result['peak_rss_growth_mb']:+.0f} MB; "
                  f"after model load {result['peak_rss_after_load_mb_n']:.0f} / {result['peak_rss_after_load_mb_4n']:.0f} MB)")
            if result["predict_peak_mb_n"] is not None:
                print(f"  peak RSS during prediction only (VmHWM reset after load; RSS at start "
                      f"{result['rss_start_mb_n']:.0f} / {result['rss_start_mb_4n']:.0f} MB): "
                      f"N: {result['predict_peak_mb_n']:.0f} MB, 4N: {result['predict_peak_mb_4n']:.0f} MB")
        print(f"  {'PASS' if result['passed'] else 'FAIL'}: ≥ {TARGET_RATIO:g}× end-to-end throughput")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--model", default=None, help="model folder (default: models/unet_heatmap or a stand-in)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    p.add_argument("--no-memory", action="store_true", help="skip the N vs 4N peak-RSS subprocesses")
    p.add_argument("--tiny", action="store_true", help="train and use the tiny test model")
    p.add_argument("--json", action="store_true")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        _child(args)
        return 0
    r = run(n=args.n, model=args.model, batch_size=args.batch_size, memory=not args.no_memory, tiny=args.tiny)
    if args.json:
        print(json.dumps(r, indent=2))
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

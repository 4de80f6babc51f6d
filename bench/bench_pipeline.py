"""End-to-end evaluation throughput and memory (docs/architecture.md#targets).

Target: against a study-style pipeline (per-image Python loop, per-image ``model.predict``) on the
same machine, ≥ 3× end-to-end throughput; dataset evaluation streams from disk with peak memory
flat in the number of images.

On N phantoms written to a temporary folder (default 64):
(a) study-style (:class:`StudyStyle`): for each image ``cv2.imread`` → preprocess →
    ``model.predict(x[None])`` → decode → ROI frame, in plain Python (the same Keras model,
    preprocessing and codec as ours), as the study's notebook does;
(b) ours (:class:`Ours`): ``cvs_core.evaluate.predict_dataset``, cache off, on ``--workers`` model
    processes (:class:`cvs_core.workers.WorkerPool`, the cores shared out — one TensorFlow thread each on
    2 cores — each reading its own images; default 2) or, with ``--workers 1``, one in-process ``Predictor`` (the next batch read on a
    helper thread, one compiled call per batch, fed in chunks of ``Predictor.max_batch``).
Both are loaded and warmed up first (model load, worker start and tracing excluded from the timing;
the worker start is printed). Timing (:func:`compare`): the
images are cut into blocks of ``--block`` (8) and the two pipelines take turns block by block —
study then ours on block 0, ours then study on block 1, … — each block timed, so drifting load from
other processes hits both alike. Reported: the ratio of the summed times (study / ours = our
throughput over the study's), the per-block ratios' median and range, and the largest landmark
difference between (a) and (b) over all images (must be < 0.05 px).
Then peak RSS (``resource.getrusage``) of (b) for N and 4N images, each in its own subprocess.

Model: ``--model DIR`` or, by default, ``models/unet_heatmap`` when it holds a model; otherwise an
untrained model of the shipped architecture (unet_heatmap 384×160, 16 filters, depth 4) is built
into a temporary folder — throughput does not depend on the weights. ``--tiny`` trains the tiny
test model instead.

Run: ``.venv/bin/python bench/bench_pipeline.py [--n 64] [--block 8] [--model DIR]``; ``run() -> dict``.
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


class StudyStyle:
    """The study's evaluation loop (its notebook): per image ``cv2.imread`` → preprocess →
    ``model.predict(x[None])`` (Keras, batch of one) → decode → ROI frame, in plain Python. Same
    Keras model, preprocessing and codec as ours; the model is loaded and one ``predict`` warms it.
    ``study(paths)`` → ``(n, 19, 2)`` landmarks, ROI px, (x, y)."""

    def __init__(self, folder: Path, warmup: bool = True):
        from cvs_core.codecs import codec_from_dict
        from cvs_core.preprocess import PreprocessConfig
        from cvs_core.registry import load_keras_model, read_manifest

        manifest = read_manifest(folder)
        self.config = PreprocessConfig.from_dict(manifest["preprocess"])
        self.codec = codec_from_dict(manifest["codec"])
        self.model = load_keras_model(folder)
        if warmup:
            self.model.predict(np.zeros((1, *self.model.input_shape[1:]), np.float32), verbose=0)

    def __call__(self, paths) -> np.ndarray:
        import cv2

        from cvs_core.preprocess import preprocess

        out = []
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            pre = preprocess(image, self.config)
            raw = self.model.predict(pre.image[None], verbose=0)[0]
            pts, _conf = self.codec.decode(raw)
            out.append(pre.model_to_roi(pts))
        return np.asarray(out, np.float64).reshape(-1, 19, 2)


class Ours:
    """``cvs_core.evaluate.predict_dataset`` with a loaded (and warmed) ``Predictor``, or with a
    :class:`~cvs_core.workers.WorkerPool` of ``workers`` processes when ``workers`` > 1; cache off.
    ``ours(dataset)`` → ``(n, 19, 2)`` landmarks, ROI px, (x, y). ``start_s``: seconds to load."""

    def __init__(self, folder: Path, batch_size: int = 8, workers: int = 1):
        from cvs_core.predict import Predictor
        from cvs_core.workers import WorkerPool

        t0 = time.perf_counter()
        self.predictor = WorkerPool(folder, workers=workers) if workers > 1 else Predictor(folder)  # loads, warms up
        self.start_s = time.perf_counter() - t0
        self.workers = workers
        self.batch_size = batch_size

    def close(self) -> None:
        if hasattr(self.predictor, "close"):
            self.predictor.close()

    def __call__(self, dataset) -> np.ndarray:
        from cvs_core.evaluate import predict_dataset

        return predict_dataset(self.predictor, dataset, batch_size=self.batch_size, use_cache=False).pred


def _subset(dataset, idx):
    """The images ``idx`` of ``dataset`` as a Dataset of their own."""
    import dataclasses

    return dataclasses.replace(dataset, names=[dataset.names[i] for i in idx],
                               image_paths=[dataset.image_paths[i] for i in idx],
                               landmarks=None if dataset.landmarks is None else dataset.landmarks[idx],
                               stages=None if dataset.stages is None else dataset.stages[idx])


def compare(study: StudyStyle, ours: Ours, dataset, block: int = 8) -> dict:
    """Both pipelines over the same images in interleaved blocks of ``block`` images: block 0 study
    then ours, block 1 ours then study, … (``bench/timing.interleaved_rounds``), each block timed.

    Before timing, both run once on the first block (untimed: first-call costs of a new batch
    shape). Returns the summed seconds, ``ratio`` = study seconds / our seconds (= our throughput
    over the study's), the per-block ratios (median, min, max), and ``max_landmark_diff_px``
    between the two pipelines' landmarks ``(N, 19, 2)`` over all images."""
    from bench.timing import interleaved_rounds

    n = len(dataset)
    if block < 1 or n < 1:
        raise ValueError(f"need ≥ 1 image and a block of ≥ 1 image, got {n} images, block {block}")
    blocks = [list(range(i, min(i + block, n))) for i in range(0, n, block)]
    subsets = [_subset(dataset, idx) for idx in blocks]
    study(subsets[0].image_paths)
    ours(subsets[0])
    timed = interleaved_rounds({"study": lambda k: study(subsets[k].image_paths), "ours": lambda k: ours(subsets[k])},
                               len(blocks), rotate=True, keep_results=True)
    pred_study = np.concatenate(timed.results["study"])
    pred_ours = np.concatenate(timed.results["ours"])
    if pred_study.shape != (n, 19, 2) or pred_ours.shape != (n, 19, 2):
        raise RuntimeError(f"pipelines returned {pred_study.shape} / {pred_ours.shape} landmarks for {n} images")
    both = np.isfinite(pred_study) & np.isfinite(pred_ours)
    if not np.array_equal(np.isfinite(pred_study), np.isfinite(pred_ours)):
        max_diff = float("inf")  # one pipeline found a landmark the other missed
    else:
        max_diff = float(np.abs(pred_study - pred_ours)[both].max()) if both.any() else 0.0
    t_study, t_ours = timed.total("study"), timed.total("ours")
    per_block = np.asarray(timed.seconds["study"]) / np.asarray(timed.seconds["ours"])
    return dict(block=block, n_blocks=len(blocks), study_s=t_study, ours_s=t_ours, ratio=t_study / t_ours,
                block_ratio_median=float(np.median(per_block)), block_ratio_min=float(per_block.min()),
                block_ratio_max=float(per_block.max()), block_ratios=[round(float(r), 3) for r in per_block],
                max_landmark_diff_px=max_diff)


def _child(args) -> None:
    """Subprocess: predict_dataset on the first ``--n`` images; print peak RSS as JSON."""
    from cvs_core.evaluate import load_dataset, predict_dataset
    from cvs_core.predict import Predictor

    n = int(args.n)
    ds = _subset(load_dataset(Path(args.data) / "labels.csv", Path(args.data) / "images"), list(range(n)))
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
        verbose: bool = True, block: int = 8, workers: int = 2) -> dict:
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
        ds = _subset(full, list(range(n)))

        load_before = os.getloadavg()
        ours = Ours(folder, batch_size=batch_size, workers=workers)
        try:
            cmp = compare(StudyStyle(folder), ours, ds, block=block)
        finally:
            ours.close()
        t_a, t_b, max_diff = cmp["study_s"], cmp["ours_s"], cmp["max_landmark_diff_px"]
        ips_a, ips_b = n / t_a, n / t_b
        result = dict(model=desc, n_images=n, batch_size=batch_size, cpu_count=os.cpu_count(), workers=workers,
                      ours_start_s=ours.start_s,
                      study_images_per_s=ips_a, ours_images_per_s=ips_b,
                      study_ms_per_image=1e3 * t_a / n, ours_ms_per_image=1e3 * t_b / n,
                      target_ratio=TARGET_RATIO, phantom_write_s=t_write,
                      load_avg_before=load_before, load_avg_after=os.getloadavg(), **cmp)
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
        print(f"  interleaved blocks of {block} images (study, ours / ours, study / …), {cmp['n_blocks']} each; "
              f"load average before {load_before[0]:.1f}, after {result['load_avg_after'][0]:.1f}")
        print(f"  (a) study-style loop, per-image model.predict : {ips_a:8.1f} images/s  ({1e3 * t_a / n:7.1f} ms/image)")
        print(f"  (b) evaluate.predict_dataset, batch {batch_size:<3}      : {ips_b:8.1f} images/s  ({1e3 * t_b / n:7.1f} ms/image)"
              f"  [{workers} worker process{'es' if workers > 1 else ''}; started in {ours.start_s:.1f} s, not timed]")
        print(f"  ratio (b)/(a) = {result['ratio']:.2f}× of summed times  (target ≥ {TARGET_RATIO:g}×); per block: median "
              f"{cmp['block_ratio_median']:.2f}×, range {cmp['block_ratio_min']:.2f}–{cmp['block_ratio_max']:.2f}×")
        print(f"  same landmarks: max |Δ| = {max_diff:.2e} px")
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
    p.add_argument("--block", type=int, default=8, help="images per interleaved timing block")
    p.add_argument("--workers", type=int, default=2, help="our model processes (default 2; 1 = in-process)")
    p.add_argument("--no-memory", action="store_true", help="skip the N vs 4N peak-RSS subprocesses")
    p.add_argument("--tiny", action="store_true", help="train and use the tiny test model")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="also write the result as JSON to this file")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        _child(args)
        return 0
    r = run(n=args.n, model=args.model, batch_size=args.batch_size, memory=not args.no_memory, tiny=args.tiny,
            block=args.block, workers=max(1, args.workers))
    if args.json:
        print(json.dumps(r, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(r, indent=2))
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Run the benchmarks and print one summary table of the docs/architecture.md#targets ratios.

``.venv/bin/python bench/run_all.py [--n 64] [--model DIR] [--no-memory] [--repeat 3]``
- bench_pck.run(): PCK re-scoring, 1,000 images × 19 × 2 models (≤ 5 ms, ≥ 100× vs a Python loop);
- bench_pipeline.run(): end-to-end evaluation throughput vs a study-style loop (≥ 3×, the two
  loops interleaved block by block) and peak memory for N vs 4N images (flat). ``--repeat K`` runs
  the pipeline bench K times in a row, each in a fresh process (as K consecutive runs of this
  script would; the memory measurement only in the first), and prints every ratio; the target is
  met only if every run meets it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_pck  # noqa: E402
import bench_pipeline  # noqa: E402


def _pipeline_in_fresh_process(args, memory: bool) -> dict:
    """``bench/bench_pipeline.py`` in a child process (its report goes to this stdout) → its result."""
    with tempfile.TemporaryDirectory(prefix="cvs_run_all_") as tmp:
        out = Path(tmp) / "pipeline.json"
        cmd = [sys.executable, str(Path(bench_pipeline.__file__).resolve()), "--n", str(args.n),
               "--block", str(args.block), "--workers", str(args.workers), "--out", str(out)]
        cmd += (["--model", args.model] if args.model else []) + ([] if memory else ["--no-memory"])
        cmd += ["--tiny"] if args.tiny else []
        repo = str(Path(__file__).resolve().parents[1])
        proc = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=repo), cwd=repo)  # exit 1 = target missed
        if not out.is_file():
            raise SystemExit(f"the pipeline bench failed (exit {proc.returncode}); command: {' '.join(cmd)}")
        return json.loads(out.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="run all benchmarks")
    p.add_argument("--n", type=int, default=64, help="phantoms for the pipeline bench")
    p.add_argument("--model", default=None, help="model folder for the pipeline bench")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--tiny", action="store_true", help="pipeline bench on the tiny test model")
    p.add_argument("--block", type=int, default=8, help="images per interleaved timing block")
    p.add_argument("--workers", type=int, default=2, help="our model processes in the pipeline bench (1 = in-process)")
    p.add_argument("--repeat", type=int, default=1, help="run the pipeline throughput bench this many times in a row")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be ≥ 1, got {args.repeat}")

    print("=" * 100)
    pck = bench_pck.run()
    print("=" * 100)
    pipes = []
    for k in range(args.repeat):
        memory = not args.no_memory and k == 0
        if args.repeat == 1:
            pipes.append(bench_pipeline.run(n=args.n, model=args.model, memory=memory, tiny=args.tiny, block=args.block,
                                            workers=max(1, args.workers)))
        else:
            print(f"pipeline run {k + 1} of {args.repeat} (fresh process)", flush=True)
            pipes.append(_pipeline_in_fresh_process(args, memory))
        print("=" * 100)
    pipe = pipes[0]
    ratios = [r["ratio"] for r in pipes]
    if args.repeat > 1:
        print(f"evaluation throughput ratios, {args.repeat} runs in a row: "
              + " / ".join(f"{r:.2f}×" for r in ratios)
              + "   (per-block medians: " + " / ".join(f"{r['block_ratio_median']:.2f}×" for r in pipes) + ")")

    rows = [
        ("PCK re-score, 1000×19×2 (SortedErrors)", f"{pck['sorted_rescore_ms']:.4f} ms", "≤ 5 ms",
         pck["sorted_rescore_ms"] <= bench_pck.TARGET_MS),
        ("PCK re-score vs study Python loop", f"{pck['ratio_loop_over_sorted']:,.0f}×", "≥ 100×",
         pck["ratio_loop_over_sorted"] >= 100),
    ]
    for k, r in enumerate(pipes):
        run_label = f", run {k + 1}" if len(pipes) > 1 else ""
        rows.append((f"evaluation throughput vs study loop (N={r['n_images']}{run_label})", f"{r['ratio']:.2f}× "
                     f"({r['ours_images_per_s']:.1f} vs {r['study_images_per_s']:.1f} img/s)", "≥ 3×",
                     r["ratio"] >= bench_pipeline.TARGET_RATIO and r["max_landmark_diff_px"] < 0.05))
    if "peak_rss_mb_n" in pipe:
        growth = pipe["peak_rss_growth_mb"]
        rows.append((f"peak RSS N={pipe['n_images']} → 4N", f"{pipe['peak_rss_mb_n']:.0f} → {pipe['peak_rss_mb_4n']:.0f} MB "
                     f"({growth:+.0f} MB)", "flat", abs(growth) <= max(50.0, 0.05 * pipe["peak_rss_mb_n"])))
        if pipe.get("predict_peak_mb_n") is not None:
            g = pipe["predict_peak_mb_4n"] - pipe["predict_peak_mb_n"]
            rows.append(("  peak RSS during prediction only, N → 4N",
                         f"{pipe['predict_peak_mb_n']:.0f} → {pipe['predict_peak_mb_4n']:.0f} MB ({g:+.0f} MB)", "flat",
                         abs(g) <= max(50.0, 0.05 * pipe["predict_peak_mb_n"])))
    w = max(len(r[0]) for r in rows)
    print(f"{'benchmark':<{w}}  {'measured':<34} {'target':<8} result")
    print("-" * (w + 56))
    for name, got, target, ok in rows:
        print(f"{name:<{w}}  {got:<34} {target:<8} {'PASS' if ok else 'FAIL'}")
    print(f"pipeline model: {pipe['model']}; {pipe['cpu_count']} CPU cores")
    if args.json:
        Path(args.json).write_text(json.dumps({"pck": pck, "pipeline": pipe, "pipeline_runs": pipes}, indent=2,
                                              default=float))
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

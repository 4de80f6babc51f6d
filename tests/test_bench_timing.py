"""The benches' interleaved timing loop (bench/timing.py) and the evaluation-throughput comparison
that uses it (bench/bench_pipeline.compare: both pipelines, same images, same landmarks)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.timing import interleaved_rounds  # noqa: E402


def test_rounds_alternate_who_goes_first_and_time_each_call():
    ran = []

    def call(name, sleep_s):
        def f(k):
            ran.append((k, name))
            time.sleep(sleep_s)
            return f"{name}{k}"
        return f

    r = interleaved_rounds({"a": call("a", 0.0), "b": call("b", 0.02)}, 4, keep_results=True)
    assert r.order == [["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]]
    assert ran == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b"), (3, "b"), (3, "a")]
    assert r.results == {"a": ["a0", "a1", "a2", "a3"], "b": ["b0", "b1", "b2", "b3"]}
    assert len(r.seconds["b"]) == 4 and min(r.seconds["b"]) >= 0.02
    assert r.total("b") == pytest.approx(sum(r.seconds["b"]))
    assert r.median_ms("b", per=2) >= 10.0
    assert r.total("a") < r.total("b")

    three = interleaved_rounds({n: call(n, 0.0) for n in "xyz"}, 3, keep_results=False)
    assert three.order == [["x", "y", "z"], ["y", "z", "x"], ["z", "x", "y"]]
    assert three.results == {"x": [], "y": [], "z": []}  # not kept unless asked
    fixed = interleaved_rounds({n: call(n, 0.0) for n in "xy"}, 2, rotate=False)
    assert fixed.order == [["x", "y"], ["x", "y"]]


def test_pause_is_not_timed():
    t0 = time.perf_counter()
    r = interleaved_rounds({"a": lambda k: None}, 3, pause_s=0.05)
    assert time.perf_counter() - t0 >= 0.15
    assert r.total("a") < 0.05
    with pytest.raises(ValueError, match="rounds"):
        interleaved_rounds({"a": lambda k: None}, -1)


def test_compare_runs_both_pipelines_on_the_same_images(tiny_model_dir, tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import bench_pipeline
    from cvs_core.evaluate import load_dataset
    from cvs_core.synth import write_phantom_dataset

    write_phantom_dataset(tmp_path / "ph", n=6, seed=5)
    ds = load_dataset(tmp_path / "ph" / "labels.csv", tmp_path / "ph" / "images")
    study = bench_pipeline.StudyStyle(tiny_model_dir)
    ours = bench_pipeline.Ours(tiny_model_dir, batch_size=2)
    out = bench_pipeline.compare(study, ours, ds, block=4)
    assert out["n_blocks"] == 2 and len(out["block_ratios"]) == 2  # blocks of 4 + 2 images
    assert out["max_landmark_diff_px"] < 0.05
    assert out["ratio"] == pytest.approx(out["study_s"] / out["ours_s"])
    assert out["block_ratio_min"] <= out["block_ratio_median"] <= out["block_ratio_max"]
    # the study loop on its own gives the same landmarks as predict_dataset on the whole set
    whole = ours(ds)
    assert whole.shape == (6, 19, 2) and np.isfinite(whole).mean() > 0.5  # landmarks to compare, not NaNs
    np.testing.assert_allclose(study(ds.image_paths), whole, atol=0.05)

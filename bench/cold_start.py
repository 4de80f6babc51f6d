"""Cold start: from a fresh Python process to both demo models ready (issue 15, item 3).

Runs a child process (so imports are cold for Python, though the OS page cache may be warm) that
times, in order: importing TensorFlow/Keras, ``registry.ensure_demo_models()`` (unpacks the int8
InceptionResNetV2 weights only when ``model.keras`` is missing), then for each demo model the sha256
check of ``model.keras``, ``keras.saving.load_model`` and the Predictor's compile + warm-up call —
sequentially, and separately the wall time of ``Predictor.load_async`` for both models started at once.
``--unpack`` also times the int8 unpack itself (into a temporary copy of the model folder).

Run: ``python bench/cold_start.py [--engine tf] [--unpack] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, {repo!r})
out = {{}}
import keras, tensorflow  # noqa: F401
out["import_tf_keras_s"] = time.perf_counter() - t0
from cvs_core import registry
from cvs_core.predict import Predictor
t = time.perf_counter(); registry.ensure_demo_models(); out["ensure_demo_models_s"] = time.perf_counter() - t
mode = {mode!r}
if mode == "sequential":
    for name in registry.DEMO_MODELS:
        folder = registry.resolve_model(name)
        t = time.perf_counter(); registry.sha256_file(folder / registry.WEIGHTS)
        out[name + "_sha256_s"] = time.perf_counter() - t
        t = time.perf_counter(); model = registry.load_keras_model(folder, verify=False)
        out[name + "_keras_load_s"] = time.perf_counter() - t
        del model
        t = time.perf_counter(); Predictor.load(name, engine={engine!r})
        out[name + "_predictor_load_s"] = time.perf_counter() - t
else:
    t = time.perf_counter()
    futures = [Predictor.load_async(n, engine={engine!r}) for n in registry.DEMO_MODELS]
    first = None
    for f in futures:
        f.result()
        first = first or time.perf_counter() - t
    out["load_async_first_s"] = first
    out["load_async_both_s"] = time.perf_counter() - t
out["total_s"] = time.perf_counter() - t0
print("RESULT " + json.dumps(out))
"""


def _child(mode: str, engine: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO), mode=mode, engine=engine)],
                          capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"cold-start child failed:\n{proc.stderr[-3000:]}")
    res = json.loads(line[7:])
    res["process_wall_s"] = wall
    return res


def time_unpack() -> float:
    """Seconds to rebuild InceptionResNetV2's ``model.keras`` from its int8 shards (temporary copy)."""
    import shutil
    import tempfile

    sys.path.insert(0, str(REPO))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cvs_core.packing import unpack_model_folder

    src = REPO / "models" / "inception_resnet_v2"
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / src.name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.keras", "engine_cache", "manifest.local.json"))
        t0 = time.perf_counter()
        unpack_model_folder(dst)
        return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="cold start of the demo models")
    ap.add_argument("--engine", default="tf")
    ap.add_argument("--unpack", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    res = {"sequential": _child("sequential", args.engine), "async": _child("async", args.engine),
           "cpu_count": os.cpu_count(), "engine": args.engine}
    if args.unpack:
        res["int8_unpack_s"] = time_unpack()
    for k, v in res.items():
        print(f"{k}: {json.dumps(v, default=lambda x: round(x, 2)) if isinstance(v, dict) else v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

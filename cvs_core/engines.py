"""Inference engines behind :class:`cvs_core.predict.Predictor` (``engine=``).

An engine turns a loaded Keras model into a callable ``run(batch) -> output`` where ``batch`` is
``(N, H, W, C)`` float32 (the model's input, channels last) and the output is the model's output
as a float32 array, ``(N, h, w, K)`` for mask/heatmap models or ``(N, 38)`` for regression.

- ``"tf"``: the Keras model inside one ``tf.function`` (TensorFlow; what training uses).
- ``"tf-xla"``: the same with XLA (``jit_compile=True``).
- ``"onnx"``: the model exported to ONNX (Keras ``model.export(format="onnx")``, via tf2onnx) and
  run by ONNX Runtime's CPU provider.
- ``"openvino"``: that ONNX file compiled by OpenVINO for the CPU, float32 precision (OpenVINO
  would otherwise pick bfloat16 on CPUs with AMX/AVX-512 BF16, which moves landmarks).

Exported files are caches, never committed: ``<model folder>/engine_cache/<key>/`` (or, when the
model folder is read-only, ``$CVS_HOME/engine_cache/<folder name>-<key>/``), keyed by the weights'
sha256 so a retrained or replaced ``model.keras`` never reuses a stale export. ONNX Runtime and
OpenVINO are optional dependencies: asking for an engine whose package is missing raises
:class:`EngineError` naming the package. ``onnx``/``openvino`` runners are not affected by
``keras.backend.clear_session()`` (which Streamlit calls after every script run and which makes
TensorFlow rebuild its compiled graphs).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ENGINES = ("tf", "tf-xla", "onnx", "openvino")
CACHE_DIRNAME = "engine_cache"
ONNX_FILE = "model.onnx"
_PACKAGES = {"onnx": ("onnxruntime", "onnxruntime==1.31.1"), "openvino": ("openvino", "openvino==2026.4.1")}

Runner = Callable[[np.ndarray], np.ndarray]


class EngineError(ValueError):
    """An engine that cannot be used here (unknown name, package missing, export failed)."""


def check_engine(engine: str) -> str:
    """The engine name, lower-cased; :class:`EngineError` for an unknown one or a missing package."""
    name = str(engine).lower()
    if name not in ENGINES:
        raise EngineError(f"unknown inference engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if name in _PACKAGES:
        module, pin = _PACKAGES[name]
        import importlib.util

        if importlib.util.find_spec(module) is None:
            raise EngineError(f"engine {name!r} needs the {module} package (pip install {pin})")
    return name


def weights_key(folder: Path) -> str:
    """The sha256 of the folder's ``model.keras`` as recorded in its manifest (or the local manifest
    written when packed weights were unpacked), else computed from the file."""
    from cvs_core.registry import LOCAL_MANIFEST, WEIGHTS, read_json, sha256_file

    folder = Path(folder)
    for name in ("manifest.json", LOCAL_MANIFEST):
        sha = read_json(folder / name).get("weights_sha256")
        if sha:
            return str(sha)
    return sha256_file(folder / WEIGHTS)


def cache_dir(folder: Path, key: str | None = None) -> Path:
    """Where this model's exported engine files live (created): ``<folder>/engine_cache/<key[:16]>``,
    or under ``$CVS_HOME/engine_cache`` when the model folder is not writable."""
    folder = Path(folder)
    key = (key or weights_key(folder))[:16]
    candidates = [folder / CACHE_DIRNAME / key]
    from cvs_core.registry import cvs_home

    candidates.append(cvs_home() / CACHE_DIRNAME / f"{folder.name}-{key}")
    for path in candidates:
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            return path
        except OSError:
            continue
    raise EngineError(f"no writable engine cache for {folder} (tried {', '.join(map(str, candidates))})")


def export_onnx(model, folder: Path, key: str | None = None) -> Path:
    """The model as ONNX in the engine cache (exported once per weights sha256, atomically).

    The input is ``(None, H, W, C)`` float32 — any batch size."""
    path = cache_dir(folder, key) / ONNX_FILE
    if path.is_file():
        return path
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-", dir=path.parent))
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(np.zeros((1, *model.input_shape[1:]), np.float32), training=False)  # export needs a called model
            model.export(str(tmp / ONNX_FILE), format="onnx", verbose=False)
        (tmp / ONNX_FILE).replace(path)
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises many types
        raise EngineError(f"could not export {folder} to ONNX: {exc.__class__.__name__}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = {"exported_s": round(time.perf_counter() - t0, 2), "input_shape": list(model.input_shape[1:])}
    (path.parent / "export.json").write_text(json.dumps(info))
    return path


def tf_runner(model, jit_compile: bool = False) -> Runner:
    """The Keras model in one ``tf.function`` with a batch-polymorphic input signature."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)

    @tf.autograph.experimental.do_not_convert
    def forward(x):
        return model(x, training=False)

    fn = tf.function(forward, input_signature=[spec], jit_compile=jit_compile)
    return lambda x: fn(x).numpy()


def onnx_runner(onnx_path: Path, threads: int | None = None) -> Runner:
    """ONNX Runtime CPU session on ``onnx_path`` (all graph optimisations, ``threads`` intra-op
    threads, default: every core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]

    return run


def openvino_runner(onnx_path: Path, threads: int | None = None) -> Runner:
    """OpenVINO CPU plugin on ``onnx_path``, float32 inference precision, latency hint; compiled
    blobs are cached next to the ONNX file (faster second start)."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
              "CACHE_DIR": str(Path(onnx_path).parent / "openvino")}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(str(onnx_path), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(x, np.float32)})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    return run


def default_max_batch() -> int:
    """The largest batch a model call gets by default (0 = no limit): 2 on a CPU-only TensorFlow.

    Measured on the 2-core machine (docs/benchmarks.md): per image, batches of 8 took 1.3–2× as long
    as batches of 1–2 for both demo models (activations of several 384×160 images overflow the
    caches); on a GPU large batches win, so there is no limit."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return 0
    import tensorflow as tf

    return 0 if tf.config.list_physical_devices("GPU") else 2


def make_runner(engine: str, model, folder: Path) -> Runner:
    """A runner for ``engine`` (see :data:`ENGINES`) on a loaded Keras model from ``folder``.

    ``onnx``/``openvino`` export the model once into the engine cache. Not thread-safe by itself:
    the Predictor calls it from its single inference thread."""
    engine = check_engine(engine)
    if engine in ("tf", "tf-xla"):
        return tf_runner(model, jit_compile=engine == "tf-xla")
    onnx_path = export_onnx(model, folder)
    try:
        runner = onnx_runner(onnx_path) if engine == "onnx" else openvino_runner(onnx_path)
    except Exception as exc:  # noqa: BLE001 - e.g. ONNX Runtime refusing a graph the exporter wrote
        raise EngineError(f"the {engine} engine cannot run this model's ONNX export "
                          f"({type(exc).__name__}: {str(exc)[:300]}); use engine='tf'") from exc
    check_against_keras(runner, model, engine)
    return runner


#: Largest |Δ| of the raw output an exported engine may show against Keras on the probe batch (the
#: working exports differ by ≈ 1e-6; a wrong one, e.g. OpenVINO on the integral head, by 6e-2).
EXPORT_TOLERANCE = 1e-3


def check_against_keras(runner: Runner, model, engine: str = "exported") -> None:
    """:class:`EngineError` when ``runner`` and the Keras ``model`` disagree on a fixed probe batch
    (two ``(H, W, C)`` inputs of seeded uniform noise in [−1, 1]) by more than
    :data:`EXPORT_TOLERANCE`: an export can load and run yet compute something else."""
    import keras

    probe = np.random.default_rng(0).uniform(-1, 1, size=(2, *model.input_shape[1:])).astype(np.float32)
    want = keras.ops.convert_to_numpy(model(probe, training=False))
    got = np.asarray(runner(probe), dtype=np.float32)
    diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
    if not diff <= EXPORT_TOLERANCE:
        raise EngineError(f"the {engine} engine's result differs from the Keras model's (max |Δ| {diff:.3g} "
                          f"> {EXPORT_TOLERANCE:g}, output {got.shape} vs {want.shape}); use engine='tf'")

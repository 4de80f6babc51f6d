"""Inference: a :class:`Predictor` loads a model folder once and finds landmarks on images.

Landmarks come back in the frame of the image passed in (inverse preprocessing), plus the ROI
frame, per-landmark confidence, the raw mask/heatmaps and timings.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cvs_core.codecs import codec_from_dict
from cvs_core.preprocess import (SEED_ROI_SCALE, PreprocessConfig, Preprocessed,
                                 invert_affine, preprocess)
from cvs_core.registry import load_keras_model, read_manifest, resolve_model
from cvs_core.tta import TestTimeShifts, combine, shifted_batch


@dataclass
class Prediction:
    """One image's result.

    landmarks: ``(19, 2)`` (x, y) in the input image's frame; NaN where nothing was found.
    landmarks_roi: ``(19, 2)`` in the ROI frame.
    confidence: ``(19,)`` in [0, 1] (NaN for regression models, which give none).
    raw: model output for this image — mask ``(h, w, 1)``, heatmaps ``(h, w, 19)`` or ``(38,)``.
    ms: timings in milliseconds: preprocess, inference, decode, total.
    """

    landmarks: np.ndarray
    landmarks_roi: np.ndarray
    confidence: np.ndarray
    raw: np.ndarray
    preprocessed: Preprocessed = field(repr=False)
    ms: dict
    model: str
    # --- auto ROI, millimetres, plausibility (cvs_core.roi) ---
    spacing_mm: float | None = None  # mm per input-image pixel (DICOM header or the user's value)
    roi_result: object = field(default=None, repr=False)  # roi.RoiResult when roi="auto"
    fit_ok: bool = True  # False: implausible C2–C4 outline or low confidence — do not trust the stage
    fit_quality: float = float("nan")  # mean landmark confidence in [0, 1] (NaN for regression models)
    fit_message: str = ""

    @property
    def landmarks_mm(self) -> np.ndarray | None:
        """``(19, 2)`` landmarks in mm from the input image's top-left pixel centre, or None without
        a pixel spacing."""
        return None if self.spacing_mm is None else self.landmarks * float(self.spacing_mm)

    def to_json_dict(self) -> dict:
        """Landmarks ``[[x, y], …]`` and confidences rounded to 0.001 (null where missing), timings."""
        from cvs_core.fileio import to_jsonable

        return {
            "landmarks": to_jsonable(self.landmarks, 3),
            "confidence": to_jsonable(np.ravel(self.confidence), 3),
            "model": self.model,
            "ms": round(self.ms["total"], 2),
            "timings_ms": to_jsonable(self.ms, 2),
            **self._extra_json(),
        }

    def to_text(self) -> str:
        """A table for the terminal: one line per landmark (name, x, y, confidence); ``—`` where
        a value is missing (a landmark not found, or no confidence from a regression model)."""
        from cvs_core.landmarks import NAMES

        def num(v, width: int, digits: int) -> str:
            return f"{v:{width}.{digits}f}" if np.isfinite(v) else "—".rjust(width)

        lines = [f"model {self.model}  ({self.ms['total']:.1f} ms)"]
        if self.roi_result is not None:
            r = self.roi_result.to_json_dict()
            lines.append(f"auto ROI box {r['box']} (confidence {r['confidence']:.2f}"
                         f"{', mirrored' if r['mirrored'] else ''})")
        mm = self.landmarks_mm
        for k, (name, (x, y), c) in enumerate(zip(NAMES, self.landmarks, np.ravel(self.confidence))):
            line = f"{name:6s} x={num(x, 8, 2)} y={num(y, 8, 2)} conf={num(c, 5, 3)}"
            if mm is not None:
                line += f"  ({num(mm[k, 0], 7, 2)}, {num(mm[k, 1], 7, 2)}) mm"
            lines.append(line)
        if self.fit_message:
            lines.append(("" if self.fit_ok else "WARNING: ") + self.fit_message)
        return "\n".join(lines)

    def _extra_json(self) -> dict:
        from cvs_core.fileio import to_jsonable

        out = {"fit": {"ok": bool(self.fit_ok), "quality": None if not np.isfinite(self.fit_quality)
                       else round(float(self.fit_quality), 4), "message": self.fit_message}}
        if self.spacing_mm is not None:
            out["spacing_mm"] = float(self.spacing_mm)
            out["landmarks_mm"] = to_jsonable(self.landmarks_mm, 4)
        if self.roi_result is not None:
            out["roi"] = self.roi_result.to_json_dict()
        return out

    def response_map_roi(self) -> np.ndarray | None:
        """The mask, or the max over the 19 heatmaps, warped onto the ROI: ``(H_roi, W_roi)`` in [0, 1].
        None for regression models."""
        if self.raw.ndim != 3:
            return None
        resp = self.raw.max(axis=-1) if self.raw.shape[-1] > 1 else self.raw[..., 0]
        resp = np.clip(resp.astype(np.float32), 0, 1)
        in_h, in_w = self.preprocessed.image.shape[:2]
        if resp.shape != (in_h, in_w):  # heatmaps on a coarser grid
            resp = cv2.resize(resp, (in_w, in_h), interpolation=cv2.INTER_LINEAR)
        model_to_roi = self.preprocessed.roi_affine @ invert_affine(self.preprocessed.affine)
        h, w = self.preprocessed.roi_image.shape[:2]
        return cv2.warpAffine(resp, model_to_roi[:2], (w, h), flags=cv2.INTER_LINEAR)


def configure_for_interactive_use() -> None:
    """Turn off TensorFlow's graph optimiser (Grappler) for this process.

    Inside a Streamlit server the first model call of every script run used to re-instantiate the
    compiled graph: Streamlit calls ``keras.backend.clear_session()`` after every script run, which
    empties TensorFlow's kernel cache (see ``docs/benchmarks.md``; the app must stop that). Each
    instantiation costs ≈ 1.4 s for InceptionResNetV2 on 2 cores with Grappler and ≈ 0.5 s without,
    so turning it off still shortens the warm-up at load time, while steady-state latency is the
    same (134 vs 131 ms). Call once, before loading models, in interactive servers only; training
    keeps the optimiser."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def _roi_override(config: PreprocessConfig, roi) -> PreprocessConfig:
    if roi is None or roi == "auto":  # "auto": the ROI is cut by cvs_core.roi before preprocessing
        return config
    scale = SEED_ROI_SCALE if roi == "seed" else 1.0
    return config.replace(roi=roi, roi_scale=scale)


# Background model loads (Predictor.load_async); its thread starts on the first submit.
_LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvs-load")


class Predictor:
    """A loaded model folder. Thread-safe; loads and warms up once.

    ``predict(image)`` takes a greyscale ``(H, W)`` array (uint8, or wider and range-scaled).
    ``engine`` picks the runtime of the model call (:data:`cvs_core.engines.ENGINES`): ``"tf"``
    (default), ``"tf-xla"``, ``"onnx"`` (ONNX Runtime) or ``"openvino"``; see :mod:`cvs_core.engines`.
    ``max_batch``: larger batches are fed to the model in chunks of at most this many model inputs
    (default :func:`cvs_core.engines.default_max_batch`: 2 on a CPU-only TensorFlow, else no limit),
    rounded down to whole images but never less than one image's test-time copies (5 inputs then).
    """

    def __init__(self, folder: Path, warmup: bool = True, engine: str = "tf", max_batch: int | None = None):
        from cvs_core.engines import check_engine, default_max_batch

        self.folder = Path(folder)
        self.engine = check_engine(engine)  # EngineError (a ValueError) for an unknown/unavailable one
        self.max_batch = default_max_batch() if max_batch is None else int(max_batch)
        self.manifest = read_manifest(self.folder)
        self.name = self.manifest.get("name", self.folder.name)
        self.config = PreprocessConfig.from_dict(self.manifest["preprocess"])
        self.codec = codec_from_dict(self.manifest["codec"])
        self.model = load_keras_model(self.folder)
        self.tta = TestTimeShifts.from_manifest(self.manifest)  # off unless the manifest opts in
        # Every model call runs on this one long-lived thread, so concurrent callers (several app
        # users) are serialised without sharing a lock across the model's internals.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cvs-infer-{self.folder.name}")
        self._call = self._compile()
        if warmup:
            shape = (1, *self.model.input_shape[1:])
            self._run(np.zeros(shape, np.float32))

    @classmethod
    def load(cls, name_or_dir: str | Path, warmup: bool = True, engine: str = "tf",
             max_batch: int | None = None) -> "Predictor":
        return cls(resolve_model(name_or_dir), warmup=warmup, engine=engine, max_batch=max_batch)

    @classmethod
    def load_async(cls, name_or_dir: str | Path, warmup: bool = True, engine: str = "tf"):
        """Start loading (and warming up) a model on a background thread; returns a
        ``concurrent.futures.Future`` whose ``result()`` is the :class:`Predictor` (or raises the
        load's error, e.g. ``ModelError``). Loads queue on one shared thread, one at a time, so two
        models do not fight for the cores; poll ``future.done()`` to show progress meanwhile."""
        return _LOADER.submit(cls.load, name_or_dir, warmup, engine)

    @property
    def family(self) -> str:
        """``"unet"`` or ``"inception"`` (``cvs_core.architectures.family_of`` the manifest)."""
        from cvs_core.architectures import family_of

        return family_of(self.manifest)

    def _compile(self):
        import keras

        if self.engine != "tf":
            from cvs_core.engines import make_runner

            return make_runner(self.engine, self.model, self.folder)

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            spec = tf.TensorSpec((None, *self.model.input_shape[1:]), tf.float32)
            model = self.model

            @tf.autograph.experimental.do_not_convert
            def forward(x):
                return model(x, training=False)

            fn = tf.function(forward, input_signature=[spec])
            return lambda x: fn(x).numpy()
        return self.model.predict_on_batch  # compiled (jit) by Keras on the other backends

    def _run(self, batch: np.ndarray, copies: int = 1) -> np.ndarray:
        """``(N, H, W, C)`` float32 → the model's output for the batch, in chunks of about ``max_batch``.

        ``copies``: consecutive inputs that belong to one image (test-time shifts); a chunk always
        holds whole images, so the copies of one image share a model call (measured: the
        InceptionResNetV2's 5 copies in one call 400 ms, in chunks of 2 550 ms; docs/benchmarks.md)."""
        copies = max(1, int(copies))
        step = len(batch) if not self.max_batch else max(1, self.max_batch // copies) * copies

        def call():
            parts = [np.asarray(self._call(batch[i:i + step]), dtype=np.float32) for i in range(0, len(batch), step)]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        return self._worker.submit(call).result()

    def predict(self, image: np.ndarray, roi=None, spacing_mm: float | None = None) -> Prediction:
        """One greyscale image ``(H, W)`` → :class:`Prediction`. ``roi`` overrides the manifest's
        (``"auto"``: find C2–C4 in a full cephalogram, :mod:`cvs_core.roi`); ``spacing_mm`` (mm per
        input pixel) gives ``landmarks_mm`` and fixes the auto ROI's scale."""
        return self.predict_batch([image], roi=roi, spacing_mm=spacing_mm)[0]

    def auto_roi(self):
        """The :class:`~cvs_core.roi.AutoRoi` finder (this model when it is a heatmap U-Net, else the
        shipped ``unet_heatmap``), created once."""
        finder = getattr(self, "_auto_roi", None)
        if finder is None:
            from cvs_core.roi import AutoRoi, default_localizer

            finder = self._auto_roi = AutoRoi(self if self.codec.kind == "heatmap" else default_localizer())
        return finder

    def predict_batch(self, images: list[np.ndarray], roi=None, spacing_mm: float | None = None,
                      tta: bool = True) -> list[Prediction]:
        """Several greyscale images → predictions, one model call for the whole batch. ``tta``: apply
        the model's test-time shifts when its manifest has them (:mod:`cvs_core.tta`; ``raw`` and
        ``confidence`` are then the unshifted copy's); False = one plain model call per image."""
        from cvs_core.roi import RoiResult, fit_check, preprocess_with_roi

        if spacing_mm is not None and not (np.isfinite(spacing_mm) and spacing_mm > 0):
            raise ValueError(f"pixel spacing must be > 0 mm/px, got {spacing_mm}")
        config = self.config if isinstance(roi, RoiResult) else _roi_override(self.config, roi)
        t0 = time.perf_counter()
        if roi == "auto":
            found = [self.auto_roi().find(img, spacing_mm) for img in images]
        elif isinstance(roi, RoiResult):  # a placed ROI (roi.roi_around: a box drawn or derived by hand)
            found = [roi] * len(images)
        else:
            found = [None] * len(images)
        t_roi = time.perf_counter()
        pres = [preprocess(img, config) if f is None else preprocess_with_roi(img, f, config)
                for img, f in zip(images, found)]
        t1 = time.perf_counter()
        shifts = self.tta if tta else TestTimeShifts()
        k = len(shifts.offsets)
        raw_all = self._run(shifted_batch(np.stack([p.image for p in pres]), shifts), copies=k)
        t2 = time.perf_counter()
        decoded_all = [self.codec.decode(r) for r in raw_all]
        points = combine(np.stack([pts for pts, _ in decoded_all]), shifts)
        raw = raw_all[::k]
        decoded = [(pts, conf) for pts, (_, conf) in zip(points, decoded_all[::k])]
        t3 = time.perf_counter()
        n = len(images)
        out = []
        for pre, r, (pts_model, conf), f in zip(pres, raw, decoded, found):
            ms = {"preprocess": (t1 - t0) * 1e3 / n, "inference": (t2 - t1) * 1e3 / n,
                  "decode": (t3 - t2) * 1e3 / n, "total": (t3 - t0) * 1e3 / n}
            if f is not None:
                ms["auto_roi"] = (t_roi - t0) * 1e3 / n
            pts_roi = pre.model_to_roi(pts_model)
            ok, quality, message = fit_check(pts_roi, conf, f)
            out.append(Prediction(landmarks=pre.to_original(pts_model), landmarks_roi=pts_roi,
                                  confidence=conf, raw=r, preprocessed=pre, ms=ms, model=self.name,
                                  spacing_mm=None if spacing_mm is None else float(spacing_mm), roi_result=f,
                                  fit_ok=ok, fit_quality=quality, fit_message=message))
        return out


LOW_CONFIDENCE = 0.2  # median heatmap peak below this: the model found no vertebrae it recognises


def prediction_warnings(image: np.ndarray, prediction: Prediction) -> list[str]:
    """Plain-language warnings to show next to a prediction (and its CVM stage).

    image: the greyscale ``(H, W)`` input as given to :meth:`Predictor.predict`. Flags a blank or
    uniform image (grey-level standard deviation under 1, e.g. an all-black upload) and, for
    heatmap/mask models, a median landmark confidence under ``LOW_CONFIDENCE`` (on the real public
    samples the U-Net's median is ≈ 0.7; on blank, uniform grey or noise images ≈ 0.01). Regression
    models give no confidence, so only the blank check applies to them. Empty list = nothing to flag."""
    out = []
    arr = np.asarray(image)
    if arr.size and float(np.nanstd(arr.astype(np.float32))) < 1.0:
        out.append("the image is blank or uniform: the landmarks and the stage derived from them are meaningless")
    conf = np.asarray(prediction.confidence, dtype=np.float64)
    if conf.size and np.isfinite(conf).any():
        median = float(np.nanmedian(conf))
        if median < LOW_CONFIDENCE:
            out.append(f"low confidence (median {median:.2f} < {LOW_CONFIDENCE}): the model does not recognise "
                       f"vertebrae here — check the image and the ROI before reading the landmarks or stage")
    return out

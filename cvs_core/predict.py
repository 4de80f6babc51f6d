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

    def to_json_dict(self) -> dict:
        def clean(a):
            return [None if not np.isfinite(v) else round(float(v), 3) for v in np.ravel(a)]
        pts = self.landmarks
        return {
            "landmarks": [[None if not np.isfinite(v) else round(float(v), 3) for v in p] for p in pts],
            "confidence": clean(self.confidence),
            "model": self.model,
            "ms": round(self.ms["total"], 2),
            "timings_ms": {k: round(v, 2) for k, v in self.ms.items()},
        }

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

    Inside a Streamlit server the first model call of every script run re-instantiates the
    compiled graph (cause not found; measured with AppTest and in a browser), which with Grappler
    costs ≈ 1.4 s for InceptionResNetV2 on 2 cores and without it ≈ 0.5 s, while steady-state
    latency is the same (134 vs 131 ms). Call once, before loading models, in interactive servers
    only; training keeps the optimiser."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def _roi_override(config: PreprocessConfig, roi) -> PreprocessConfig:
    if roi is None:
        return config
    scale = SEED_ROI_SCALE if roi == "seed" else 1.0
    return config.replace(roi=roi, roi_scale=scale)


class Predictor:
    """A loaded model folder. Thread-safe; loads and warms up once.

    ``predict(image)`` takes a greyscale ``(H, W)`` array (uint8, or wider and range-scaled).
    """

    def __init__(self, folder: Path, warmup: bool = True):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.name = self.manifest.get("name", self.folder.name)
        self.config = PreprocessConfig.from_dict(self.manifest["preprocess"])
        self.codec = codec_from_dict(self.manifest["codec"])
        self.model = load_keras_model(self.folder)
        # Every model call runs on this one long-lived thread, so concurrent callers (several app
        # users) are serialised without sharing a lock across the model's internals.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cvs-infer-{self.folder.name}")
        self._call = self._compile()
        if warmup:
            shape = (1, *self.model.input_shape[1:])
            self._run(np.zeros(shape, np.float32))

    @classmethod
    def load(cls, name_or_dir: str | Path, warmup: bool = True) -> "Predictor":
        return cls(resolve_model(name_or_dir), warmup=warmup)

    @property
    def family(self) -> str:
        return "unet" if self.codec.kind in ("mask", "heatmap") else "inception"

    def _compile(self):
        import keras

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

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._worker.submit(lambda: np.asarray(self._call(batch), dtype=np.float32)).result()

    def predict(self, image: np.ndarray, roi=None) -> Prediction:
        """One greyscale image ``(H, W)`` → :class:`Prediction`. ``roi`` overrides the manifest's."""
        return self.predict_batch([image], roi=roi)[0]

    def predict_batch(self, images: list[np.ndarray], roi=None) -> list[Prediction]:
        """Several greyscale images → predictions, one model call for the whole batch."""
        config = _roi_override(self.config, roi)
        t0 = time.perf_counter()
        pres = [preprocess(img, config) for img in images]
        t1 = time.perf_counter()
        raw = self._run(np.stack([p.image for p in pres]))
        t2 = time.perf_counter()
        decoded = [self.codec.decode(r) for r in raw]
        t3 = time.perf_counter()
        n = len(images)
        out = []
        for pre, r, (pts_model, conf) in zip(pres, raw, decoded):
            ms = {"preprocess": (t1 - t0) * 1e3 / n, "inference": (t2 - t1) * 1e3 / n,
                  "decode": (t3 - t2) * 1e3 / n, "total": (t3 - t0) * 1e3 / n}
            out.append(Prediction(landmarks=pre.to_original(pts_model), landmarks_roi=pre.model_to_roi(pts_model),
                                  confidence=conf, raw=r, preprocessed=pre, ms=ms, model=self.name))
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

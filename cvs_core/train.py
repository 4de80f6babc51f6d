"""Training: presets, a streaming keypoint-consistent data pipeline, callbacks, resume, tf.distribute.

A run folder holds ``config.json``, ``metrics.csv`` (one row per epoch, readable while training),
``status.json``, ``log.txt`` (written by the caller), ``checkpoints/{best,last}.keras``,
``tensorboard/`` and, at the end, ``model/`` (a model folder with manifest).

Durability: every checkpoint is written to a temporary file and ``os.replace``-d; the best one is
``checkpoints/best-eNNNN.keras`` whose score and epoch are committed in ``checkpoints/best.json``
(:func:`commit_best`), so a run killed at any moment resumes (``resume=True``) with its true best and
exports exactly that checkpoint with that score.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import cv2
import numpy as np

from cvs_core import architectures
from cvs_core.architectures import (PRESETS, get_arch, improved_inception_preprocess,  # noqa: F401 (re-exported)
                                    improved_unet_preprocess)
from cvs_core.metrics import validation_mre
from cvs_core.preprocess import PreprocessConfig, apply_affine, preprocess
from cvs_core.registry import read_json, write_json_atomic

# The architecture names, for callers of the old tuple; the table itself is cvs_core.architectures.
ARCHITECTURES = tuple(architectures.ARCHITECTURES)


@dataclass
class TrainConfig:
    """Everything a training run needs; JSON round-trips. ``None`` fields take the preset default."""

    model: str = "unet_heatmap"
    preset: str = "improved"
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    csv: str | list[str] | None = None     # study-format CSV(s), landmarks in the images' frame
    images: str | list[str] | None = None  # folder(s) of the CSV's images, one per CSV
    phantoms: int = 0                 # phantoms rendered on the fly per epoch (0 = none)
    val_phantoms: int = 0             # fixed held-out phantoms for validation
    val_fraction: float = 0.2         # share of CSV rows held out when there are no val phantoms
    repeat_csv: int | list[int] = 1   # each CSV image appears this many times (augmented) per epoch
    seed: int = 0
    augment: bool | None = None
    rotation_deg: float = 8.0
    scale_range: float = 0.08
    shift_px: float = 12.0
    preprocess: dict | None = None    # PreprocessConfig dict; None → preset default
    builder_kwargs: dict = field(default_factory=dict)
    heatmap_sigma: float = 2.0
    distribute: str = "none"          # none | mirrored | multiworker
    mixed_precision: str = "auto"     # auto (on GPU) | on | off
    early_stopping_patience: int = 15
    reduce_lr_patience: int = 5
    steps_per_epoch: int | None = None
    time_limit_s: float | None = None  # stop (keeping the best checkpoint) after this long
    workers: int = 1                  # threads preparing batches
    init_from: str | None = None      # model folder (or name) whose weights start this run (fine-tuning)
    augment_profile: str = "standard"  # standard (the fields above) | realistic (augment_realistic)
    wide_phantoms: float = 0.0        # share of the rendered training phantoms cut from wide phantoms
    loss: str | None = None           # None: the architecture's; or a key of architectures.LOSSES (mse, wing, smooth_l1)
    lr_schedule: str | None = None    # None/"plateau": halve on plateau (today's); "warmup_cosine"
    warmup_epochs: int = 2            # linear warm-up epochs of "warmup_cosine"
    name: str | None = None

    def __post_init__(self):
        if self.model not in architectures.ARCHITECTURES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {sorted(architectures.ARCHITECTURES)}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {PRESETS}")
        if self.distribute not in ("none", "mirrored", "multiworker"):
            raise ValueError(f"distribute must be none, mirrored or multiworker, got {self.distribute!r}")
        if self.augment_profile not in AUGMENT_PROFILES:
            raise ValueError(f"augment_profile must be one of {AUGMENT_PROFILES}, got {self.augment_profile!r}")
        if not 0.0 <= self.wide_phantoms <= 1.0:
            raise ValueError(f"wide_phantoms is a share of the phantoms, 0..1; got {self.wide_phantoms}")
        if self.loss is not None and self.loss not in architectures.LOSSES:
            raise ValueError(f"loss must be one of {sorted(architectures.LOSSES)} (or unset), got {self.loss!r}")
        if self.csv is None and self.phantoms <= 0:
            raise ValueError("no training data: give a CSV (+ image folder) or phantoms > 0")
        if self.csv is not None and self.images is None:
            raise ValueError("--csv needs --images (the folder holding the CSV's images)")
        if self.csv is not None and len(_as_list(self.csv)) != len(_as_list(self.images)):
            raise ValueError("give one image folder per CSV")
        defaults = preset_defaults(self.model, self.preset)
        for key, value in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.lr_schedule not in (None, "plateau", "warmup_cosine"):
            raise ValueError(f"lr_schedule must be plateau or warmup_cosine, got {self.lr_schedule!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs and batch size must be ≥ 1 and lr > 0")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        d = json.loads(text)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        d = asdict(self)
        d.update(changes)
        return TrainConfig(**d)

    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocess)


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def preset_defaults(model: str, preset: str) -> dict:
    """The study's settings (``seed``) or ours (``improved``) for an architecture: TrainConfig
    fields (epochs, lr, batch_size, augment, preprocess dict), from ``architectures.ARCHITECTURES``."""
    return get_arch(model).preset(preset)


def make_codec(config: TrainConfig):
    """The architecture's codec for this run's model input size and heatmap σ."""
    return get_arch(config.model).make_codec(config.preprocess_config().input_size,
                                             heatmap_sigma=config.heatmap_sigma)


def builder_kwargs(config: TrainConfig) -> dict:
    """Builder arguments with every default spelled out, so the manifest pins the architecture."""
    import inspect

    kwargs = dict(config.builder_kwargs)
    kwargs.setdefault("input_size", tuple(config.preprocess_config().input_size))
    for name, param in inspect.signature(get_arch(config.model).build_fn).parameters.items():
        if name != "imagenet" and param.default is not inspect.Parameter.empty:
            kwargs.setdefault(name, param.default)
    return kwargs


def loss_for(config: TrainConfig):
    """``(loss, metrics)`` for ``model.compile``: the run's ``loss`` choice when set, else the
    architecture's entry."""
    if getattr(config, "loss", None):
        return architectures.LOSSES[config.loss]()
    return get_arch(config.model).loss()


def warmup_cosine_lr(epoch: int, base_lr: float, epochs: int, warmup_epochs: int, floor: float = 0.01) -> float:
    """Learning rate of epoch ``epoch`` (0-based): linear warm-up from ``base_lr/warmup`` to ``base_lr``
    over ``warmup_epochs``, then cosine decay to ``floor·base_lr`` at the last epoch."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    span = max(1, epochs - warmup_epochs - 1)
    t = min(1.0, (epoch - warmup_epochs) / span)
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def _warmup_cosine_class():
    import keras

    class WarmupCosine(keras.callbacks.Callback):
        """Sets the learning rate by :func:`warmup_cosine_lr`: during the warm-up epochs per batch
        (linear from ~0, so a fresh Adam does not take full-size steps on a fine-tuned model), then at
        each epoch start. With a ``time_limit_s`` the cosine runs over whichever ends first, the
        epochs or the time (the progress is the larger of the two fractions), so a time-boxed run
        still anneals."""

        def __init__(self, config):
            super().__init__()
            self.config = config
            self.t0 = time.time()
            self.epoch = 0

        def on_train_batch_begin(self, batch, logs=None):
            c = self.config
            steps = (self.params or {}).get("steps") or c.steps_per_epoch
            if self.epoch < c.warmup_epochs and steps:
                done = self.epoch * steps + batch + 1
                self.model.optimizer.learning_rate = c.lr * min(1.0, done / (c.warmup_epochs * steps))

        def on_epoch_begin(self, epoch, logs=None):
            c = self.config
            self.epoch = epoch
            progress = epoch / max(1, c.epochs - 1)
            if c.time_limit_s:
                progress = max(progress, (time.time() - self.t0) / c.time_limit_s)
            virtual = c.warmup_epochs + progress * max(1, c.epochs - c.warmup_epochs - 1)
            e = epoch if epoch < c.warmup_epochs else max(virtual, c.warmup_epochs)
            self.model.optimizer.learning_rate = warmup_cosine_lr(e, c.lr, c.epochs, c.warmup_epochs)

    return WarmupCosine


def WarmupCosine(config):  # noqa: N802 (a class made on first use, so keras is imported lazily)
    """The warm-up + cosine learning-rate callback for ``config`` (see :func:`warmup_cosine_lr`)."""
    return _warmup_cosine_class()(config)


def schedule_callbacks(config: TrainConfig, monitor_key: str) -> list:
    """The learning-rate callbacks of a run: ReduceLROnPlateau (today's default) or a warm-up +
    cosine ``LearningRateScheduler`` (``lr_schedule="warmup_cosine"``)."""
    import keras
    if config.lr_schedule == "warmup_cosine":
        return [WarmupCosine(config)]
    return [keras.callbacks.ReduceLROnPlateau(monitor=monitor_key, mode="min", factor=0.5,
                                              patience=config.reduce_lr_patience, min_lr=1e-6)]


# --- data ---------------------------------------------------------------------------------------

@dataclass
class Sample:
    """A training item before preprocessing: a path (read lazily) or a phantom seed, and landmarks
    ``(19, 2)`` in that image's frame."""

    landmarks: np.ndarray
    path: str | None = None
    phantom_seed: int | None = None
    phantom_stage: int | None = None
    wide: bool = False  # phantom cut from a wide phantom with a jittered box (synth.wide_phantom_roi)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        if self.path is not None:
            image = cv2.imread(self.path, cv2.IMREAD_GRAYSCALE)
            if image is None:
                from cvs_core.imaging import read_image
                image = read_image(self.path).as_uint8()
            return image, self.landmarks
        from cvs_core.synth import render_phantom, wide_phantom_roi
        if self.wide:
            # moderate box jitter: the realistic profile's affine comes on top of it
            ph = wide_phantom_roi(self.phantom_seed, stage=self.phantom_stage, scale_range=0.2, shift_frac=(0.08, 0.1))
            return ph.image, ph.landmarks
        ph = render_phantom(self.phantom_seed, stage=self.phantom_stage)
        return ph.image, ph.landmarks


def random_affine(rng: np.random.Generator, shape_hw, rotation_deg, scale_range, shift_px) -> np.ndarray:
    """2×3 affine: rotation and scale about the image centre, then a shift (pixel-centre frame)."""
    h, w = shape_hw
    angle = rng.uniform(-rotation_deg, rotation_deg)
    scale = 1.0 + rng.uniform(-scale_range, scale_range)
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    m[:, 2] += rng.uniform(-shift_px, shift_px, 2)
    return m


def augment_sample(rng: np.random.Generator, image: np.ndarray, landmarks: np.ndarray, config: TrainConfig):
    """Keypoint-consistent augmentation: the same affine moves the image and the landmarks;
    then gamma, contrast and noise. Returns ``(image uint8 (H, W), landmarks (19, 2))``."""
    m = random_affine(rng, image.shape, config.rotation_deg, config.scale_range, config.shift_px)
    warped = cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT_101)
    pts = apply_affine(m, landmarks)
    x = warped.astype(np.float32) / 255.0
    x = np.power(x, rng.uniform(0.75, 1.33))
    x = (x - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.06, 0.06)
    x += rng.normal(0, rng.uniform(0, 0.03), x.shape).astype(np.float32)
    return np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8), pts


AUGMENT_PROFILES = ("standard", "realistic")


@dataclass(frozen=True)
class RealisticAugment:
    """Ranges of the ``realistic`` augmentation profile (issue 8: images from other clinics).

    Geometry (one affine, landmarks follow it): rotation ±``rotation_deg``, scale 1 ± ``scale_range``,
    shift ±``shift_frac`` of (width, height), so C1 or C5–C6 come into view and the vertebrae appear
    at 0.65–1.35× their size. Appearance, each with its probability: clinic CLAHE, gamma, exposure,
    blur, unsharp masking, noise with a realistic spectrum (signal-dependent white + correlated
    low-frequency), burned-in text, rulers, collimator edges, cervical collars, JPEG compression."""

    rotation_deg: float = 15.0
    scale_range: float = 0.35
    shift_frac: tuple[float, float] = (0.12, 0.18)
    max_outside_px: float = 20.0   # redraw the affine when a landmark would land further outside
    p_clahe: float = 0.35
    p_blur: float = 0.5
    p_unsharp: float = 0.25
    p_text: float = 0.35
    p_ruler: float = 0.25
    p_collimator: float = 0.35
    p_collar: float = 0.15
    p_jpeg: float = 0.3


REALISTIC = RealisticAugment()


def realistic_affine(rng: np.random.Generator, shape_hw, landmarks: np.ndarray,
                     params: RealisticAugment = REALISTIC) -> np.ndarray:
    """2×3 affine of the realistic profile for an image ``(H, W)``: rotation and scale about the
    centre, then a shift; redrawn (up to 20 times) while a landmark would fall more than
    ``max_outside_px`` outside the image. ``landmarks`` ``(19, 2)`` may hold NaN (ignored)."""
    h, w = shape_hw
    pts = np.asarray(landmarks, np.float64)
    m = None
    for _ in range(20):
        angle = rng.uniform(-params.rotation_deg, params.rotation_deg)
        scale = 1.0 + rng.uniform(-params.scale_range, params.scale_range)
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
        m[:, 2] += rng.uniform(-1, 1, 2) * np.array(params.shift_frac) * np.array([w, h])
        q = apply_affine(m, pts)
        q = q[np.isfinite(q).all(axis=1)]
        lim = params.max_outside_px
        if q.size == 0 or ((q > -lim).all() and (q[:, 0] < w - 1 + lim).all() and (q[:, 1] < h - 1 + lim).all()):
            break
    return m


def _spectral_noise(rng: np.random.Generator, shape_hw) -> np.ndarray:
    """Zero-mean noise ``(H, W)`` float32 with a falling spectrum: white + blobs at 2, 6 and 20 px."""
    h, w = shape_hw
    out = rng.standard_normal((h, w)).astype(np.float32) * rng.uniform(0.3, 1.0)
    for factor, amp in ((2, rng.uniform(0.0, 0.8)), (6, rng.uniform(0.0, 0.6)), (20, rng.uniform(0.0, 0.5))):
        small = rng.standard_normal((h // factor + 2, w // factor + 2)).astype(np.float32)
        out += amp * cv2.resize(small, (w + 2 * factor, h + 2 * factor), interpolation=cv2.INTER_CUBIC)[factor:factor + h, factor:factor + w]
    return out


def _burn_text(rng, img: np.ndarray) -> None:
    h, w = img.shape
    chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 :/.-"
    for _ in range(int(rng.integers(1, 4))):
        text = "".join(rng.choice(list(chars), int(rng.integers(3, 14))))
        org = (int(rng.uniform(0, w * 0.7)), int(rng.choice([rng.uniform(10, 60), rng.uniform(h - 40, h - 5)])))
        cv2.putText(img, text, org, int(rng.choice([0, 1, 2, 3, 4])), float(rng.uniform(0.3, 0.9)),
                    int(rng.choice([255, 230, 0])), int(rng.integers(1, 3)), cv2.LINE_AA)


def _draw_ruler(rng, img: np.ndarray) -> None:
    h, w = img.shape
    value = int(rng.choice([255, 220, 30]))
    step = float(rng.uniform(6.0, 16.0))
    if rng.random() < 0.6:  # vertical ruler near an edge
        x = float(rng.choice([rng.uniform(3, 30), rng.uniform(w - 30, w - 3)]))
        y0, y1 = sorted(rng.uniform(0, h, 2))
        cv2.line(img, (int(x), int(y0)), (int(x), int(y1)), value, int(rng.integers(1, 3)), cv2.LINE_AA)
        for k, y in enumerate(np.arange(y0, y1, step)):
            length = 10 if k % 5 == 0 else 5
            cv2.line(img, (int(x), int(y)), (int(x + length), int(y)), value, 1, cv2.LINE_AA)
    else:
        y = float(rng.choice([rng.uniform(3, 40), rng.uniform(h - 40, h - 3)]))
        x0, x1 = sorted(rng.uniform(0, w, 2))
        cv2.line(img, (int(x0), int(y)), (int(x1), int(y)), value, int(rng.integers(1, 3)), cv2.LINE_AA)
        for k, x in enumerate(np.arange(x0, x1, step)):
            length = 10 if k % 5 == 0 else 5
            cv2.line(img, (int(x), int(y)), (int(x), int(y - length)), value, 1, cv2.LINE_AA)


def _collimator(rng, x: np.ndarray) -> np.ndarray:
    """Blend one or two shutter edges (flat bright or dark bands with a soft edge) into ``x`` in [0, 1]."""
    h, w = x.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(int(rng.integers(1, 3))):
        side = int(rng.integers(4))
        depth = float(rng.uniform(3, 0.18 * (w if side < 2 else h)))
        coord = (xs, w - 1 - xs, ys, h - 1 - ys)[side]
        tilt = rng.uniform(-0.08, 0.08) * ((ys, ys, xs, xs)[side] - (h if side < 2 else w) / 2)
        band = 1.0 / (1.0 + np.exp(-np.clip((depth + tilt - coord) / rng.uniform(0.5, 3.0), -30, 30)))
        level = float(rng.choice([rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.1)]))
        x = x * (1 - band) + level * band
    return x


def _collar(rng, x: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """A cervical collar: a slanted band of extra attenuation with bright rims and rivets across the
    lower neck (below C3 where landmarks are known)."""
    h, w = x.shape
    finite = landmarks[np.isfinite(landmarks).all(axis=1)]
    y_top = float(np.median(finite[:, 1])) + rng.uniform(-20, 80) if finite.size else rng.uniform(0.4, 0.8) * h
    thick = rng.uniform(40, 160)
    slope = rng.uniform(-0.3, 0.1)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    top = y_top + slope * (xs - w / 2)
    inside = 1.0 / (1.0 + np.exp(-np.clip((ys - top) / 2.0, -30, 30))) * \
        1.0 / (1.0 + np.exp(-np.clip((top + thick - ys) / 2.0, -30, 30)))
    rims = np.exp(-((ys - top) / 1.5) ** 2) + np.exp(-((ys - top - thick) / 1.5) ** 2)
    x = x + inside * rng.uniform(0.06, 0.2) + rims * rng.uniform(0.05, 0.2)
    for _ in range(int(rng.integers(0, 4))):
        cx = rng.uniform(0, w)
        cy = y_top + slope * (cx - w / 2) + rng.uniform(0.2, 0.8) * thick
        x = x + 0.5 * np.exp(-(((xs - cx) ** 2 + (ys - cy) ** 2) / rng.uniform(4, 25)))
    return x


def augment_realistic(rng: np.random.Generator, image: np.ndarray, landmarks: np.ndarray, config=None,
                      params: RealisticAugment = REALISTIC, photometric: bool = True):
    """The ``realistic`` augmentation profile (:class:`RealisticAugment`): one affine moves the
    image and the landmarks exactly (border: reflected, or a constant like an image edge), then the
    appearance of another clinic's radiograph. ``config`` is unused (same signature as
    :func:`augment_sample`). Returns ``(image uint8 (H, W), landmarks (19, 2))``."""
    h, w = image.shape[:2]
    m = realistic_affine(rng, (h, w), landmarks, params)
    border = (cv2.BORDER_REFLECT_101, 0) if rng.random() < 0.6 else (cv2.BORDER_CONSTANT, int(rng.choice([0, 255, 128])))
    warped = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=border[0], borderValue=border[1])
    pts = apply_affine(m, landmarks)
    if not photometric:
        return warped, pts
    img = warped
    if rng.random() < params.p_clahe:  # the clinic's own contrast processing
        tiles = int(rng.integers(2, 9))
        img = cv2.createCLAHE(clipLimit=float(rng.uniform(1.0, 4.0)), tileGridSize=(tiles, tiles)).apply(img)
    x = img.astype(np.float32) / 255.0
    if rng.random() < params.p_collar:
        x = _collar(rng, x, pts)
    x = np.clip(x, 0.0, 1.0) ** rng.uniform(0.6, 1.6)                             # gamma
    x = (x - 0.5) * rng.uniform(0.65, 1.35) + 0.5 + rng.uniform(-0.12, 0.12)       # exposure
    if rng.random() < params.p_blur:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.8))
    if rng.random() < params.p_unsharp:
        x = x + rng.uniform(0.3, 1.5) * (x - cv2.GaussianBlur(x, (0, 0), rng.uniform(2.0, 8.0)))
    sigma = rng.uniform(0.0, 0.045)
    x = x + _spectral_noise(rng, (h, w)) * sigma * np.sqrt(np.clip(x, 0.02, 1.0) / 0.5)
    if rng.random() < params.p_collimator:
        x = _collimator(rng, np.clip(x, 0.0, 1.0))
    img = np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < params.p_text:
        _burn_text(rng, img)
    if rng.random() < params.p_ruler:
        _draw_ruler(rng, img)
    if rng.random() < params.p_jpeg:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(35, 90))])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return img, pts


def encode_sample(image, landmarks, pre_config: PreprocessConfig, codec):
    """Preprocess an image and encode its landmarks: ``(model input, target)``."""
    pre = preprocess(image, pre_config)
    return pre.image, codec.encode(pre.to_model(landmarks))


def load_csv_samples(csv_path: str, image_dir: str) -> list[Sample]:
    from cvs_core.annotations import read_annotations

    # Landmarks slightly outside the image (e.g. C4 below a 600-px ROI) are kept: the codecs handle them.
    aset = read_annotations(csv_path, image_dir=image_dir, missing_images="skip", check_bounds="warn")
    return [Sample(landmarks=aset.landmarks[i], path=str(Path(image_dir) / name))
            for i, name in enumerate(aset.names)]


def _keras_dataset_base():
    import keras
    return keras.utils.PyDataset


class LandmarkSequence(_keras_dataset_base()):
    """Batches ``(x (B, h, w, c), y (B, …))`` streamed from disk / rendered phantoms.

    Phantoms used for training get fresh seeds every epoch (``epoch_offset``), so the model
    never sees the same phantom twice; validation sequences are fixed.
    """

    def __init__(self, samples: list[Sample], config: TrainConfig, codec, augment: bool, shuffle: bool,
                 seed: int, fresh_phantoms: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.samples = samples
        self.config = config
        self.pre_config = config.preprocess_config()
        self.codec = codec
        self.augment = augment
        self.shuffle = shuffle
        self.seed = seed
        self.fresh_phantoms = fresh_phantoms
        self.epoch = 0
        self._order = self._make_order()

    def _epoch_samples(self) -> list[Sample]:
        n_wide = int(round(100 * getattr(self.config, "wide_phantoms", 0.0)))
        phantoms = [Sample(landmarks=None, phantom_seed=self.seed * 1_000_003 + self.epoch * 100_003 + i,
                           phantom_stage=i % 6 + 1, wide=(i * 37) % 100 < n_wide) for i in range(self.fresh_phantoms)]
        return self.samples + phantoms

    def _make_order(self):
        self._current = self._epoch_samples()
        order = np.arange(len(self._current))
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        return order

    def __len__(self):
        return max(1, math.ceil(len(self._order) / self.config.batch_size))

    def __getitem__(self, index):
        idx = self._order[index * self.config.batch_size:(index + 1) * self.config.batch_size]
        xs, ys = [], []
        for i in idx:
            image, pts = self._current[i].load()
            if self.augment:
                rng = np.random.default_rng([self.seed, self.epoch, int(i), 7])
                augment_fn = augment_realistic if self.config.augment_profile == "realistic" else augment_sample
                image, pts = augment_fn(rng, image, pts, self.config)
            x, y = encode_sample(image, pts, self.pre_config, self.codec)
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys)

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._make_order()


def build_datasets(config: TrainConfig, codec):
    """``(train LandmarkSequence, val LandmarkSequence | None, data summary dict)``."""
    rng = np.random.default_rng(config.seed)
    train_samples: list[Sample] = []
    val_samples: list[Sample] = []
    summary = {"csv": config.csv, "images": config.images, "phantoms_per_epoch": config.phantoms,
               "val_phantoms": config.val_phantoms}
    csvs = _as_list(config.csv) if config.csv else []
    repeats = _as_list(config.repeat_csv) * (len(csvs) if not isinstance(config.repeat_csv, list) else 1)
    for csv_path, image_dir, repeat in zip(csvs, _as_list(config.images), repeats):
        csv_samples = load_csv_samples(csv_path, image_dir)
        if not csv_samples:
            raise ValueError(f"{csv_path}: no usable rows (all images missing?)")
        order = rng.permutation(len(csv_samples))
        n_val = 0 if config.val_phantoms > 0 or len(csv_samples) < 5 else max(1, int(len(csv_samples) * config.val_fraction))
        val_samples += [csv_samples[i] for i in order[:n_val]]
        train_samples += [csv_samples[i] for i in order[n_val:]] * max(1, int(repeat))
        summary.setdefault("csv_sources", []).append({"csv": str(csv_path), "rows": len(csv_samples),
                                                       "val_rows": n_val, "repeat": int(repeat)})
    if config.val_phantoms:
        val_samples += [Sample(landmarks=None, phantom_seed=10_000_000 + config.seed * 1000 + i,
                               phantom_stage=i % 6 + 1) for i in range(config.val_phantoms)]
    train = LandmarkSequence(train_samples, config, codec, augment=config.augment, shuffle=True,
                             seed=config.seed, fresh_phantoms=config.phantoms, workers=config.workers,
                             use_multiprocessing=False)
    val = (LandmarkSequence(val_samples, config, codec, augment=False, shuffle=False, seed=config.seed)
           if val_samples else None)
    summary.update(n_train_per_epoch=len(train._current), n_val=len(val_samples))
    return train, val, summary


# --- callbacks ----------------------------------------------------------------------------------

def _callbacks_module():
    import keras
    return keras.callbacks.Callback


class RunMonitor(_callbacks_module()):
    """Per-epoch landmark error on the validation set (decoded, in ROI px, misses counted as
    100 px: ``metrics.validation_mre``), status.json, CSV metrics, and a graceful stop on SIGTERM
    (cancel)."""

    def __init__(self, run_dir: Path, config: TrainConfig, codec, val, start_epoch: int, verbose: bool):
        super().__init__()
        self.run_dir = run_dir
        self.config = config
        self.codec = codec
        self.val = val
        self.start_epoch = start_epoch
        self.verbose = verbose
        self.cancelled = False
        self.best = None
        self.t0 = time.time()
        self._val_batches = None
        # The best score is the one stored with the best checkpoint (checkpoints/best.json), so a
        # resumed run compares against the model it would export, never a stale number.
        self.best = read_best(run_dir).get("score")

    def on_train_begin(self, logs=None):
        try:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not in the main thread
            pass
        write_status(self.run_dir, "running", epoch=self.start_epoch, epochs=self.config.epochs, best=self.best_mre)

    def on_train_batch_end(self, batch, logs=None):
        if self.config.time_limit_s and time.time() - self.t0 > self.config.time_limit_s:
            self.model.stop_training = True

    @property
    def best_mre(self) -> float | None:
        """The best validation MRE (ROI px), or None when there is no validation set."""
        return self.best if self.val is not None else None

    def _on_sigterm(self, *_):
        self.cancelled = True
        self.model.stop_training = True

    def val_mre_px(self) -> float | None:
        if self.val is None:
            return None
        pre = self.val.pre_config
        to_roi = _model_to_roi_affine(pre)
        if self._val_batches is None:  # the validation set is fixed: render/read it once
            self._val_batches = [self.val[b] for b in range(len(self.val))]
        errors = []
        for x, y in self._val_batches:
            if self.config.distribute == "multiworker":  # predict_on_batch fails under it (Keras 3)
                out = np.asarray(self.model(x, training=False))
            else:
                out = np.asarray(self.model.predict_on_batch(x))
            for o, t in zip(out, y):
                pred, _ = self.codec.decode(o)
                true, _ = self.codec.decode(t)
                errors.append(np.linalg.norm(apply_affine(to_roi, pred) - apply_affine(to_roi, true), axis=1))
        # a missed landmark counts as a large error (metrics.MISS_PENALTY_PX), never dropped
        return validation_mre(np.concatenate(errors))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        mre = self.val_mre_px()
        if mre is not None:
            logs["val_mre_px"] = mre
        logs["lr"] = float(np.asarray(self.model.optimizer.learning_rate))
        score = mre if mre is not None else (float(logs["loss"]) if "loss" in logs else None)
        if score is not None and np.isfinite(score) and (self.best is None or score < self.best):
            self.best = score
            commit_best(self.model, self.run_dir, score, epoch + 1, "val_mre_px" if mre is not None else "loss")
        # Order matters for resume after a kill: checkpoint, then state (the commit), then the CSV row
        # (resume drops rows after the committed epoch, so a row never appears twice).
        save_model_atomic(self.model, self.run_dir / "checkpoints" / "last.keras")
        write_json_atomic(self.run_dir / "state.json", {"epoch": epoch + 1, "best_val_mre_px": self.best})
        row = {"epoch": epoch + 1, "time_s": round(time.time() - self.t0, 1),
               **{k: float(v) for k, v in logs.items()}}
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        write_status(self.run_dir, "running", epoch=epoch + 1, epochs=self.config.epochs, best=self.best_mre)
        if self.verbose:
            parts = " ".join(f"{k}={v:.4g}" for k, v in logs.items())
            print(f"epoch {epoch + 1}/{self.config.epochs} {parts}", flush=True)


# --- durable checkpoints ---------------------------------------------------------------------------

def save_model_atomic(model, path: Path) -> None:
    """``model.save(path)`` so that ``path`` is always a complete file: written to a temporary
    ``.keras`` file in the same folder, then ``os.replace``-d (a kill mid-save leaves the old file)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # Keras wants the .keras suffix
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_best(run_dir: Path) -> dict:
    """``checkpoints/best.json``: ``{file, score, epoch, monitor}`` of the best checkpoint, or ``{}``.

    The pointer is only returned when the file it names exists, so it always describes a real model."""
    best = read_json(Path(run_dir) / "checkpoints" / "best.json")
    if best.get("file") and (Path(run_dir) / "checkpoints" / best["file"]).is_file():
        return best
    return {}


def commit_best(model, run_dir: Path, score: float, epoch: int, monitor: str) -> Path:
    """Save a new best checkpoint durably: ``checkpoints/best-eNNNN.keras`` (atomic), then the pointer
    ``best.json`` (atomic: this is the commit), then the convenience copy ``best.keras`` and removal of
    older ``best-e*.keras``. A kill at any point leaves a pointer whose file and score belong together."""
    ck = Path(run_dir) / "checkpoints"
    name = f"best-e{epoch:04d}.keras"
    save_model_atomic(model, ck / name)
    write_json_atomic(ck / "best.json", {"file": name, "score": float(score), "epoch": int(epoch),
                                         "monitor": monitor, "time": time.time()})
    tmp = ck / f".tmp-{os.getpid()}-best.keras"
    try:
        os.link(ck / name, tmp)
    except OSError:
        import shutil
        shutil.copyfile(ck / name, tmp)
    os.replace(tmp, ck / "best.keras")
    for old in ck.glob("best-e*.keras"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return ck / name


def _truncate_metrics(run_dir: Path, epochs_done: int) -> None:
    """Drop ``metrics.csv`` rows after the last committed epoch (written just before a kill)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    if not lines:
        return
    keep = [lines[0]]
    for line in lines[1:]:
        try:
            if int(float(line.split(",", 1)[0])) <= epochs_done:
                keep.append(line)
        except ValueError:
            continue  # a half-written row
    if keep != lines:
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)


def _model_to_roi_affine(pre: PreprocessConfig) -> np.ndarray:
    """3×3 affine model-input px → ROI px for the resize of a 600×250 ROI (validation images are ROIs)."""
    from cvs_core.landmarks import ROI_SIZE
    from cvs_core.preprocess import resize_to_input
    _, m = resize_to_input(np.zeros(ROI_SIZE, np.uint8), pre)
    return np.linalg.inv(m)


def write_status(run_dir: Path, status: str, **fields_) -> None:
    data = read_json(Path(run_dir) / "status.json")
    data.update(status=status, updated=time.time(), **fields_)
    write_json_atomic(Path(run_dir) / "status.json", data)


# --- the run ------------------------------------------------------------------------------------

def _strategy(config: TrainConfig):
    if config.distribute == "none":
        return None
    import tensorflow as tf
    if config.distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def multiworker_task() -> tuple[str, int, int] | None:
    """``(task type, task index, number of workers)`` from ``$TF_CONFIG``, or None when it is not set.

    The chief is task ``chief``/0 if the cluster has one, else ``worker``/0; it alone writes the run
    folder (other workers keep their files in ``<run>/.worker-<i>/``, deleted when they finish)."""
    import os
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        tf_config = json.loads(raw)
        task = tf_config["task"]
        cluster = tf_config["cluster"]
        n = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
        return str(task["type"]), int(task["index"]), n
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON with cluster and task: {exc}") from None


def is_chief() -> bool:
    """Whether this process writes the run folder (always, unless it is a non-chief multi-worker task)."""
    task = multiworker_task()
    if task is None:
        return True
    kind, index, _ = task
    import os
    has_chief = "chief" in json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
    return kind == "chief" or (kind == "worker" and index == 0 and not has_chief)


def _fit_distributed(model, strategy, train_seq, config: TrainConfig, callbacks: list, start_epoch: int, loss) -> None:
    """A training loop for ``MultiWorkerMirroredStrategy``: Keras 3's ``Model.fit`` does not run under
    it (keras-team/keras#20585: PerReplica inputs reach a tensor conversion). Each worker feeds its own
    batches (``config.batch_size`` per worker), gradients are averaged across workers by the optimizer's
    all-reduce, and the usual callbacks (RunMonitor, ReduceLROnPlateau, EarlyStopping) run as in fit."""
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    optimizer = model.optimizer
    n_replicas = strategy.num_replicas_in_sync

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            value = tf.reduce_mean(tf.cast(loss_fn(y, pred), tf.float32))
            scaled = optimizer.scale_loss(value / n_replicas) if hasattr(optimizer, "scale_loss") else value / n_replicas
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return value

    @tf.function
    def step(x, y):
        per_replica = strategy.run(replica_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    cb = keras.callbacks.CallbackList(callbacks, model=model, add_history=False, add_progbar=False)
    model.stop_training = False
    steps = config.steps_per_epoch or len(train_seq)
    cb.on_train_begin()
    for epoch in range(start_epoch, config.epochs):
        cb.on_epoch_begin(epoch)
        total = 0.0
        for i in range(steps):
            x, y = train_seq[i % len(train_seq)]
            value = float(step(tf.constant(x), tf.constant(y)))
            total += value
            cb.on_train_batch_end(i, {"loss": value})
            if model.stop_training:
                break
        logs = {"loss": total / max(1, i + 1)}
        train_seq.on_epoch_end()
        cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cb.on_train_end()


def _gpu_available() -> bool:
    import keras
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf
            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax
            return any(d.platform == "gpu" for d in jax.devices())
        if backend == "torch":
            import torch
            return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False
    return False


def train(config: TrainConfig, out_dir: Path, resume: bool = False, verbose: bool = True,
          extra_callbacks: list | None = None) -> Path:
    """Run training into ``out_dir``; returns the exported model folder ``out_dir/model``."""
    import keras

    from cvs_core.networks import CUSTOM_OBJECTS
    from cvs_core.registry import base_manifest, save_model_folder

    out_dir = Path(out_dir)
    chief_dir = None
    if config.distribute == "multiworker" and not is_chief():  # keep a non-chief worker's files apart
        chief_dir, out_dir = out_dir, out_dir / f".worker-{multiworker_task()[1]}"
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(config.to_json())
    keras.utils.set_random_seed(config.seed)
    use_mp = config.mixed_precision == "on" or (config.mixed_precision == "auto" and _gpu_available())
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mp else "float32")

    codec = make_codec(config)
    train_seq, val_seq, data_summary = build_datasets(config, codec)
    if config.distribute == "multiworker" and multiworker_task():  # each worker its own batches
        train_seq.seed = config.seed + 7919 * multiworker_task()[1]
    loss, metrics = loss_for(config)
    last = out_dir / "checkpoints" / "last.keras"
    start_epoch = 0
    strategy = _strategy(config)
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with scope:
        if resume and last.is_file():
            model = keras.saving.load_model(last, custom_objects=CUSTOM_OBJECTS)
            start_epoch = int(read_json(out_dir / "state.json").get("epoch", 0))
            _truncate_metrics(out_dir, start_epoch)
            if verbose:
                print(f"resuming from {last} after epoch {start_epoch}", flush=True)
        else:
            for stale in ("metrics.csv", "state.json", "checkpoints/best.json", "checkpoints/best.keras"):
                (out_dir / stale).unlink(missing_ok=True)
            for stale in (out_dir / "checkpoints").glob("best-e*.keras"):
                stale.unlink(missing_ok=True)
            if config.init_from:
                from cvs_core.registry import load_keras_model, resolve_model
                model = load_keras_model(resolve_model(config.init_from))
            else:
                model = get_arch(config.model).build(**builder_kwargs(config))
            model.compile(optimizer=keras.optimizers.Adam(config.lr), loss=loss, metrics=metrics)
    train_seq.epoch = start_epoch
    train_seq._order = train_seq._make_order()

    monitor_key = "val_mre_px" if val_seq is not None else "loss"
    if config.distribute == "multiworker":
        # Workers must take the same LR / early-stopping decisions or one waits forever in an
        # all-reduce: decide on the all-reduced training loss, identical on every worker (each
        # worker's validation error differs slightly: BatchNorm moving statistics are per worker).
        monitor_key = "loss"
    monitor = RunMonitor(out_dir, config, codec, val_seq, start_epoch, verbose)
    callbacks = [
        monitor,  # also saves the best checkpoint, atomically, with its score (commit_best)
        *schedule_callbacks(config, monitor_key),
        keras.callbacks.EarlyStopping(monitor=monitor_key, mode="min", patience=config.early_stopping_patience),
        *(extra_callbacks or []),
    ]
    if keras.backend.backend() == "tensorflow" and config.distribute != "multiworker":
        callbacks.append(keras.callbacks.TensorBoard(out_dir / "tensorboard", write_graph=False))
    if start_epoch >= config.epochs:
        if verbose:
            print("nothing to do: the run already reached its last epoch", flush=True)
    else:
        write_status(out_dir, "running", epoch=start_epoch, epochs=config.epochs)
        try:
            if config.distribute == "multiworker":
                _fit_distributed(model, strategy, train_seq, config, callbacks, start_epoch, loss)
            else:
                model.fit(train_seq, epochs=config.epochs, initial_epoch=start_epoch, callbacks=callbacks,
                          verbose=0, steps_per_epoch=config.steps_per_epoch)
        except Exception as exc:
            write_status(out_dir, "failed", error=f"{type(exc).__name__}: {exc}")
            raise
    if monitor.cancelled:
        write_status(out_dir, "cancelled")
        return out_dir / "model"
    if chief_dir is not None:  # a non-chief worker: the chief exports the model
        import shutil
        shutil.rmtree(out_dir, ignore_errors=True)
        return chief_dir / "model"

    best = read_best(out_dir)
    best_path = out_dir / "checkpoints" / best["file"] if best else None
    final = keras.saving.load_model(best_path if best_path else last, custom_objects=CUSTOM_OBJECTS,
                                    compile=False) if (best_path or last.is_file()) else model
    pre = config.preprocess_config()
    manifest = base_manifest(
        name=config.name or config.model, architecture=config.model, builder_kwargs=builder_kwargs(config),
        preprocess=pre, codec=codec,
        training={"preset": config.preset, "epochs_run": int(read_json(out_dir / "state.json").get("epoch", 0)),
                  "config": json.loads(config.to_json()), "data": data_summary,
                  "mixed_precision": use_mp},
        metrics={"best_val_mre_px": best.get("score") if best.get("monitor") == "val_mre_px" else None,
                 "best_epoch": best.get("epoch"), "best_monitor": best.get("monitor")},
        imagenet_weights=bool(getattr(final, "imagenet_loaded", False)),
    )
    folder = save_model_folder(final, out_dir / "model", manifest)
    write_status(out_dir, "succeeded", best=monitor.best_mre, model_dir=str(folder))
    return folder

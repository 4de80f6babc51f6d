"""Preprocessing shared by training and inference: ROI, CLAHE, bilateral filter, resize.

Pixel-centre convention (OpenCV's): the integer coordinate ``i`` is the centre of pixel ``i``,
so a resize by ``s`` maps ``x -> (x + 0.5) * s - 0.5``. Every geometric step is a 2×3 affine;
:class:`Preprocessed` composes them so landmarks move between the input image frame and the model
input frame exactly (``to_model`` / ``to_original``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import cv2
import numpy as np

# The study's ROI: the original scaled by 0.5 and cropped to x∈[0,250), y∈[400,1000) of the
# half-size image, i.e. the box x∈[0,500), y∈[800,2000) of the original at scale 0.5.
SEED_ROI_BOX = (0, 800, 500, 2000)
SEED_ROI_SCALE = 0.5
SEED_ROI_SIZE = (600, 250)  # (height, width)

RESIZE_MODES = ("stretch", "letterbox")
SCALINGS = ("unit", "raw", "symmetric")  # /255, 0–255 as is, [-1, 1] (Keras "tf" preprocess_input)


@dataclass
class PreprocessConfig:
    """Everything that turns an input image into a model input. Lives in model manifests.

    roi: ``"none"`` (the input is already the vertebral ROI), ``"seed"`` (the study preset on a
    full cephalogram) or ``[x0, y0, x1, y1]`` in input pixels (then scaled by ``roi_scale``).
    input_size: ``(height, width)`` of the model input, or ``None`` to keep the ROI size.
    resize_first: the study's U-Net resized before CLAHE; its Inception applied CLAHE at ROI size.
    """

    roi: str | list[int] = "none"
    roi_scale: float = 1.0
    clahe: bool = True
    clahe_clip: float = 2.0
    clahe_tile: int = 8
    bilateral: bool = False
    bilateral_d: int = 9
    bilateral_sigma_color: float = 75.0
    bilateral_sigma_space: float = 75.0
    input_size: tuple[int, int] | None = (256, 256)
    resize_mode: str = "stretch"
    resize_first: bool = True
    channels: int = 1
    scaling: str = "unit"

    def __post_init__(self):
        if isinstance(self.roi, (list, tuple)):
            if len(self.roi) != 4:
                raise ValueError(f"roi box must be [x0, y0, x1, y1], got {self.roi!r}")
            x0, y0, x1, y1 = (int(round(v)) for v in self.roi)
            if x1 <= x0 or y1 <= y0 or x0 < 0 or y0 < 0:
                raise ValueError(f"roi box [x0, y0, x1, y1] must have x1 > x0 >= 0 and y1 > y0 >= 0, got {self.roi!r}")
            self.roi = [x0, y0, x1, y1]
        elif self.roi not in ("none", "seed"):
            raise ValueError(f"roi must be 'none', 'seed' or [x0, y0, x1, y1], got {self.roi!r}")
        if self.input_size is not None:
            h, w = (int(v) for v in self.input_size)
            if h < 8 or w < 8:
                raise ValueError(f"input_size must be at least 8×8, got {self.input_size!r}")
            self.input_size = (h, w)
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        if not (self.clahe_clip > 0 and 1 <= int(self.clahe_tile) <= 64):
            raise ValueError("CLAHE needs clip limit > 0 and a tile grid between 1 and 64")
        if not (0 < self.roi_scale <= 4):
            raise ValueError(f"roi_scale must be in (0, 4], got {self.roi_scale}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size) if self.input_size else None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        d = dict(d)
        if d.get("input_size") is not None:
            d["input_size"] = tuple(d["input_size"])
        return cls(**d)

    def replace(self, **changes) -> "PreprocessConfig":
        d = self.to_dict()
        d.update(changes)
        return PreprocessConfig.from_dict(d)


# --- presets -------------------------------------------------------------------------------

def unet_seed_config(roi: str | list[int] = "none") -> PreprocessConfig:
    """The study's U-Net: ROI → stretch to 256×256 (bilinear) → CLAHE 2.0/8 → /255."""
    return PreprocessConfig(roi=roi, roi_scale=SEED_ROI_SCALE if roi == "seed" else 1.0,
                            input_size=(256, 256), resize_mode="stretch", resize_first=True)


def inception_seed_config(roi: str | list[int] = "none") -> PreprocessConfig:
    """The study's InceptionResNetV2: ROI 600×250 → CLAHE → bilateral 9/75/75 → RGB, raw 0–255."""
    return PreprocessConfig(roi=roi, roi_scale=SEED_ROI_SCALE if roi == "seed" else 1.0,
                            bilateral=True, input_size=(600, 250), resize_first=False,
                            channels=3, scaling="raw")


# --- affines -------------------------------------------------------------------------------

def translation(dx: float, dy: float) -> np.ndarray:
    """3×3 homogeneous translation."""
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], dtype=np.float64)


def resize_affine(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """3×3 affine of ``cv2.resize`` from ``(H, W)`` to ``(h, w)`` in the pixel-centre convention."""
    sy = dst_hw[0] / src_hw[0]
    sx = dst_hw[1] / src_hw[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)


def seed_roi_affine() -> np.ndarray:
    """3×3 affine from full-cephalogram pixels to the study's ROI pixels (``x/2 − 0.25``,
    ``(y − 800)/2 − 0.25`` in the pixel-centre convention)."""
    x0, y0, x1, y1 = SEED_ROI_BOX
    out_hw = (int(round((y1 - y0) * SEED_ROI_SCALE)), int(round((x1 - x0) * SEED_ROI_SCALE)))
    return resize_affine((y1 - y0, x1 - x0), out_hw) @ translation(-x0, -y0)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2×3 or 3×3 affine to points ``(..., 2)`` (x, y); NaN stays NaN."""
    m = np.asarray(matrix, dtype=np.float64)[:2]
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2×3 or 3×3 affine, returned as 3×3."""
    m = np.eye(3)
    m[:2] = np.asarray(matrix, dtype=np.float64)[:2]
    return np.linalg.inv(m)


# --- the pipeline --------------------------------------------------------------------------

@dataclass
class Preprocessed:
    """A model input plus the geometry that produced it.

    image: ``(h, w, channels)`` float32 model input.
    roi_image: ``(H_roi, W_roi)`` uint8 ROI before filtering (for display).
    affine: 3×3 from input-image pixels to model-input pixels.
    roi_affine: 3×3 from input-image pixels to ROI pixels.
    """

    image: np.ndarray
    roi_image: np.ndarray
    affine: np.ndarray
    roi_affine: np.ndarray
    config: PreprocessConfig = field(repr=False)

    def to_model(self, landmarks: np.ndarray) -> np.ndarray:
        """Input-image frame ``(..., 2)`` → model-input frame."""
        return apply_affine(self.affine, landmarks)

    def to_original(self, landmarks: np.ndarray) -> np.ndarray:
        """Model-input frame ``(..., 2)`` → input-image frame."""
        return apply_affine(invert_affine(self.affine), landmarks)

    def model_to_roi(self, landmarks: np.ndarray) -> np.ndarray:
        """Model-input frame ``(..., 2)`` → ROI frame."""
        return apply_affine(self.roi_affine @ invert_affine(self.affine), landmarks)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Any greyscale ``(H, W)`` array → uint8, scaling by the value range of wider types."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        return img
    img = img.astype(np.float64)
    finite = np.isfinite(img)
    if not finite.any():
        raise ValueError("image has no finite pixel values")
    lo, hi = float(img[finite].min()), float(img[finite].max())
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    out = (np.where(finite, img, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def select_roi(grey: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cut and scale the ROI. Returns ``(roi (H, W) uint8, 3×3 affine input → ROI)``."""
    if config.roi == "none":
        box = (0, 0, grey.shape[1], grey.shape[0])
        scale = config.roi_scale
    else:
        box = SEED_ROI_BOX if config.roi == "seed" else tuple(config.roi)
        scale = SEED_ROI_SCALE if config.roi == "seed" else config.roi_scale
    x0, y0, x1, y1 = box
    h, w = grey.shape[:2]
    if x0 >= w or y0 >= h:
        raise ValueError(f"ROI box {list(box)} lies outside the {w}×{h} image")
    if config.roi != "seed" and config.roi != "none":
        from cvs_core.limits import check_roi_box
        check_roi_box(box, (h, w))  # a box far past the image would allocate its whole padded size
    crop = grey[y0:min(y1, h), x0:min(x1, w)]
    if crop.shape != (y1 - y0, x1 - x0):
        # Pad with black where the box runs past the image (keeps the ROI size and the affine).
        padded = np.zeros((y1 - y0, x1 - x0), dtype=grey.dtype)
        padded[:crop.shape[0], :crop.shape[1]] = crop
        crop = padded
    affine = translation(-x0, -y0)
    if config.roi == "seed":
        crop = cv2.resize(crop, (SEED_ROI_SIZE[1], SEED_ROI_SIZE[0]), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(crop), seed_roi_affine()
    if scale != 1.0:
        out_hw = (int(round(crop.shape[0] * scale)), int(round(crop.shape[1] * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (out_hw[1], out_hw[0]), interpolation=interp)
        affine = resize_affine((y1 - y0, x1 - x0), out_hw) @ affine
    return np.ascontiguousarray(crop), affine


def apply_filters(grey: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """CLAHE and the optional bilateral filter on a uint8 ``(H, W)`` image."""
    out = grey
    if config.clahe:
        tile = int(config.clahe_tile)
        out = cv2.createCLAHE(clipLimit=float(config.clahe_clip), tileGridSize=(tile, tile)).apply(out)
    if config.bilateral:
        out = cv2.bilateralFilter(out, int(config.bilateral_d), float(config.bilateral_sigma_color),
                                  float(config.bilateral_sigma_space))
    return out


def resize_to_input(grey: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Resize ``(H, W)`` to ``config.input_size``. Returns ``(image, 3×3 affine)``."""
    if config.input_size is None or tuple(grey.shape[:2]) == tuple(config.input_size):
        return grey, np.eye(3)
    h, w = config.input_size
    H, W = grey.shape[:2]
    if config.resize_mode == "stretch":
        return cv2.resize(grey, (w, h), interpolation=cv2.INTER_LINEAR), resize_affine((H, W), (h, w))
    s = min(h / H, w / W)
    nh, nw = max(1, int(round(H * s))), max(1, int(round(W * s)))
    inner = cv2.resize(grey, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    top, left = (h - nh) // 2, (w - nw) // 2
    canvas = np.zeros((h, w), dtype=grey.dtype)
    canvas[top:top + nh, left:left + nw] = inner
    return canvas, translation(left, top) @ resize_affine((H, W), (nh, nw))


def scale_pixels(grey: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """uint8 ``(h, w)`` → float32 ``(h, w, channels)`` scaled as the config says."""
    x = grey.astype(np.float32)
    if config.scaling == "unit":
        x /= 255.0
    elif config.scaling == "symmetric":
        x = x / 127.5 - 1.0
    x = x[..., None]
    if config.channels == 3:
        x = np.repeat(x, 3, axis=-1)
    return x


def greyscale_2d(image: np.ndarray, purpose: str, min_side: int, hint: str = "") -> np.ndarray:
    """``(H, W)`` or ``(H, W, 1)`` → ``(H, W)`` (same dtype); a ``ValueError`` naming ``purpose``
    for any other shape or a side shorter than ``min_side``."""
    grey = np.asarray(image)
    if grey.ndim == 3 and grey.shape[2] == 1:
        grey = grey[..., 0]
    if grey.ndim != 2:
        raise ValueError(f"{purpose} expects a greyscale (H, W) image, got shape {grey.shape}")
    if min(grey.shape) < min_side:
        raise ValueError(f"image of {grey.shape[1]}×{grey.shape[0]} px is too small for {purpose} "
                         f"(at least {min_side}×{min_side} needed{hint})")
    return grey


def preprocess(image: np.ndarray, config: PreprocessConfig) -> Preprocessed:
    """Greyscale ``(H, W)`` (uint8, or wider and then range-scaled) → :class:`Preprocessed`."""
    grey = to_uint8(greyscale_2d(image, "preprocess", 8))
    roi, roi_affine = select_roi(grey, config)
    if config.resize_first:
        resized, resize_m = resize_to_input(roi, config)
        filtered = apply_filters(resized, config)
    else:
        filtered, resize_m = resize_to_input(apply_filters(roi, config), config)
    return Preprocessed(image=scale_pixels(filtered, config), roi_image=roi,
                        affine=resize_m @ roi_affine, roi_affine=roi_affine, config=config)

"""Evaluation datasets: labelled (or unlabelled) images on disk, read lazily.

Labels are ``(N, 19, 2)`` (x, y) pixels in the *label frame*: the study's ROI frame (the 250×600
vertebral ROI); ``spacing_mm`` is mm per ROI pixel (nominal 0.25). See docs/architecture.md,
"Frames and conventions".
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cvs_core.landmarks import N_LANDMARKS

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "data" / "samples"


@dataclass
class Dataset:
    """Labelled (or unlabelled) images on disk.

    names : N image names; image_paths : N paths (read lazily, batch by batch).
    landmarks : ``(N, 19, 2)`` labels in the label (ROI) frame, or None.
    stages : ``(N,)`` int CS stages 1..6 (0 = unknown), or None.
    spacing_mm : mm per ROI pixel. source : a label for reports.
    """

    names: list[str]
    image_paths: list[Path]
    landmarks: np.ndarray | None
    stages: np.ndarray | None
    spacing_mm: float
    source: str
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.names = [str(n) for n in self.names]
        self.image_paths = [Path(p) for p in self.image_paths]
        if len(self.names) != len(self.image_paths):
            raise ValueError(f"{len(self.names)} names for {len(self.image_paths)} image paths")
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, np.float64)
            if self.landmarks.shape != (len(self.names), N_LANDMARKS, 2):
                raise ValueError(f"landmarks must be shaped ({len(self.names)}, {N_LANDMARKS}, 2), "
                                 f"got {self.landmarks.shape}")
        if self.stages is not None:
            self.stages = np.asarray(self.stages, np.int64).reshape(-1)
            if len(self.stages) != len(self.names):
                raise ValueError(f"{len(self.stages)} stages for {len(self.names)} images")
        if not (self.spacing_mm > 0):
            raise ValueError(f"spacing_mm must be > 0 mm/px, got {self.spacing_mm}")

    def __len__(self) -> int:
        return len(self.names)

    def fingerprint(self) -> str:
        """sha256 of the names, labels and each image file's size and mtime (cheap, no pixel reads)."""
        h = hashlib.sha256()
        for name, path in zip(self.names, self.image_paths):
            try:
                st = path.stat()
                stat = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stat = "missing"
            h.update(f"{name}\0{path.resolve()}\0{stat}\n".encode())
        if self.landmarks is not None:
            h.update(np.ascontiguousarray(self.landmarks, np.float64).tobytes())
        if self.stages is not None:
            h.update(np.ascontiguousarray(self.stages, np.int64).tobytes())
        return h.hexdigest()


def _parse_stages(extra: pd.DataFrame) -> np.ndarray | None:
    """A ``cs_stage`` (or ``stage``) column → ``(N,)`` int, 0 where unknown; None if absent."""
    for col in ("cs_stage", "stage", "cvm_stage"):
        if col in extra.columns:
            out = np.zeros(len(extra), np.int64)
            for i, v in enumerate(extra[col].tolist()):
                text = str(v).strip().upper().removeprefix("CS")
                try:
                    s = int(float(text))
                except ValueError:
                    continue
                out[i] = s if 1 <= s <= 6 else 0
            return out if (out > 0).any() else None
    return None


def load_dataset(csv, images, spacing_mm: float = 0.25) -> Dataset:
    """A study-format CSV (labels in the ROI frame) + its image folder → :class:`Dataset`.

    Rows whose image is missing are skipped; landmarks outside an image are a warning, not an
    error (the study's ``LC (11)`` has three just below its 600-px ROI). A ``cs_stage`` column
    gives the stages."""
    from cvs_core.annotations import read_annotations

    # subset labels (e.g. the 13-landmark scheme: 5, 7, 8, 13, 15, 16 empty) are scored on the
    # landmarks they have
    aset = read_annotations(csv, image_dir=images, missing_images="skip", check_bounds="warn",
                            allow_missing=True)
    if len(aset) == 0:
        raise ValueError(f"{csv}: none of the images named in the CSV is in {images}")
    folder = Path(images)
    return Dataset(names=list(aset.names), image_paths=[folder / n for n in aset.names],
                   landmarks=aset.landmarks, stages=_parse_stages(aset.extra), spacing_mm=float(spacing_mm),
                   source=str(csv), warnings=list(aset.skipped) + list(aset.warnings))


def phantom_dataset(n: int = 32, seed: int = 0, cache_dir: Path | None = None, spacing_mm: float = 0.25) -> Dataset:
    """``n`` phantoms (written once to ``cache_dir/phantoms_{n}_{seed}``, reused afterwards)."""
    from cvs_core.registry import cvs_home
    from cvs_core.synth import write_phantom_dataset

    base = Path(cache_dir) if cache_dir is not None else cvs_home() / "cache"
    folder = base / f"phantoms_{int(n)}_{int(seed)}"
    csv_path = folder / "labels.csv"
    if not csv_path.is_file():
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        write_phantom_dataset(tmp, n=int(n), seed=int(seed))
        try:
            os.replace(tmp, folder)
        except OSError:  # written concurrently by someone else: use theirs
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        from cvs_core.limits import evict_phantom_cache
        evict_phantom_cache(base, keep=(folder,))  # ≈ 90 KB per phantom: bounded by max_phantom_cache_bytes
    else:
        os.utime(folder)  # recently used: evicted last
    ds = load_dataset(csv_path, folder / "images", spacing_mm=spacing_mm)
    ds.source = f"phantoms n={n} seed={seed}"
    return ds


def samples_dataset(spacing_mm: float = 0.25) -> Dataset:
    """The bundled public ROI images that have labels (``LC (1)``, ``LC (11)``) from both study CSVs."""
    from cvs_core.annotations import read_annotations

    names, lms = [], []
    for csv in ("train_data.csv", "test_data.csv"):
        aset = read_annotations(SAMPLES_DIR / csv, image_dir=SAMPLES_DIR / "roi", missing_images="skip",
                                check_bounds="warn")
        for name, lm in zip(aset.names, aset.landmarks):
            if name not in names:
                names.append(name)
                lms.append(lm)
    return Dataset(names=names, image_paths=[SAMPLES_DIR / "roi" / n for n in names],
                   landmarks=np.asarray(lms), stages=None, spacing_mm=spacing_mm, source="data/samples/roi")


def read_grey(path: Path) -> np.ndarray:
    """A greyscale ``(H, W)`` image from disk: OpenCV first (fast), ``imaging.read_image`` for the rest
    (DICOM, 16-bit TIFF, …)."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is not None:
        return img
    from cvs_core.imaging import read_image

    return read_image(path).pixels

"""The 19-landmark schema of the cervical vertebrae C2–C4 (docs/architecture.md#the-19-landmarks).

Coordinates everywhere are ``(x, y)`` float pixels; x grows anteriorly (to the right in the
samples), y grows downwards. Arrays are shaped ``(19, 2)`` for one image or ``(N, 19, 2)``.
"""
from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = "cvm19-v1"
N_LANDMARKS = 19


@dataclass(frozen=True)
class Landmark:
    index: int  # 1-based, as in the study CSV
    name: str
    vertebra: str
    description: str


_PATTERN = [
    ("sp", "superior border, posterior corner"),
    ("sm", "superior border, middle"),
    ("sa", "superior border, anterior corner"),
    ("mp", "posterior border, middle"),
    ("ma", "anterior border, middle"),
    ("ip", "inferior border, posterior corner"),
    ("im", "inferior border, deepest (middle) point"),
    ("ia", "inferior border, anterior corner"),
]


def _build() -> tuple[Landmark, ...]:
    out = [
        Landmark(1, "C2ip", "C2", "C2 inferior border, posterior end"),
        Landmark(2, "C2im", "C2", "C2 inferior border, deepest (middle) point"),
        Landmark(3, "C2ia", "C2", "C2 inferior border, anterior end"),
    ]
    for vertebra, start in (("C3", 4), ("C4", 12)):
        for offset, (suffix, where) in enumerate(_PATTERN):
            out.append(Landmark(start + offset, vertebra + suffix, vertebra, f"{vertebra} {where}"))
    return tuple(out)


LANDMARKS: tuple[Landmark, ...] = _build()
NAMES: tuple[str, ...] = tuple(lm.name for lm in LANDMARKS)
NAME_TO_INDEX0: dict[str, int] = {lm.name: lm.index - 1 for lm in LANDMARKS}

# Polylines for drawing, as 1-based landmark indices (docs/architecture.md#the-19-landmarks).
OUTLINES: dict[str, tuple[int, ...]] = {
    "C2": (1, 2, 3),
    "C3": (4, 5, 6, 8, 11, 10, 9, 7, 4),
    "C4": (12, 13, 14, 16, 19, 18, 17, 15, 12),
}

# 1-based indices per vertebra (for staging and per-vertebra reports).
C2_INFERIOR = (1, 2, 3)  # posterior end, middle, anterior end
VERTEBRA_POINTS = {
    "C3": dict(sp=4, sm=5, sa=6, mp=7, ma=8, ip=9, im=10, ia=11),
    "C4": dict(sp=12, sm=13, sa=14, mp=15, ma=16, ip=17, im=18, ia=19),
}


def csv_columns() -> list[str]:
    """Coordinate columns of the study CSV in order: ``1_x, 1_y, …, 19_x, 19_y``."""
    return [f"{i}_{axis}" for i in range(1, N_LANDMARKS + 1) for axis in ("x", "y")]


def outline_index0(vertebra: str) -> list[int]:
    """0-based indices of a vertebra's drawing outline."""
    return [i - 1 for i in OUTLINES[vertebra]]

# Mean of the 15 public landmark configurations (data/samples/*.csv), ROI pixels (250×600 frame).
# Used as the reference shape for assigning identity-free mask blobs to landmark slots.
MEAN_SHAPE_ROI = (
    (118.7, 357.5), (149.4, 357.0), (183.0, 365.9), (119.9, 375.3), (151.2, 384.1),
    (180.9, 392.7), (119.0, 402.5), (184.9, 414.8), (116.6, 429.1), (151.2, 430.5),
    (183.9, 438.9), (117.3, 443.1), (148.5, 457.0), (178.7, 466.4), (114.9, 470.9),
    (180.3, 488.5), (111.7, 497.3), (144.5, 500.5), (177.3, 512.2),
)
ROI_SIZE = (600, 250)  # (height, width) of the study's ROI images

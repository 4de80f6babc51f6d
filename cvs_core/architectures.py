"""Every model architecture in one table: name → :class:`ArchSpec`.

An entry says how to build the network, which codec turns its output into landmarks, which loss
trains it, the training presets (``seed``: the study's settings; ``improved``: ours), a one-line
help text, and how its weights ship. Training (``cvs_core.train``), inference
(``cvs_core.predict``), model registration (``cvs_core.registry``), weight packing and the app
all read this table, so adding an architecture means adding one entry here (plus its builder).

This module imports no deep-learning framework at import time: builders named as
``"module:function"`` strings are imported on first use.
"""
from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from typing import Callable

from cvs_core.codecs import HeatmapCodec, MaskCodec, RegressionCodec
from cvs_core.preprocess import PreprocessConfig, inception_seed_config, unet_seed_config

FAMILIES = ("unet", "inception")
PRESETS = ("seed", "improved")


# --- preprocessing of the improved presets ------------------------------------------------------

def improved_unet_preprocess() -> PreprocessConfig:
    """ROI → CLAHE → 384×160 (keeps the 600:250 aspect) → /255."""
    return PreprocessConfig(input_size=(384, 160), resize_first=False)


def improved_inception_preprocess() -> PreprocessConfig:
    """ROI → CLAHE → 384×160 → RGB in [−1, 1] (the backbone's own preprocess_input)."""
    return PreprocessConfig(input_size=(384, 160), resize_first=False, channels=3, scaling="symmetric")


def _presets(seed: dict, improved: dict, pre_seed: PreprocessConfig, pre_improved: PreprocessConfig,
             preprocess: str) -> dict[str, dict]:
    """Preset name → TrainConfig defaults. ``preprocess`` says which preprocessing both presets use:
    ``"seed"`` (the study's, for the study's architectures) or ``"improved"``."""
    pre = (pre_seed if preprocess == "seed" else pre_improved).to_dict()
    return {"seed": {**seed, "augment": False, "preprocess": pre},
            "improved": {**improved, "augment": True, "preprocess": pre}}


_UNET_SEED = dict(epochs=1000, lr=1e-3, batch_size=32)       # the study's U-Net run
_UNET_IMPROVED = dict(epochs=60, lr=1e-3, batch_size=16)
_INCEPTION_SEED = dict(epochs=600, lr=1e-2, batch_size=32)   # the study's InceptionResNetV2 run
_INCEPTION_IMPROVED = dict(epochs=60, lr=3e-4, batch_size=16)


# --- codecs and losses ----------------------------------------------------------------------------

def mask_codec(input_size, **_) -> MaskCodec:
    """The study's one-channel mask of squares (output ``(h, w, 1)``)."""
    return MaskCodec(input_size=tuple(input_size))


def heatmap_codec(input_size, heatmap_sigma: float = 2.0, **_) -> HeatmapCodec:
    """19 Gaussian heatmaps at input resolution (output ``(h, w, 19)``), σ = ``heatmap_sigma`` px."""
    return HeatmapCodec(input_size=tuple(input_size), sigma=heatmap_sigma)


def raw_regression_codec(input_size, **_) -> RegressionCodec:
    """38 raw model-input pixel coordinates (output ``(38,)``), the study's Inception target."""
    return RegressionCodec(input_size=tuple(input_size), normalize=False)


def normalised_regression_codec(input_size, **_) -> RegressionCodec:
    """38 coordinates normalised to 0..1 across the input (output ``(38,)``)."""
    return RegressionCodec(input_size=tuple(input_size), normalize=True)


#: Codec choices by label (the upload form offers them when the architecture's default does not fit).
CODEC_FACTORIES: dict[str, Callable] = {
    "mask": mask_codec,
    "heatmap": heatmap_codec,
    "regression (raw px)": raw_regression_codec,
    "regression (normalised)": normalised_regression_codec,
}


def dice_loss():
    """The study's U-Net loss and metric: ``(1 − dice, [dice])``."""
    from cvs_core.networks import dice_coef, dice_loss as loss
    return loss, [dice_coef]


def heatmap_loss():
    """Foreground-weighted heatmap MSE, no extra metric."""
    from cvs_core.networks import weighted_heatmap_mse
    return weighted_heatmap_mse, []


def regression_loss():
    """The study's Inception loss and metric: MSE, MAE."""
    return "mse", ["mae"]


def wing_regression_loss():
    """Wing loss on normalised coordinates (``networks.wing_loss``), MAE metric."""
    from cvs_core.networks import wing_loss
    return wing_loss, ["mae"]


def smooth_l1_regression_loss():
    """Smooth-L1 on normalised coordinates (``networks.smooth_l1_loss``), MAE metric."""
    from cvs_core.networks import smooth_l1_loss
    return smooth_l1_loss, ["mae"]


#: Loss choices a training run may pick instead of its architecture's (``TrainConfig.loss``).
LOSSES: dict[str, Callable] = {"mse": regression_loss, "wing": wing_regression_loss,
                               "smooth_l1": smooth_l1_regression_loss}


# --- the table ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchSpec:
    """One architecture.

    name: the key in :data:`ARCHITECTURES` and the manifest's ``architecture``.
    family: ``"unet"`` (dense output decoded to landmarks) or ``"inception"`` (direct regression);
        the app groups and labels models by it.
    builder: ``f(**builder_kwargs) -> keras.Model``, or ``"module:function"`` imported on first use.
        Inputs ``(batch, height, width, channels)``.
    codec: ``f(input_size (h, w), heatmap_sigma=…) -> codec``: the default codec for a model
        input of that size (see :data:`CODEC_FACTORIES`).
    loss: ``f() -> (loss, metrics)`` for ``model.compile``.
    presets: preset name (``seed``, ``improved``) → TrainConfig fields it sets by default
        (epochs, lr, batch_size, augment, preprocess as a PreprocessConfig dict).
    help: one line for menus.
    pretrained_backbone: the builder takes ``imagenet=`` (False when weights come from elsewhere,
        e.g. packed shards).
    packed_weights: its shipped weights are too big for git and ship as int8 shards
        (``cvs_core.packing``).
    """

    name: str
    family: str
    builder: Callable | str
    codec: Callable
    loss: Callable
    presets: dict = field(default_factory=dict)
    help: str = ""
    pretrained_backbone: bool = False
    packed_weights: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"architecture {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        missing = [p for p in PRESETS if p not in self.presets]
        if missing:
            raise ValueError(f"architecture {self.name!r} lacks the preset(s) {missing}")

    @property
    def build_fn(self) -> Callable:
        """The builder function itself (imported when given as ``"module:function"``)."""
        if callable(self.builder):
            return self.builder
        module, _, attr = self.builder.partition(":")
        return getattr(importlib.import_module(module), attr)

    def build(self, **kwargs):
        """Build the Keras model with builder keyword arguments."""
        return self.build_fn(**kwargs)

    def preset(self, preset: str) -> dict:
        """A copy of the TrainConfig defaults of ``preset``."""
        if preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(self.presets)}")
        return copy.deepcopy(dict(self.presets[preset]))

    def make_codec(self, input_size, **params):
        """The default codec for a model input ``(h, w)``; ``params``: training settings such as
        ``heatmap_sigma`` (the factory ignores those it does not use)."""
        return self.codec(tuple(input_size), **params)


ARCHITECTURES: dict[str, ArchSpec] = {
    "unet_seed": ArchSpec(
        name="unet_seed", family="unet", builder="cvs_core.networks:build_unet_seed",
        codec=mask_codec, loss=dice_loss,
        presets=_presets(_UNET_SEED, _UNET_IMPROVED, unet_seed_config(), improved_unet_preprocess(), "seed"),
        help="the study's U-Net: one mask channel, Dice loss"),
    "unet_heatmap": ArchSpec(
        name="unet_heatmap", family="unet", builder="cvs_core.networks:build_unet_heatmap",
        codec=heatmap_codec, loss=heatmap_loss,
        presets=_presets(_UNET_SEED, _UNET_IMPROVED, unet_seed_config(), improved_unet_preprocess(), "improved"),
        help="U-Net with 19 Gaussian heatmaps (improved; keeps landmark identity)"),
    "inception_seed": ArchSpec(
        name="inception_seed", family="inception", builder="cvs_core.networks:build_inception_seed",
        codec=raw_regression_codec, loss=regression_loss,
        presets=_presets(_INCEPTION_SEED, _INCEPTION_IMPROVED, inception_seed_config(),
                         improved_inception_preprocess(), "seed"),
        help="the study's InceptionResNetV2: frozen backbone, Flatten head, raw pixel targets (215 M params)",
        pretrained_backbone=True, packed_weights=True),
    "inception_gap": ArchSpec(
        name="inception_gap", family="inception", builder="cvs_core.networks:build_inception_gap",
        codec=normalised_regression_codec, loss=regression_loss,
        presets=_presets(_INCEPTION_SEED, _INCEPTION_IMPROVED, inception_seed_config(),
                         improved_inception_preprocess(), "improved"),
        help="InceptionResNetV2 + global pooling, normalised coordinates (improved)",
        pretrained_backbone=True, packed_weights=True),
    "inception_integral": ArchSpec(
        name="inception_integral", family="inception", builder="cvs_core.networks:build_inception_integral",
        codec=normalised_regression_codec, loss=wing_regression_loss,
        presets=_presets(_INCEPTION_SEED, {**_INCEPTION_IMPROVED, "lr_schedule": "warmup_cosine"},
                         inception_seed_config(), improved_inception_preprocess(), "improved"),
        help="NOT the study's head: InceptionResNetV2 + soft-argmax (integral) heatmap head at stride 8, "
             "normalised coordinates, wing loss",
        pretrained_backbone=True, packed_weights=True),
}


def get_arch(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``name``; a ValueError naming the known architectures otherwise."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}") from None


def family_of(manifest: dict) -> str:
    """``"unet"`` or ``"inception"`` for a model manifest: from its architecture when known,
    else from its codec (dense mask/heatmap output → ``unet``, regression → ``inception``)."""
    spec = ARCHITECTURES.get(manifest.get("architecture"))
    if spec is not None:
        return spec.family
    return "unet" if (manifest.get("codec") or {}).get("kind") in ("mask", "heatmap") else "inception"

"""Model architectures, built from a plain name → builder mapping (``BUILDERS``).

Only Keras layers and ``keras.ops`` are used, so a saved ``.keras`` file also runs under the JAX
or PyTorch backends. Inputs are ``(batch, height, width, channels)`` (channels last).
"""
from __future__ import annotations

import os
from pathlib import Path

import keras
from keras import layers, ops

from cvs_core.landmarks import N_LANDMARKS

DICE_SMOOTH = 1e-7


@keras.saving.register_keras_serializable(package="cvs")
def dice_coef(y_true, y_pred):
    """The study's Dice: ``(2·Σ t·p + 1e-7) / (Σ t + Σ p + 1e-7)`` over the whole batch."""
    t = ops.reshape(ops.cast(y_true, "float32"), (-1,))
    p = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
    return (2.0 * ops.sum(t * p) + DICE_SMOOTH) / (ops.sum(t) + ops.sum(p) + DICE_SMOOTH)


@keras.saving.register_keras_serializable(package="cvs")
def dice_loss(y_true, y_pred):
    """``1 − dice_coef`` (the study's U-Net loss)."""
    return 1.0 - dice_coef(y_true, y_pred)


@keras.saving.register_keras_serializable(package="cvs")
def weighted_heatmap_mse(y_true, y_pred):
    """MSE with foreground weight ``1 + 20·t``, so 19 small Gaussians are not drowned by background."""
    t = ops.cast(y_true, "float32")
    p = ops.cast(y_pred, "float32")
    return ops.mean(ops.square(p - t) * (1.0 + 20.0 * t))


WING_W, WING_EPS = 0.04, 0.008     # wing loss on normalised coordinates (0.04 ≈ 15 px of a 384-px input)
SMOOTH_L1_DELTA = 0.01


@keras.saving.register_keras_serializable(package="cvs")
def wing_loss(y_true, y_pred):
    """Wing loss (Feng et al. 2018) on normalised coordinates: ``w·ln(1 + |d|/ε)`` for ``|d| < w``,
    else ``|d| − C`` with ``C = w − w·ln(1 + w/ε)``; ``w = 0.04``, ``ε = 0.008`` (input fractions).
    Strong gradients for small errors where MSE has almost none; mean over the 38 numbers."""
    d = ops.abs(ops.cast(y_pred, "float32") - ops.cast(y_true, "float32"))
    c = WING_W - WING_W * float(__import__("math").log(1.0 + WING_W / WING_EPS))
    return ops.mean(ops.where(d < WING_W, WING_W * ops.log(1.0 + d / WING_EPS), d - c))


@keras.saving.register_keras_serializable(package="cvs")
def smooth_l1_loss(y_true, y_pred):
    """Smooth-L1 (Huber, δ = 0.01 of the input) on normalised coordinates, mean over the 38 numbers."""
    d = ops.abs(ops.cast(y_pred, "float32") - ops.cast(y_true, "float32"))
    return ops.mean(ops.where(d < SMOOTH_L1_DELTA, 0.5 * d * d / SMOOTH_L1_DELTA, d - 0.5 * SMOOTH_L1_DELTA))


@keras.saving.register_keras_serializable(package="cvs")
class IntegralCoordinates(layers.Layer):
    """Soft-argmax ("integral") read-out: logits ``(batch, gh, gw, 19)`` → softmax over each channel's
    grid → expected cell centre → ``(batch, 38)`` as ``x1, y1, …, x19, y19`` normalised to 0..1
    across the input, the RegressionCodec(normalize=True) target. Grid cell ``(i, j)`` is at
    ``((j + 0.5)/gw, (i + 0.5)/gh)``, i.e. input pixel ``(j + 0.5)·stride − 0.5`` (pixel-centre
    convention) when the grid is the input divided by ``stride``. ``beta`` scales the logits."""

    def __init__(self, beta: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.beta = float(beta)

    def call(self, logits):
        shape = ops.shape(logits)
        gh, gw, k = shape[1], shape[2], shape[3]
        flat = ops.reshape(ops.cast(logits, "float32") * self.beta, (-1, gh * gw, k))
        prob = ops.softmax(flat, axis=1)
        cy = (ops.cast(ops.arange(gh), "float32") + 0.5) / ops.cast(gh, "float32")
        cx = (ops.cast(ops.arange(gw), "float32") + 0.5) / ops.cast(gw, "float32")
        gx = ops.reshape(ops.tile(cx[None, :], (gh, 1)), (1, -1, 1))
        gy = ops.reshape(ops.tile(cy[:, None], (1, gw)), (1, -1, 1))
        x = ops.sum(prob * gx, axis=1)
        y = ops.sum(prob * gy, axis=1)
        return ops.reshape(ops.stack([x, y], axis=-1), (-1, 2 * k))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[3])

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


CUSTOM_OBJECTS = {"dice_coef": dice_coef, "dice_loss": dice_loss,
                  "weighted_heatmap_mse": weighted_heatmap_mse, "wing_loss": wing_loss,
                  "smooth_l1_loss": smooth_l1_loss, "IntegralCoordinates": IntegralCoordinates}


# --- U-Nets ---------------------------------------------------------------------------------

def _conv_bn(x, filters: int, n_convs: int, name: str):
    for i in range(n_convs):
        x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal", name=f"{name}_conv{i + 1}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i + 1}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i + 1}")(x)
    return x


def build_unet_seed(input_size=(256, 256), n_filters: int = 64, dropout: float = 0.0) -> keras.Model:
    """The study's U-Net: 4 down blocks (2× conv3×3+BN+ReLU, max-pool), bottleneck (×16 filters),
    up blocks = transposed conv + skip concat + 3 convs (2 in the last), 1×1 sigmoid, 1 channel.
    At 256×256×1 and 64 filters: 37,636,801 parameters (37,623,233 trainable)."""
    inputs = keras.Input((*input_size, 1), name="image")
    x = inputs
    skips = []
    for level, mult in enumerate((1, 2, 4, 8)):
        x = _conv_bn(x, n_filters * mult, 2, f"down{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level + 1}")(x)
        if dropout:
            x = layers.Dropout(dropout)(x)
    x = _conv_bn(x, n_filters * 16, 2, "bottleneck")
    for level, mult in enumerate((8, 4, 2, 1)):
        x = layers.Conv2DTranspose(n_filters * mult, 3, strides=2, padding="same", name=f"up{level + 1}_tconv")(x)
        x = layers.Concatenate(name=f"up{level + 1}_concat")([x, skips[-(level + 1)]])
        if dropout:
            x = layers.Dropout(dropout)(x)
        x = _conv_bn(x, n_filters * mult, 2 if mult == 1 else 3, f"up{level + 1}")
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
    return keras.Model(inputs, outputs, name="unet_seed")


def build_unet_heatmap(input_size=(384, 160), base_filters: int = 12, depth: int = 4) -> keras.Model:
    """Lean U-Net with one linear output channel per landmark (Gaussian heatmaps at input
    resolution); input keeps the ROI aspect (600:250 = 384:160). Widths base·2^level."""
    inputs = keras.Input((*input_size, 1), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = _conv_bn(x, base_filters * 2 ** level, 2, f"down{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level + 1}")(x)
    x = _conv_bn(x, base_filters * 2 ** depth, 2, "bottleneck")
    for level in reversed(range(depth)):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level + 1}_resize")(x)
        x = layers.Concatenate(name=f"up{level + 1}_concat")([x, skips[level]])
        x = _conv_bn(x, base_filters * 2 ** level, 2, f"up{level + 1}")
    outputs = layers.Conv2D(N_LANDMARKS, 1, name="heatmaps")(x)
    return keras.Model(inputs, outputs, name="unet_heatmap")


# --- InceptionResNetV2 ----------------------------------------------------------------------

IMAGENET_NOTOP = "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"


def imagenet_weights_path() -> Path | None:
    """Local ImageNet weights for InceptionResNetV2 (no top), or None. Never downloads.

    Looked up in ``$CVS_IMAGENET_WEIGHTS`` then the standard Keras cache (``~/.keras/models``)."""
    candidates = []
    if os.environ.get("CVS_IMAGENET_WEIGHTS"):
        candidates.append(Path(os.environ["CVS_IMAGENET_WEIGHTS"]))
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    candidates.append(keras_home / "models" / IMAGENET_NOTOP)
    return next((p for p in candidates if p.is_file()), None)


def _backbone(input_shape, imagenet: bool | None):
    """InceptionResNetV2 without top. ``imagenet=None``: use local weights when present."""
    weights_path = imagenet_weights_path() if imagenet in (None, True) else None
    if imagenet is True and weights_path is None:
        raise FileNotFoundError(f"ImageNet weights requested but {IMAGENET_NOTOP} is not in ~/.keras/models "
                                "or $CVS_IMAGENET_WEIGHTS (this tool never downloads)")
    backbone = keras.applications.InceptionResNetV2(
        include_top=False, weights=str(weights_path) if weights_path else None, input_shape=input_shape)
    backbone.imagenet_loaded = weights_path is not None
    return backbone


def build_inception_seed(input_size=(600, 250), imagenet: bool | None = None) -> keras.Model:
    """The study's model: frozen InceptionResNetV2 (no top) → Flatten → Dense 1024 ReLU → Dense 512
    ReLU → Dense 38 linear (raw pixel coordinates). At 600×250×3 the backbone ends in 17×6×1536 and
    the model has 215,314,182 parameters."""
    backbone = _backbone((*input_size, 3), imagenet)
    backbone.trainable = False
    inputs = keras.Input((*input_size, 3), name="image")
    x = backbone(inputs, training=False)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(1024, activation="relu", name="fc1")(x)
    x = layers.Dense(512, activation="relu", name="fc2")(x)
    outputs = layers.Dense(2 * N_LANDMARKS, name="coords")(x)
    model = keras.Model(inputs, outputs, name="inception_seed")
    model.imagenet_loaded = backbone.imagenet_loaded
    return model


def build_inception_gap(input_size=(384, 160), imagenet: bool | None = None,
                        trainable_backbone: bool = True, dropout: float = 0.2) -> keras.Model:
    """Improved regressor: InceptionResNetV2 → global average pooling → Dense 256 → Dense 38
    (normalised coordinates, 0..1 across the input). Backbone trainable by default (fine-tuning)."""
    backbone = _backbone((*input_size, 3), imagenet)
    backbone.trainable = trainable_backbone
    inputs = keras.Input((*input_size, 3), name="image")
    x = backbone(inputs)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(256, activation="relu", name="fc1")(x)
    outputs = layers.Dense(2 * N_LANDMARKS, name="coords")(x)
    model = keras.Model(inputs, outputs, name="inception_gap")
    model.imagenet_loaded = backbone.imagenet_loaded
    return model


def build_inception_integral(input_size=(384, 160), imagenet: bool | None = None, stride: int = 8,
                             head_filters: int = 192, trainable_backbone: bool = True) -> keras.Model:
    """NOT the study's model: InceptionResNetV2 with a soft-argmax (integral) heatmap head.

    The backbone's stride-16 features (``block17_20_ac``) and its last features (``conv_7b_ac``) are
    reduced by 1×1 convolutions, resized bilinearly to the grid ``input / stride`` (48×20 at 384×160,
    stride 8), concatenated, passed through two 3×3 convolutions and a 1×1 convolution to 19 logit
    maps; :class:`IntegralCoordinates` turns them into 38 normalised coordinates (0..1 across the
    input, like ``inception_gap``). Inputs ``(batch, h, w, 3)`` in [−1, 1]."""
    h, w = int(input_size[0]), int(input_size[1])
    if h % stride or w % stride:
        raise ValueError(f"input_size {input_size} must be a multiple of stride {stride}")
    backbone = _backbone((h, w, 3), imagenet)
    backbone.trainable = trainable_backbone
    features = keras.Model(backbone.input, [backbone.get_layer("block17_20_ac").output,
                                            backbone.get_layer("conv_7b_ac").output], name="backbone")
    grid = (h // stride, w // stride)
    inputs = keras.Input((h, w, 3), name="image")
    mid, deep = features(inputs)
    mid = layers.Conv2D(head_filters, 1, activation="relu", name="reduce_mid")(mid)
    deep = layers.Conv2D(head_filters, 1, activation="relu", name="reduce_deep")(deep)
    mid = layers.Resizing(*grid, interpolation="bilinear", name="grid_mid")(mid)
    deep = layers.Resizing(*grid, interpolation="bilinear", name="grid_deep")(deep)
    x = layers.Concatenate(name="fuse")([mid, deep])
    for i in range(2):
        x = layers.Conv2D(head_filters, 3, padding="same", use_bias=False, name=f"head_conv{i + 1}")(x)
        x = layers.BatchNormalization(name=f"head_bn{i + 1}")(x)
        x = layers.Activation("relu", name=f"head_relu{i + 1}")(x)
    logits = layers.Conv2D(N_LANDMARKS, 1, name="logits", dtype="float32")(x)
    outputs = IntegralCoordinates(name="coords")(logits)
    model = keras.Model(inputs, outputs, name="inception_integral")
    model.imagenet_loaded = backbone.imagenet_loaded
    return model


# The builders of the shipped architectures; ``cvs_core.architectures.ARCHITECTURES`` is the table
# the rest of the code reads (it names these functions).
BUILDERS = {
    "unet_seed": build_unet_seed,
    "unet_heatmap": build_unet_heatmap,
    "inception_seed": build_inception_seed,
    "inception_gap": build_inception_gap,
    "inception_integral": build_inception_integral,
}


def build_model(name: str, **kwargs) -> keras.Model:
    """Build architecture ``name`` (a key of ``cvs_core.architectures.ARCHITECTURES``) with builder
    keyword arguments."""
    from cvs_core.architectures import get_arch

    return get_arch(name).build(**kwargs)

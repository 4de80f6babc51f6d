"""Model folders: ``model.keras`` + ``manifest.json`` (docs/architecture.md#model-folders), shipped and user models,
and loading of the study's legacy ``.h5`` files.

Shipped models live in ``<repo>/models/<name>/``; models a user trains or uploads go to
``$CVS_HOME/models/<name>/`` (default ``<repo>/.cvs``), which git ignores.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


from cvs_core.fileio import (read_json, sha256_file, to_jsonable, write_json_atomic,  # noqa: F401 (re-exported)
                             write_text_atomic)
from cvs_core.landmarks import SCHEMA_VERSION

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODELS_DIR = REPO_ROOT / "models"
MANIFEST = "manifest.json"
LOCAL_MANIFEST = "manifest.local.json"  # written when packed weights are unpacked on this machine
WEIGHTS = "model.keras"
DEMO_MODELS = ("unet_heatmap", "inception_resnet_v2")


def cvs_home() -> Path:
    return Path(os.environ.get("CVS_HOME", REPO_ROOT / ".cvs"))


def user_models_dir() -> Path:
    return cvs_home() / "models"


class ModelError(ValueError):
    """A model folder or file that cannot be used, with the reason."""


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically, as strict JSON (:func:`to_jsonable`)."""
    write_text_atomic(Path(folder) / MANIFEST, json.dumps(to_jsonable(manifest), indent=2) + "\n")


def base_manifest(name: str, architecture: str, builder_kwargs: dict, preprocess, codec, **extra) -> dict:
    """Manifest fields every model folder has (docs/architecture.md#model-folders)."""
    import keras

    return {
        "name": name,
        "architecture": architecture,
        "builder_kwargs": builder_kwargs,
        "input_size": list(preprocess.input_size) if preprocess.input_size else None,
        "preprocess": preprocess.to_dict(),
        "codec": codec.to_dict(),
        "landmark_schema": SCHEMA_VERSION,
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def save_model_folder(model, folder: Path, manifest: dict) -> Path:
    """Write ``model.keras`` and ``manifest.json`` (with the weights' sha256) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / WEIGHTS)
    manifest = dict(manifest)
    manifest["weights_sha256"] = sha256_file(folder / WEIGHTS)
    manifest["n_params"] = int(model.count_params())
    write_manifest(folder, manifest)
    return folder


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ModelError(f"{folder} is not a model folder: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from exc
    missing = [k for k in ("architecture", "preprocess", "codec") if k not in manifest]
    if missing:
        raise ModelError(f"{path} lacks the field(s) {missing}")
    if manifest.get("landmark_schema", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise ModelError(f"{path}: landmark schema {manifest['landmark_schema']!r} is not {SCHEMA_VERSION!r}")
    return manifest


def resolve_model(name_or_dir: str | Path) -> Path:
    """A model name (user models first, then shipped) or a folder path → the folder."""
    p = Path(name_or_dir)
    if p.is_dir() and (p / MANIFEST).is_file():
        return p
    for base in (user_models_dir(), SHIPPED_MODELS_DIR):
        if (base / str(name_or_dir) / MANIFEST).is_file():
            return base / str(name_or_dir)
    known = ", ".join(m.name for m in list_models()) or "none"
    raise ModelError(f"no model named {str(name_or_dir)!r} (known: {known}); pass a model folder or a name")


@dataclass
class ModelInfo:
    name: str
    folder: Path
    manifest: dict
    shipped: bool

    @property
    def ready(self) -> bool:
        return (self.folder / WEIGHTS).is_file()


def list_models() -> list[ModelInfo]:
    """Every registered model (shipped first), skipping folders with unreadable manifests."""
    out = []
    for base, shipped in ((SHIPPED_MODELS_DIR, True), (user_models_dir(), False)):
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            if (folder / MANIFEST).is_file():
                try:
                    out.append(ModelInfo(folder.name, folder, read_manifest(folder), shipped))
                except ModelError:
                    continue
    return out


def load_keras_model(folder: Path, verify: bool = True):
    """Load ``model.keras`` of a model folder in safe mode, checking the sha256 in the manifest."""
    import keras

    from cvs_core.networks import CUSTOM_OBJECTS

    folder = Path(folder)
    manifest = read_manifest(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        if manifest.get("packed_weights"):
            unpack_model_folder(folder)
        else:
            raise ModelError(f"{weights} is missing")
    expected = manifest.get("weights_sha256")
    if expected is None and (folder / LOCAL_MANIFEST).is_file():
        expected = json.loads((folder / LOCAL_MANIFEST).read_text()).get("weights_sha256")
    if verify and expected and sha256_file(weights) != expected:
        raise ModelError(f"{weights} does not match the sha256 in its manifest (file changed or corrupt)")
    try:
        return keras.saving.load_model(weights, custom_objects=CUSTOM_OBJECTS, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - keras raises many types for bad files
        raise ModelError(f"could not load {weights}: {exc}") from exc


def load_legacy_h5(path: Path, architecture: str | None = None, builder_kwargs: dict | None = None):
    """Load one of the study's ``.h5`` files.

    A full model (architecture + weights, saved by TF 2.x Keras) loads with the Dice loss as a
    custom object and ``compile=False``. A weights-only file needs ``architecture`` (a
    ``cvs_core.architectures.ARCHITECTURES`` name) and its builder arguments, so the model is rebuilt, then filled.
    """
    import h5py
    import keras

    from cvs_core.architectures import get_arch
    from cvs_core.networks import CUSTOM_OBJECTS

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            full_model = "model_config" in f.attrs
    except OSError as exc:
        raise ModelError(f"{path.name} is not an HDF5 (.h5) file: {exc}") from exc
    if full_model:
        try:
            model = keras.saving.load_model(path, custom_objects={**CUSTOM_OBJECTS, **_legacy_layers()},
                                            compile=False)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"could not load the full model in {path.name}: {exc}") from exc
        return _with_standard_layers(model)
    if architecture is None:
        raise ModelError(f"{path.name} holds weights only; say which architecture it belongs to")
    from cvs_core.limits import LimitError, check_builder_kwargs
    try:  # bounded before building: {"n_filters": 1024} would allocate > 5 GB
        builder_kwargs = check_builder_kwargs(builder_kwargs)
        spec = get_arch(architecture)
    except (LimitError, ValueError) as exc:
        raise ModelError(str(exc)) from None
    model = spec.build(**(builder_kwargs or {}))
    try:
        model.load_weights(path)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"the weights in {path.name} do not fit {architecture} {builder_kwargs or ''}: {exc}") from exc
    return model


def _legacy_layers() -> dict:
    """Keras 3 stand-ins for layers whose TF 2.x configs carry arguments Keras 3 rejects."""
    import keras

    class Conv2DTranspose(keras.layers.Conv2DTranspose):
        def __init__(self, *args, groups=1, **kwargs):  # TF 2.x wrote groups=1; Keras 3 has no such argument
            if groups != 1:
                raise ModelError("grouped transposed convolutions are not supported")
            super().__init__(*args, **kwargs)

    return {"Conv2DTranspose": Conv2DTranspose}


def _with_standard_layers(model):
    """The same network with Keras' own classes in place of the :func:`_legacy_layers` stand-ins, so
    it saves as a ``.keras`` file that loads anywhere (safe mode, no custom classes)."""
    import keras

    if not any(type(layer).__module__ == __name__ for layer in model.layers):
        return model

    def clone(layer):
        if type(layer).__module__ == __name__:  # a stand-in: rebuild as the Keras layer it derives from
            return type(layer).__mro__[1].from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    standard = keras.models.clone_model(model, clone_function=clone)
    standard.set_weights(model.get_weights())
    return standard


def _check_new_name(name: str, overwrite: bool) -> Path:
    """The user-model folder for a new model ``name``; ModelError if the name is unusable or taken."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ModelError(f"invalid model name {name!r}")
    if name in DEMO_MODELS or (SHIPPED_MODELS_DIR / name).exists():
        raise ModelError(f"{name!r} is the name of a shipped model; choose another")
    dst = user_models_dir() / name
    if dst.exists() and not overwrite:
        raise ModelError(f"a model named {name!r} exists already")
    return dst


def register_model_folder(src: Path, name: str, overwrite: bool = False) -> Path:
    """Copy a model folder into the user models dir under ``name``."""
    dst = _check_new_name(name, overwrite)
    read_manifest(src)
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)
    manifest = read_manifest(dst)
    manifest["name"] = name
    write_manifest(dst, manifest)
    return dst


def register_model_file(source: Path | str | bytes, name: str, architecture: str, preset: str = "seed",
                        codec: str | None = None, builder_kwargs: dict | str | None = None,
                        source_name: str | None = None, overwrite: bool = False) -> Path:
    """Register a model file someone uploaded: a Keras 3 ``.keras`` (loaded in safe mode, so it
    cannot run code) or one of the study's ``.h5`` files (full model, or weights only with
    ``architecture`` + ``builder_kwargs``). Returns the new user-model folder.

    source: a file path, or the file's bytes (then ``source_name`` gives its name and suffix).
    architecture: a ``cvs_core.architectures.ARCHITECTURES`` name; its ``preset`` gives the
        preprocessing (with the model's own input height, width and channels).
    codec: ``None`` (or a label starting with ``"auto"``) for the architecture's codec, else a
        ``cvs_core.architectures.CODEC_FACTORIES`` label.
    builder_kwargs: a dict or its JSON text (weights-only ``.h5`` files need it).
    The model's output shape must match the codec (mask ``(h, w, 1)``, heatmaps ``(h, w, 19)``,
    regression ``(38,)``). Errors are :class:`ModelError` messages naming the uploaded file, never
    a temporary path.
    """
    import tempfile

    from cvs_core.architectures import CODEC_FACTORIES, get_arch
    from cvs_core.preprocess import PreprocessConfig

    display = Path(source_name or ("upload" if isinstance(source, (bytes, bytearray)) else str(source))).name
    suffix = Path(display).suffix.lower()
    if suffix not in (".keras", ".h5"):
        raise ModelError(f"{display}: expected a .keras or .h5 file")
    dst = _check_new_name(name, overwrite)
    try:
        spec = get_arch(architecture)
        pre_dict = spec.preset(preset)["preprocess"]
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    if isinstance(builder_kwargs, str):
        try:
            builder_kwargs = json.loads(builder_kwargs or "{}")
        except json.JSONDecodeError as exc:
            raise ModelError(f"builder arguments are not valid JSON: {exc}") from None
    if not isinstance(builder_kwargs or {}, dict):
        raise ModelError("builder arguments must be a JSON object, e.g. {\"n_filters\": 64}")
    builder_kwargs = dict(builder_kwargs or {})
    if codec is None or codec.startswith("auto"):
        codec_factory = spec.codec
    elif codec in CODEC_FACTORIES:
        codec_factory = CODEC_FACTORIES[codec]
    else:
        raise ModelError(f"unknown codec {codec!r}; choose one of {sorted(CODEC_FACTORIES)}")

    with tempfile.TemporaryDirectory(prefix="cvs_upload_") as tmp:
        path = Path(tmp) / display
        if isinstance(source, (bytes, bytearray)):
            path.write_bytes(source)
        else:
            shutil.copyfile(source, path)
        try:
            model = _load_uploaded(path, display, architecture, builder_kwargs)
        except ModelError as exc:  # keep temporary paths out of the message
            raise ModelError(str(exc).replace(str(path), display).replace(tmp, "…")) from None
        try:
            h, w, c = (int(v) for v in model.input_shape[1:4])
        except (TypeError, ValueError):
            raise ModelError(f"{display}: the model's input shape {model.input_shape} is not a fixed "
                             "(height, width, channels) image") from None
        pre = PreprocessConfig.from_dict(pre_dict).replace(input_size=[h, w], channels=c)
        the_codec = codec_factory((h, w))
        out_shape = tuple(model.output_shape[1:])
        if out_shape != tuple(the_codec.output_shape):
            raise ModelError(f"{display}: the model outputs {out_shape}, but a {the_codec.kind} codec "
                             f"needs {tuple(the_codec.output_shape)}")
        manifest = base_manifest(
            name=name, architecture=architecture, builder_kwargs=builder_kwargs, preprocess=pre,
            codec=the_codec, training={"preset": preset, "data": {"source": f"uploaded file {display}"}},
            metrics={}, imagenet_weights=None, uploaded_from=display)
        folder = save_model_folder(model, Path(tmp) / "folder", manifest)
        return register_model_folder(folder, dst.name, overwrite=overwrite)


def _load_uploaded(path: Path, display: str, architecture: str, builder_kwargs: dict):
    """A Keras model from an uploaded ``.keras`` (safe mode) or ``.h5`` file."""
    import keras

    from cvs_core.networks import CUSTOM_OBJECTS

    if path.suffix == ".h5":
        return load_legacy_h5(path, architecture=architecture, builder_kwargs=builder_kwargs)
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ModelError(f"{display} is not a Keras 3 .keras file (a .keras file is a zip archive)")
    try:
        return keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - keras raises many types for bad files
        raise ModelError(f"could not load {display} (safe mode): {exc}") from None


def unpack_model_folder(folder: Path) -> Path:
    """Rebuild ``model.keras`` of a packed model folder (int8 shards, ``cvs_core.packing``) from its
    manifest; the file's sha256 goes to ``manifest.local.json`` (``model.keras`` embeds a save date,
    so its hash differs per machine and cannot be in the manifest). Returns the ``model.keras`` path."""
    from cvs_core.fileio import atomic_path
    from cvs_core.packing import model_from_packed

    folder = Path(folder)
    model = model_from_packed(folder, read_manifest(folder))
    with atomic_path(folder / WEIGHTS) as tmp:
        model.save(tmp)
    write_json_atomic(folder / LOCAL_MANIFEST, {"weights_sha256": sha256_file(folder / WEIGHTS)})
    return folder / WEIGHTS


def delete_model(name: str) -> None:
    """Delete a user model (shipped models cannot be deleted from the app).

    ``name`` must be a plain folder name whose folder resolves directly inside the user-models folder
    (no ``..``, separators, symlinks out); anything else raises :class:`ModelError`."""
    root = user_models_dir().resolve()
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name.startswith("."):
        raise ModelError(f"invalid model name {name!r}")
    folder = user_models_dir() / name
    if folder.is_symlink() or folder.resolve().parent != root:
        raise ModelError(f"model {name!r} is not inside the user-models folder {root}")
    if not (folder / MANIFEST).is_file():
        raise ModelError(f"no user model named {name!r} (shipped models cannot be deleted)")
    shutil.rmtree(folder)


def ensure_demo_models(verbose: bool = False) -> list[Path]:
    """Make sure each shipped demo model has its ``model.keras`` (unpacking packed weights)."""
    ready = []
    for name in DEMO_MODELS:
        folder = SHIPPED_MODELS_DIR / name
        if not (folder / MANIFEST).is_file():
            if verbose:
                print(f"demo model {name}: missing from {SHIPPED_MODELS_DIR}")
            continue
        manifest = read_manifest(folder)
        if not (folder / WEIGHTS).is_file() and manifest.get("packed_weights"):
            if verbose:
                print(f"demo model {name}: unpacking packed weights …")
            unpack_model_folder(folder)
        if verbose:
            print(f"demo model {name}: ready ({folder})")
        ready.append(folder)
    return ready

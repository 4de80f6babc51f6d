"""Int8 weight packing for models too big for git (the InceptionResNetV2 demo, 55 M parameters).

Each weight tensor with ≥ 2 dimensions is stored as int8 with one float32 scale per output channel
(last axis: ``w ≈ q · scale``, symmetric, |q| ≤ 127); 1-D tensors (biases, BatchNorm) stay float32.
Shards are ``weights.int8.partN.npz`` files under ``max_shard_bytes`` each. :func:`model_from_packed`
rebuilds the architecture from a manifest and loads the dequantised weights;
``registry.unpack_model_folder`` writes it as ``model.keras`` next to them (git-ignored), once.
This module imports nothing from ``registry`` (no import cycle).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cvs_core.fileio import sha256_file

SCHEME = "int8-per-output-channel-v1"


def quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w (..., C)`` float → ``(q int8 same shape, scale (C,) float32)``."""
    w = np.asarray(w, np.float32)
    flat = w.reshape(-1, w.shape[-1])
    scale = np.abs(flat).max(axis=0) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(flat / scale), -127, 127).astype(np.int8)
    return q.reshape(w.shape), scale.astype(np.float32)


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale


def pack_weights(model, folder: Path, max_shard_bytes: int = 15_000_000) -> dict:
    """Write the model's weights as int8 shards into ``folder``; returns the manifest entry."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = [{}]
    sizes = [0]
    for i, w in enumerate(model.get_weights()):
        if w.ndim >= 2:
            q, s = quantize(w)
            entry = {f"q{i}": q, f"s{i}": s}
        else:
            entry = {f"f{i}": np.asarray(w, np.float32)}
        nbytes = sum(a.nbytes for a in entry.values())
        if sizes[-1] and sizes[-1] + nbytes > max_shard_bytes:
            shards.append({})
            sizes.append(0)
        shards[-1].update(entry)
        sizes[-1] += nbytes
    files = []
    for k, arrays in enumerate(shards):
        path = folder / f"weights.int8.part{k}.npz"
        np.savez(path, **arrays)
        files.append({"file": path.name, "sha256": sha256_file(path)})
    return {"scheme": SCHEME, "n_tensors": len(model.get_weights()), "files": files}


def load_packed_weights(folder: Path, packed: dict) -> list[np.ndarray]:
    """Read and dequantise the shards listed in a manifest's ``packed_weights`` entry."""
    folder = Path(folder)
    if packed.get("scheme") != SCHEME:
        raise ValueError(f"unknown weight packing {packed.get('scheme')!r}")
    arrays: dict[str, np.ndarray] = {}
    for f in packed["files"]:
        path = folder / f["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (packed weights)")
        if sha256_file(path) != f["sha256"]:
            raise ValueError(f"{path} does not match its sha256 in the manifest")
        with np.load(path) as z:
            arrays.update({k: z[k] for k in z.files})
    out = []
    for i in range(packed["n_tensors"]):
        out.append(dequantize(arrays[f"q{i}"], arrays[f"s{i}"]) if f"q{i}" in arrays else arrays[f"f{i}"])
    return out


def model_from_packed(folder: Path, manifest: dict):
    """Rebuild a manifest's architecture (``cvs_core.architectures``) and fill it with the
    dequantised weights of its ``packed_weights`` shards in ``folder``."""
    from cvs_core.architectures import get_arch

    kwargs = dict(manifest.get("builder_kwargs", {}))
    if "input_size" in kwargs:
        kwargs["input_size"] = tuple(kwargs["input_size"])
    spec = get_arch(manifest["architecture"])
    if spec.pretrained_backbone:
        kwargs["imagenet"] = False  # weights come from the shards
    model = spec.build(**kwargs)
    model.set_weights(load_packed_weights(folder, manifest["packed_weights"]))
    return model

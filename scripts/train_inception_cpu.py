"""InceptionResNetV2 with the integral (soft-argmax) head, trained on 2 CPU cores in under an hour
(issue 9, when no GPU is lent): warm start + head training on cached backbone features.

    .venv/bin/python scripts/train_inception_cpu.py --work /tmp/inc_cpu --train 3000 --epochs 8

1. builds ``inception_integral`` (384×160 input, NOT the study's head) and copies the backbone
   weights of the shipped ``inception_resnet_v2`` (``inception_gap``: the same InceptionResNetV2
   backbone, trained on phantoms on a GPU; ``training`` in its manifest says how);
2. renders ``--train`` training phantoms through the training pipeline (``train.build_datasets``:
   fresh phantom seeds, a share ``--wide`` cut from wide phantoms, the ``--profile`` augmentation)
   plus ``--real-repeat`` augmented views of each labelled public image (``data/samples/train_data.csv``),
   and ``--val`` held-out validation phantoms (seeds 10,000,000+, never the scoring seed 999),
   and runs the frozen backbone over them once (float16 features in memory);
3. trains the head alone on those features (``--epochs``, AdamW, the architecture's wing loss,
   warm-up + cosine), keeping the epoch with the lowest validation MRE;
4. saves the whole model as a registry folder (``--work/model``) whose manifest records how it was
   made (script, arguments, seconds, CPU), ready for ``scripts/score_demo_models.py``-style scoring
   and int8 packing (``--pack DIR``).

Why cached features: one backbone forward per image instead of one forward and backward per image
and epoch — about 6× less compute, which is what makes the head trainable here at all. The
backbone itself is not adapted (a GPU run of ``scripts/train_robust_models.py`` trains it end to end).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HEAD_LAYERS = ("reduce_mid", "reduce_deep", "grid_mid", "grid_deep", "fuse", "head_conv1", "head_bn1",
               "head_relu1", "head_conv2", "head_bn2", "head_relu2", "logits", "coords")


def warm_started_model(source: str, input_size):
    """``inception_integral`` with the backbone weights of the registered model ``source``."""
    import keras

    from cvs_core.networks import build_inception_integral
    from cvs_core.registry import load_keras_model, resolve_model

    src = load_keras_model(resolve_model(source))
    src_backbone = next(layer for layer in src.layers if isinstance(layer, keras.Model))
    model = build_inception_integral(tuple(input_size), imagenet=False)
    backbone = model.get_layer("backbone")
    # Layer by layer in build order, not by name: Keras numbers auto-named layers (conv2d_17 …) per
    # process, so names only match when both models were built first in a fresh process.
    src_layers = [layer for layer in src_backbone.layers if layer.weights]
    dst_layers = [layer for layer in backbone.layers if layer.weights]
    if len(src_layers) != len(dst_layers):
        raise ValueError(f"{source}: its backbone has {len(src_layers)} weighted layers, this one {len(dst_layers)}")
    for a, b in zip(src_layers, dst_layers):
        weights = a.get_weights()
        if type(a) is not type(b) or [w.shape for w in weights] != [tuple(w.shape) for w in b.weights]:
            raise ValueError(f"{source}: backbone layer {a.name} does not match {b.name}")
        b.set_weights(weights)
    return model, len(src_layers)


def head_model(model):
    """The layers after the backbone as a model of its two feature maps (shares the weights)."""
    import keras

    backbone = model.get_layer("backbone")
    mid_in = keras.Input(backbone.outputs[0].shape[1:], name="mid")
    deep_in = keras.Input(backbone.outputs[1].shape[1:], name="deep")
    get = model.get_layer
    mid = get("grid_mid")(get("reduce_mid")(mid_in))
    deep = get("grid_deep")(get("reduce_deep")(deep_in))
    x = get("fuse")([mid, deep])
    for i in (1, 2):
        x = get(f"head_relu{i}")(get(f"head_bn{i}")(get(f"head_conv{i}")(x)))
    return keras.Model([mid_in, deep_in], get("coords")(get("logits")(x)), name="integral_head")


def features_of(backbone, seq, limit_batches: int | None = None, label: str = ""):
    """Run the backbone over a LandmarkSequence: (mid float16 (N, …), deep float16 (N, …), y (N, 38))."""
    mids, deeps, ys = [], [], []
    n = len(seq) if limit_batches is None else min(len(seq), limit_batches)
    t0 = time.time()
    for b in range(n):
        x, y = seq[b]
        mid, deep = backbone(x, training=False)
        mids.append(np.asarray(mid, np.float16))
        deeps.append(np.asarray(deep, np.float16))
        ys.append(np.asarray(y, np.float32))
        if b % 20 == 0 or b == n - 1:
            print(f"{label} features {b + 1}/{n} batches, {time.time() - t0:.0f} s", flush=True)
    return np.concatenate(mids), np.concatenate(deeps), np.concatenate(ys)


def mre_roi_px(pred: np.ndarray, y: np.ndarray, roi_hw=(600, 250)) -> float:
    """Mean radial error in ROI pixels of normalised (x, y) coordinates ``(N, 38)`` (0..1 across the
    input, which is the ROI stretched)."""
    scale = np.array([roi_hw[1], roi_hw[0]], np.float64)
    d = (pred.reshape(-1, 19, 2) - y.reshape(-1, 19, 2)) * scale
    return float(np.linalg.norm(d, axis=-1).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="work folder (features are not written; the model is)")
    p.add_argument("--source", default="inception_resnet_v2",
                   help="registered model (name or folder) whose InceptionResNetV2 backbone starts this one; the "
                        "shipped model was made from the GAP model of scripts/train_demo_models.py "
                        "(/tmp/demo/run_inception/model), which git history keeps as models/inception_resnet_v2 "
                        "before 2026-11-29")
    p.add_argument("--train", type=int, default=3000, help="training phantoms (one augmented view each)")
    p.add_argument("--val", type=int, default=200, help="validation phantoms")
    p.add_argument("--wide", type=float, default=0.3, help="share of training phantoms cut from wide phantoms")
    p.add_argument("--profile", default="realistic", choices=["standard", "realistic"])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--input-size", type=int, nargs=2, default=[384, 160])
    p.add_argument("--real-repeat", type=int, default=100,
                   help="augmented views of each labelled public image (LC (1), LC (11)) among the training "
                        "images, as the shipped models were trained (0: phantoms only)")
    args = p.parse_args(argv)

    t_start = time.time()
    import keras

    from cvs_core.registry import base_manifest, read_manifest, resolve_model, save_model_folder
    from cvs_core.train import TrainConfig, build_datasets, builder_kwargs, loss_for, make_codec, warmup_cosine_lr

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    h, w = args.input_size
    pre = {"input_size": [h, w], "resize_first": False, "channels": 3, "scaling": "symmetric"}
    real = ({"csv": [str(REPO / "data" / "samples" / "train_data.csv")],
             "images": [str(REPO / "data" / "samples" / "roi")], "repeat_csv": [args.real_repeat]}
            if args.real_repeat > 0 else {})
    cfg = TrainConfig(model="inception_integral", preset="improved", phantoms=args.train, val_phantoms=args.val,
                      **real,
                      augment_profile=args.profile, wide_phantoms=args.wide, seed=args.seed, batch_size=16,
                      epochs=args.epochs, lr=args.lr, preprocess=pre, lr_schedule="warmup_cosine",
                      warmup_epochs=1, name="inception_resnet_v2")
    codec = make_codec(cfg)
    train_seq, val_seq, data_summary = build_datasets(cfg, codec)

    model, copied = warm_started_model(args.source, (h, w))
    print(f"backbone: {copied} layers copied from {args.source}", flush=True)
    backbone = model.get_layer("backbone")
    t = time.time()
    tr_mid, tr_deep, tr_y = features_of(backbone, train_seq, label="train")
    va_mid, va_deep, va_y = features_of(backbone, val_seq, label="val")
    features_s = time.time() - t
    print(f"features: {len(tr_y)} train, {len(va_y)} val in {features_s:.0f} s", flush=True)

    head = head_model(model)
    loss, _ = loss_for(cfg)
    head.compile(optimizer=keras.optimizers.AdamW(args.lr, weight_decay=1e-4), loss=loss)
    rng = np.random.default_rng(args.seed)
    best, best_weights, history = float("inf"), None, []
    t = time.time()
    for epoch in range(args.epochs):
        lr = warmup_cosine_lr(epoch, args.lr, args.epochs, 1)
        head.optimizer.learning_rate.assign(lr)
        order = rng.permutation(len(tr_y))
        losses = []
        for i in range(0, len(order), args.batch):
            idx = order[i:i + args.batch]
            losses.append(float(head.train_on_batch([tr_mid[idx].astype(np.float32), tr_deep[idx].astype(np.float32)],
                                                    tr_y[idx])))
        pred = head.predict([va_mid.astype(np.float32), va_deep.astype(np.float32)], batch_size=64, verbose=0)
        val = mre_roi_px(pred, va_y)
        history.append({"epoch": epoch + 1, "lr": lr, "loss": float(np.mean(losses)), "val_mre_px": val,
                        "s": round(time.time() - t, 1)})
        print(json.dumps(history[-1]), flush=True)
        if val < best:
            best, best_weights = val, head.get_weights()
    head.set_weights(best_weights)
    head_s = time.time() - t

    data_summary.pop("phantoms_per_epoch", None)  # one fixed augmented set, its features reused every epoch
    data_summary.update(phantoms=args.train, note=(
        f"one fixed set of {len(tr_y)} augmented images whose backbone features were computed once and reused "
        "every epoch — not fresh phantoms per epoch"))
    source_manifest = read_manifest(resolve_model(args.source))
    training = {
        "preset": "improved", "epochs_run": args.epochs, "config": json.loads(cfg.to_json()), "data": data_summary,
        "mixed_precision": False,
        "recipe": ("CPU recipe (scripts/train_inception_cpu.py): InceptionResNetV2 backbone copied from the shipped "
                   f"{args.source} ({source_manifest.get('architecture')}, trained on phantoms on a GPU: see its "
                   "training record below) and kept frozen; the integral head trained on cached backbone features "
                   f"of {len(tr_y)} augmented images ({args.real_repeat} views of each labelled public image, the rest "
                   f"phantoms; {args.profile} profile, {args.wide:.0%} wide crops) for "
                   f"{args.epochs} epochs, AdamW {args.lr:g} with warm-up + cosine, wing loss; best epoch by the "
                   f"validation MRE on {len(va_y)} held-out phantoms."),
        "history": history,
        "backbone_from": {"model": args.source, "architecture": source_manifest.get("architecture"),
                          "training": {k: source_manifest.get("training", {}).get(k)
                                       for k in ("preset", "epochs_run", "mixed_precision")},
                          "backend": source_manifest.get("backend")},
        "provenance": {"script": "scripts/train_inception_cpu.py", "argv": sys.argv[1:] if argv is None else argv,
                       "backend": keras.backend.backend(), "devices": [f"CPU × {os.cpu_count()}"],
                       "host": platform.node(), "features_s": round(features_s, 1), "head_s": round(head_s, 1),
                       "total_s": round(time.time() - t_start, 1),
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    manifest = base_manifest(name="inception_resnet_v2", architecture="inception_integral",
                             builder_kwargs=builder_kwargs(cfg), preprocess=cfg.preprocess_config(), codec=codec,
                             training=training, metrics={"best_val_mre_px": round(best, 3)},
                             imagenet_weights=False)
    folder = save_model_folder(model, work / "model", manifest)
    print(json.dumps({"model": str(folder), "best_val_mre_px": best, "total_s": time.time() - t_start}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

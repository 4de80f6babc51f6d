"""The ``cvs`` command line. Argument parsing only; every command calls into the library."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def _roi_arg(text: str):
    if text in ("none", "seed", "auto"):
        return text
    try:
        box = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--roi must be seed, none, auto or x0,y0,x1,y1; got {text!r}")
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"--roi box needs 4 numbers x0,y0,x1,y1; got {text!r}")
    return box


def _workers_arg(text: str) -> int:
    from cvs_core.limits import LimitError, check_eval_workers, limits

    try:
        return check_eval_workers(int(text))
    except (ValueError, LimitError):
        raise argparse.ArgumentTypeError(f"--workers must be between 1 and {limits().max_eval_workers} "
                                         f"(CVS_LIMIT_MAX_EVAL_WORKERS), got {text!r}") from None


MAX_SYNTH = 100_000  # phantoms per synth call (≈ 90 KB each on disk)


def cmd_synth(args) -> int:
    from cvs_core.synth import write_phantom_dataset

    out = Path(args.out)
    if not 1 <= args.n <= MAX_SYNTH:
        raise ValueError(f"--n must be between 1 and {MAX_SYNTH}, got {args.n}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (it will hold images/ and labels.csv)")
    csv_path = write_phantom_dataset(out, n=args.n, seed=args.seed, progress=not args.quiet)
    print(f"wrote {args.n} phantoms and {csv_path}")
    return 0


def cmd_predict(args) -> int:
    from cvs_core.imaging import read_image

    image = read_image(args.image)  # before TensorFlow and the model load: a bad file costs no memory
    if isinstance(args.roi, list):
        from cvs_core.limits import check_roi_box
        check_roi_box(args.roi, image.pixels.shape[:2])
    from cvs_core.predict import Predictor
    predictor = Predictor.load(args.model)
    spacing = args.spacing
    if spacing is None and image.spacing_mm is not None:  # DICOM header (row, col) mm/px
        spacing = float(np.mean(image.spacing_mm))
    result = predictor.predict_batch([image.pixels], roi=args.roi, spacing_mm=spacing, tta=not args.no_tta)[0]
    payload = result.to_json_dict()
    from cvs_core.landmarks import NAMES
    from cvs_core.predict import prediction_warnings
    payload["landmark_names"] = list(NAMES)
    payload["stage"] = _stage_payload(result)
    payload["warnings"] = prediction_warnings(image.pixels, result)
    for w in payload["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(payload))
    else:
        print(result.to_text())
        st = payload["stage"]
        if st.get("label"):
            print(f"stage {st['label']} ({st['fit']}){'' if st['reliable'] else ' — UNRELIABLE: ' + result.fit_message}"
                  f": {st['rationale']}")
        else:
            print(f"stage: none ({st['error']})")
    return 0


def _stage_payload(result) -> dict:
    """The CVM stage of a prediction's landmarks (shipped staging config), for ``cvs predict``."""
    from cvs_core.staging import agreement_text, stage_landmarks

    try:
        r = stage_landmarks(result.landmarks)
    except ValueError as exc:  # e.g. landmarks the model did not find
        return {"label": None, "error": str(exc)}
    return {"stage": r.stage, "label": r.label, "fit": r.fit, "reliable": bool(result.fit_ok),
            "rationale": r.rationale, "growth": r.growth, "agreement": agreement_text(r), "caveat": r.caveat}


def cmd_train(args) -> int:
    from cvs_core.train import TrainConfig, train

    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "csv", "images", "phantoms",
                                                "seed", "distribute", "val_phantoms")
                 if getattr(args, k, None) is not None}
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a run folder")
    if args.config:
        config = TrainConfig.from_json(Path(args.config).read_text())
        if overrides:
            config = config.replace(**overrides)
    elif args.resume and (out / "config.json").is_file():  # `cvs train --resume --out RUN`
        config = TrainConfig.from_json((out / "config.json").read_text())
        if overrides:
            config = config.replace(**overrides)
    else:
        # The data options must reach the constructor at once: TrainConfig validates that it has
        # training data in __post_init__, so TrainConfig(model, preset) alone always failed.
        config = TrainConfig(model=args.model, preset=args.preset, **overrides)
    import contextlib

    from cvs_core.runs import track_cli_run
    from cvs_core.train import is_chief
    # In a multi-worker run only the chief registers it (the other workers share its --out).
    tracking = track_cli_run(out, config, resume=args.resume) if is_chief() else contextlib.nullcontext()
    with tracking:
        train(config, out_dir=out, resume=args.resume, verbose=not args.quiet)
    return 0


def cmd_evaluate(args) -> int:
    from cvs_core.evaluate import evaluate_command

    return evaluate_command(args)


def cmd_stage(args) -> int:
    from cvs_core.staging import stage_command

    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a CSV file name (e.g. {Path(args.out) / 'stages.csv'})")

    return stage_command(args)


def cmd_stage_calibrate(args) -> int:
    from cvs_core.calibration import calibrate_command

    return calibrate_command(args)


def cmd_convert(args) -> int:
    from cvs_core.formats import convert_command

    return convert_command(args)


def cmd_ensure_models(args) -> int:
    from cvs_core.registry import ensure_demo_models

    ensure_demo_models(verbose=True)
    return 0


def _add_no_tta(s: argparse.ArgumentParser) -> None:
    s.add_argument("--no-tta", dest="no_tta", action="store_true",
                   help="skip the model's test-time shifts (InceptionResNetV2: 5 shifted copies per image, median "
                        "taken; ≈ 3× faster without, less accurate)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cvs", description="CVS Staging Lab: cervical landmarks and CVM staging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="render synthetic cervical-spine phantoms")
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("predict", help="find the 19 landmarks on one image")
    s.add_argument("--model", required=True, help="shipped model name (unet_heatmap, inception_resnet_v2, …) or a model folder")
    s.add_argument("image")
    s.add_argument("--roi", type=_roi_arg, default=None,
                   help="seed | none | auto | x0,y0,x1,y1 (default: the model's own; auto finds C2–C4 in a full cephalogram)")
    s.add_argument("--spacing", type=float, default=None,
                   help="mm per image pixel (default: the DICOM header's, else unknown); gives landmarks in mm")
    s.add_argument("--json", action="store_true")
    _add_no_tta(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("train", help="train a model (writes a run folder)")
    s.add_argument("--model", default="unet_heatmap")
    s.add_argument("--preset", default="improved", choices=["seed", "improved"])
    s.add_argument("--config", help="TrainConfig as JSON (overrides --model/--preset)")
    s.add_argument("--out", required=True, help="run folder")
    s.add_argument("--epochs", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--batch-size", dest="batch_size", type=int)
    s.add_argument("--csv", help="study-format CSV of landmarks")
    s.add_argument("--images", help="image folder for --csv")
    s.add_argument("--phantoms", type=int, help="number of phantoms generated on the fly")
    s.add_argument("--val-phantoms", dest="val_phantoms", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--distribute", choices=["none", "mirrored", "multiworker"])
    s.add_argument("--resume", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="evaluate models on a labelled dataset")
    s.add_argument("--model", action="append", required=True)
    s.add_argument("--csv", required=True)
    s.add_argument("--images", required=True)
    s.add_argument("--roi", type=_roi_arg, default=None,
                   help="seed | none | auto | x0,y0,x1,y1; with auto the labels are in the full image's pixels")
    s.add_argument("--spacing", type=float, default=0.25,
                   help="mm per label-frame pixel (default 0.25, nominal ROI); with --roi auto: of the full image")
    s.add_argument("--threshold", type=float, default=2.0, help="PCK threshold in mm (default 2.0)")
    s.add_argument("--out", required=True)
    s.add_argument("--no-cache", action="store_true")
    s.add_argument("--workers", type=_workers_arg, default=1,
                   help="CPU model processes sharing the cores (default 1); on 2 cores, --workers 2 predicts "
                        "≈ 1.4× faster once started (each loads its own copy of the model, ≈ 4 s for the U-Net: "
                        "worth it for a few hundred images or more; on a GPU keep 1)")
    _add_no_tta(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("stage", help="CVM stage (CS1–CS6) from landmark CSVs")
    s.add_argument("--csv", required=True)
    s.add_argument("--spacing", type=float, default=0.25, help="mm per pixel (default 0.25, nominal)")
    s.add_argument("--out", required=True)
    s.add_argument("--config", default=None,
                   help="staging config: default (calibrated on expert stages), learned, textbook, or a JSON from stage-calibrate")
    s.add_argument("--truth-column", dest="truth_column", default=None,
                   help="column with expert stages (e.g. cs_stage): also report agreement, kappa and the confusion matrix")
    s.set_defaults(func=cmd_stage)

    s = sub.add_parser("stage-calibrate", help="fit staging thresholds (or a learned model) to expert stages, with CV")
    s.add_argument("--csv", required=True, help="study CSV with an expert-stage column (13-landmark rows allowed)")
    s.add_argument("--out", required=True, help="config JSON to write (for cvs stage --config)")
    s.add_argument("--truth-column", dest="truth_column", default="cs_stage")
    s.add_argument("--method", choices=["rules", "learned"], default="rules",
                   help="rules: CS-table thresholds (default); learned: ordinal logistic model on the same measurements")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--objective", choices=["exact", "exact+within1", "kappa"], default="exact+within1")
    s.add_argument("--name", default=None, help="name stored in the config (default: calibrated / learned)")
    s.set_defaults(func=cmd_stage_calibrate)

    s = sub.add_parser("convert", help="convert iCVM text files or labelme JSON to the study CSV")
    s.add_argument("--from", dest="fmt", choices=["icvm", "labelme"], required=True)
    s.add_argument("inputs", nargs="+", help="files or folders (*.txt for icvm, *.json for labelme)")
    s.add_argument("--out", required=True, help="study CSV to write")
    s.add_argument("--facing", choices=["right", "left"], default="right",
                   help="labelme polygons: the side the patient faces (anterior side), default right")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("ensure-models", help="check the shipped demo models (build any that are missing)")
    s.set_defaults(func=cmd_ensure_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory (the input is too large for this machine; see cvs_core.limits)", file=sys.stderr)
        return 3
    except OSError as exc:  # permissions, disk full, a folder where a file was expected …
        print(f"error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - bad input must never end in a traceback
        if os.environ.get("CVS_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''} "
              f"(set CVS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

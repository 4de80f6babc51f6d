"""Staging vs expert stages on the iCVM-900 training cases: textbook vs calibrated vs learned.

    python bench/staging_agreement.py /path/to/icvm900_landmarks/train [--write-configs] [--seeds 0 1 2]

Reads the 720 iCVM text files (never copied anywhere), measures every staging method with
stratified 5-fold cross-validation (thresholds / model fitted inside each fold; the textbook
thresholds are applied as they are), prints a Markdown table, and with ``--write-configs``
fits each method on all cases and writes the shipped configs
``cvs_core/data/staging_{default,learned,textbook}.json`` with provenance and the measured
(cross-validated, fold seed 0) agreement. Also writes the confusion matrices of seed 0 under
``--report-dir`` (default bench/results/staging).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cvs_core import calibration, staging  # noqa: E402
from cvs_core.formats import read_icvm  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="folder of iCVM .txt files (e.g. .../icvm900_landmarks/train)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--write-configs", action="store_true", help="write cvs_core/data/staging_*.json")
    ap.add_argument("--report-dir", default=str(ROOT / "bench" / "results" / "staging"))
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    names, lms, extra = read_icvm([args.data])
    y = np.array([calibration.parse_stage(v) for v in extra["cs_stage"]])
    X = calibration.feature_matrix(lms, "corners")
    source = f"iCVM-900 training cases (LM-PCVMNet release), {len(y)} cases, 13 landmarks + expert CS stage"
    print(f"{len(y)} cases from {args.data}; stage counts "
          + ", ".join(f"CS{s} {c}" for s, c in zip(range(1, 7), np.bincount(y, minlength=7)[1:])))

    methods = {
        "textbook (McNamara & Franchi thresholds)": ("textbook", None),
        "calibrated rules (shipped default)": ("rules", calibration.CalibrationOptions(method="rules", folds=args.folds)),
        "learned ordinal logistic": ("learned", calibration.CalibrationOptions(method="learned", folds=args.folds)),
    }
    tb = staging.StagingConfig(body_points="corners")
    rows, seed0 = [], {}
    for label, (key, opts) in methods.items():
        reps = []
        for seed in args.seeds:
            o = opts if opts is not None else calibration.CalibrationOptions(folds=args.folds)
            o = replace(o, seed=seed)
            pred = calibration.cross_validate(X, y, o, fixed=tb if key == "textbook" else None)
            cv_label = (f"stratified {args.folds}-fold CV, seed {seed}"
                        + (", nothing fitted" if key == "textbook" else ", fitted inside each fold"))
            reps.append(calibration.agreement(y, pred, cv_label))
        seed0[key] = reps[0]
        ex = [r["exact"] for r in reps]
        w1 = [r["within_one"] for r in reps]
        kq = [r["kappa_qw"] for r in reps]
        rows.append((label, ex, w1, kq))
        print(f"  {label}: " + reps[0]["summary"], flush=True)

    print()
    print(f"| staging | exact | within one | quadratic κ | (seeds {', '.join(map(str, args.seeds))}: exact / within one) |")
    print("|---|---|---|---|---|")
    for label, ex, w1, kq in rows:
        spread = "; ".join(f"{e:.1%} / {w:.1%}" for e, w in zip(ex, w1))
        print(f"| {label} | {ex[0]:.1%} | {w1[0]:.1%} | {kq[0]:.3f} | {spread} |")

    rep_dir = Path(args.report_dir)
    for key, rep in seed0.items():
        calibration.write_agreement_report(rep, rep_dir / f"{key}_cv", f"{key}: CV agreement with experts (iCVM-900 train)")
    print(f"\nconfusion matrices (seed {args.seeds[0]}) in {rep_dir}")

    if args.write_configs:
        cmd = f"python bench/staging_agreement.py DATA --write-configs --seeds {' '.join(map(str, args.seeds))}"
        rules_cfg = None
        for key, opts in (("rules", methods["calibrated rules (shipped default)"][1]),
                          ("learned", methods["learned ordinal logistic"][1])):
            opts = replace(opts, seed=args.seeds[0])
            cfg = calibration.fit(X, y, opts)
            if key == "rules":
                rules_cfg = cfg
            else:  # explain a learned stage with the calibrated thresholds
                cfg = replace(rules_cfg, method="learned", learned=cfg.learned)
            cfg.name = "calibrated" if key == "rules" else "learned"
            cfg.agreement = seed0[key]
            cfg.provenance = {
                "fitted_on": source, "n_cases": int(len(y)),
                "method": ("coordinate search of the CS-table thresholds maximising exact + within-one agreement"
                           if key == "rules" else f"proportional-odds ordinal logistic regression, L2 {opts.l2:g}"),
                "measurements": list(staging.FEATURES) + ["H and W from the corners (body_points='corners')"],
                "validation": seed0[key]["method"], "date": time.strftime("%Y-%m-%d"), "command": cmd,
                "note": "the 180 test cases of the split were not used",
            }
            name = "staging_default.json" if key == "rules" else "staging_learned.json"
            staging.save_config(cfg, staging.DATA_DIR / name)
            print(f"wrote {staging.DATA_DIR / name}: {cfg.thresholds_text()}")
        tcfg = staging.StagingConfig(name="textbook", agreement=seed0["textbook"], provenance={
            "thresholds": "McNamara & Franchi 2018 (concavity 0.07 from PMC8964471 Table 1; square 0.9–1.1); "
                          "trapezoid AH/PH 0.85 is an engineering default",
            "agreement_measured_on": source + " (nothing fitted; H and W from the corners as the data has 13 landmarks)",
            "date": time.strftime("%Y-%m-%d"), "command": cmd})
        staging.save_config(tcfg, staging.DATA_DIR / "staging_textbook.json")
        print(f"wrote {staging.DATA_DIR / 'staging_textbook.json'}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

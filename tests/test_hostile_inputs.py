"""The catalogue of bad inputs from issue 14, through the CLI and the library: each gives a clear
message and a non-zero exit code (CLI) or a ValueError subclass naming the problem (library) —
never a traceback, never a write outside the data directory, and memory stays bounded."""
from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvs_core import cli, limits, registry, runs
from cvs_core.imaging import ImageError, read_image

REPO = Path(__file__).resolve().parents[1]
ROI_JPG = REPO / "data" / "samples" / "roi" / "LC (1).jpg"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CVS_HOME", str(tmp_path / "cvs"))
    return tmp_path / "cvs"


@pytest.fixture(scope="module")
def float_tiff(tmp_path_factory) -> Path:
    """A zlib TIFF of 7000×7000 float64 RGBA (1.5 GB decoded) written tile by tile (≈ 1.7 MB on disk)."""
    import tifffile

    path = tmp_path_factory.mktemp("bomb") / "bomb.tif"
    tile = np.zeros((512, 512, 4), np.float64)
    n_tiles = ((7000 + 511) // 512) ** 2
    tifffile.imwrite(path, (tile for _ in range(n_tiles)), shape=(7000, 7000, 4), dtype=np.float64, tile=(512, 512),
                     compression="zlib", photometric="rgb", extrasamples=["unassalpha"])
    assert path.stat().st_size < 5 * 2 ** 20
    return path


def run_cli(*args, env_home: Path | None = None) -> tuple[int, str, str, float]:
    """Run ``cvs`` in a child process; returns (exit code, stdout, stderr, child peak RSS in MB)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    if env_home is not None:
        env["CVS_HOME"] = str(env_home)
    # VmHWM: this process's peak RSS (ru_maxrss would include the forking pytest process's memory)
    code = ("import sys; from cvs_core.cli import main; rc = main(sys.argv[1:]); "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print(f'@@RSS {hwm}', file=sys.stderr); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    rss = [ln for ln in out.stderr.splitlines() if ln.startswith("@@RSS")]
    stderr = "\n".join(ln for ln in out.stderr.splitlines() if not ln.startswith("@@RSS"))
    return out.returncode, out.stdout, stderr, (int(rss[0].split()[1]) / 1024 if rss else float("nan"))


def assert_clean_error(rc: int, stderr: str, *needles: str) -> None:
    assert rc != 0
    assert "Traceback" not in stderr, stderr
    last = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert last, stderr
    for n in needles:
        assert n in stderr, stderr


# ----------------------------------------------------------------------------- CLI
def test_predict_huge_roi_box_is_refused_before_any_allocation():
    rc, _, err, rss = run_cli("predict", "--model", "unet_heatmap", "--roi", "0,0,100000,100000", str(ROI_JPG))
    assert_clean_error(rc, err, "far larger than the 250×600 image")
    assert rss < 400, f"{rss:.0f} MB"  # it took 10.7 GB before


def test_predict_dev_zero_is_refused_at_once():
    rc, _, err, rss = run_cli("predict", "--model", "unet_heatmap", "/dev/zero")
    assert_clean_error(rc, err, "not a regular file")
    assert rss < 400, f"{rss:.0f} MB"  # it took 11.4 GB before


def test_predict_float64_rgba_tiff_is_refused_from_its_header(float_tiff):
    rc, _, err, rss = run_cli("predict", "--model", "unet_heatmap", str(float_tiff))
    assert_clean_error(rc, err, "would decode to 1.5 GB", "CVS_LIMIT_MAX_DECODED_BYTES")
    assert rss < 400, f"{rss:.0f} MB"  # +2.4 GB per upload before


def test_predict_thin_strip_png(tmp_path):
    path = tmp_path / "strip.png"
    cv2.imwrite(str(path), np.full((10, 10000), 128, np.uint8))
    rc, _, err, _ = run_cli("predict", "--model", "unet_heatmap", str(path))
    assert_clean_error(rc, err, "10000×10", "aspect ratio")


def test_synth_bad_arguments(tmp_path):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("keep me")
    rc, _, err, _ = run_cli("synth", "--n", "2", "--out", str(a_file), "--quiet")
    assert_clean_error(rc, err, "is a file")
    assert a_file.read_text() == "keep me"
    for n in ("-1", "0"):
        rc, out, err, _ = run_cli("synth", "--n", n, "--out", str(tmp_path / "ph"), "--quiet")
        assert_clean_error(rc, err, "--n must be between 1")
        assert "wrote" not in out and not (tmp_path / "ph").exists()


def test_stage_out_is_a_directory(tmp_path):
    rc, _, err, _ = run_cli("stage", "--csv", str(REPO / "data" / "samples" / "train_data.csv"), "--out", str(tmp_path))
    assert_clean_error(rc, err, "is a folder")


def test_unexpected_errors_are_one_line_not_a_traceback(monkeypatch, capsys):
    def boom(args):
        raise cv2.error("OpenCV(4.x) /src/drawing.cpp:1: error: (-215:Assertion failed)")
    monkeypatch.setattr(cli, "cmd_stage", boom)  # build_parser looks it up when main() runs
    rc = cli.main(["stage", "--csv", "x.csv", "--out", "y.csv"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: error: OpenCV") and "CVS_DEBUG" in err and "Traceback" not in err


def test_train_without_config_as_the_readme_shows(home, tmp_path, monkeypatch, capsys):
    """`cvs train --model … --phantoms N … --out DIR` (no --config) used to fail "no training data"
    because TrainConfig(model, preset) was validated before the data options were applied."""
    import cvs_core.train as train_mod

    seen = {}

    def fake_train(config, out_dir, resume=False, verbose=True):
        seen.update(config=config, out=out_dir, resume=resume)
        return out_dir / "model"

    monkeypatch.setattr(train_mod, "train", fake_train)
    rc = cli.main(["train", "--model", "unet_heatmap", "--preset", "improved", "--phantoms", "512",
                   "--val-phantoms", "64", "--epochs", "20", "--out", str(tmp_path / "u1")])
    assert rc == 0, capsys.readouterr().err
    c = seen["config"]
    assert (c.model, c.phantoms, c.val_phantoms, c.epochs) == ("unet_heatmap", 512, 64, 20)
    rc = cli.main(["train", "--model", "unet_seed", "--preset", "seed", "--csv", str(REPO / "data/samples/train_data.csv"),
                   "--images", str(REPO / "data/samples/roi"), "--out", str(tmp_path / "study")])
    assert rc == 0 and seen["config"].csv.endswith("train_data.csv") and seen["config"].epochs == 1000
    rc = cli.main(["train", "--out", str(tmp_path / "nothing")])  # really no data: a clear message
    assert rc == 2 and "no training data" in capsys.readouterr().err


# ----------------------------------------------------------------------------- library
def test_library_image_guards(float_tiff, tmp_path):
    with pytest.raises(ImageError, match="would decode to"):
        read_image(float_tiff)
    with pytest.raises(limits.LimitError):
        read_image(float_tiff)
    with pytest.raises(ImageError, match="not a regular file"):
        read_image("/dev/zero")
    ok, png = cv2.imencode(".png", np.full((10, 10000), 7, np.uint8))
    with pytest.raises(ImageError, match="aspect ratio"):
        read_image(png.tobytes(), name="strip.png")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 2048)
    os.environ["CVS_LIMIT_MAX_FILE_BYTES"] = "1024"
    try:
        with pytest.raises(ImageError, match="per-file limit"):
            read_image(big)
    finally:
        del os.environ["CVS_LIMIT_MAX_FILE_BYTES"]
    assert read_image(ROI_JPG).pixels.shape == (600, 250)  # a normal image still reads


def test_ground_truth_coordinates_are_bounded():
    truth = np.tile([[100.0, 300.0]], (19, 1))
    assert limits.check_landmarks(truth, (600, 250)).shape == (19, 2)
    huge = truth.copy()
    huge[3, 0] = 1e300
    with pytest.raises(limits.LimitError, match="landmark 4 at \\(1e\\+300, 300\\) is far outside the 250×600 image"):
        limits.check_landmarks(huge, (600, 250))
    with pytest.raises(limits.LimitError, match="finite"):
        limits.check_landmarks(np.full((19, 2), np.inf))
    # what the guard prevents: OpenCV refuses such coordinates with cv2.error (a traceback on Compare)
    with pytest.raises((cv2.error, OverflowError)):
        cv2.circle(np.zeros((10, 10), np.uint8), (int(1e300), 3), 2, 255)


def test_blank_image_prediction_is_flagged():
    from cvs_core.predict import Predictor, prediction_warnings

    predictor = Predictor.load("unet_heatmap")
    blank = np.zeros((600, 250), np.uint8)
    warnings = prediction_warnings(blank, predictor.predict(blank))
    assert any("blank" in w for w in warnings) and any("low confidence" in w for w in warnings)
    real = read_image(ROI_JPG).pixels
    assert prediction_warnings(real, predictor.predict(real)) == []


def test_names_are_escaped():
    from cvs_core.access import safe_label, safe_markdown

    assert safe_label("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert "<" not in safe_label("a\u202e<script>") and "\u202e" not in safe_label("a\u202e<script>")
    assert safe_markdown("[x](javascript:alert(1))").startswith("\\[x\\]\\(javascript\\:")
    assert len(safe_label("n" * 500)) == 80


def test_delete_model_cannot_leave_the_user_models_folder(home, tmp_path):
    victim = home / "x"
    victim.mkdir(parents=True)
    (victim / "manifest.json").write_text("{}")
    outside = tmp_path / "outside_model"
    outside.mkdir()
    (outside / "manifest.json").write_text("{}")
    registry.user_models_dir().mkdir(parents=True, exist_ok=True)
    (registry.user_models_dir() / "link").symlink_to(outside)
    for name in ("../../x", "../x", "..", ".", "", "a/b", "/etc", "link"):
        with pytest.raises(registry.ModelError):
            registry.delete_model(name)
    assert (victim / "manifest.json").is_file() and (outside / "manifest.json").is_file()


def test_weights_only_h5_with_huge_builder_args_is_refused_before_building(tmp_path):
    import h5py

    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("layers")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(registry.ModelError, match="n_filters=1024 must be an integer in 1…128"):
        registry.load_legacy_h5(path, architecture="unet_seed", builder_kwargs={"n_filters": 1024})
    with pytest.raises(registry.ModelError, match="input_size"):
        registry.load_legacy_h5(path, architecture="unet_seed", builder_kwargs={"input_size": [100000, 100000]})
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200 * 1024  # KB: nothing was built


def _zip(entries: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_high_ratio_zip_is_refused_and_leaves_nothing(home, monkeypatch):
    # 150:1 per member passes the per-member check (200:1) but not the whole-archive ratio (50:1)
    rng = np.random.default_rng(0)
    chunk = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    member = (chunk + b"\0" * 300_000) * 40  # ≈ 12 MB, compresses ≈ 100–200:1
    data = _zip({"labels.csv": "image_name,1_x\n", "blob.bin": member})
    ratio = len(member) / len(data)
    assert 50 < ratio < 200, ratio
    with pytest.raises(runs.DatasetZipError, match="zip bomb"):
        runs.extract_dataset_zip(data)
    uploads = home / "uploads"
    assert not uploads.exists() or not any(p for p in uploads.iterdir())


def test_temporary_dataset_is_always_deleted(home):
    csv = (REPO / "data/samples/train_data.csv").read_text().splitlines()
    rows = [csv[0]] + [r for r in csv[1:] if r.startswith("LC (1).jpg")]
    data = _zip({"labels.csv": "\n".join(rows) + "\n", "images/LC (1).jpg": ROI_JPG.read_bytes()})
    with runs.temporary_dataset(data) as (csv_path, images):
        assert (images / "LC (1).jpg").is_file()
        folder = csv_path.parents[1]
    assert not folder.exists()
    with pytest.raises(RuntimeError):
        with runs.temporary_dataset(data) as (csv_path, images):
            folder = csv_path.parents[1]
            raise RuntimeError("the page failed half-way")
    assert not folder.exists()
    assert not any((home / "tmp").iterdir())


HOSTILE_SCRIPT = r"""
import io, json, sys, zipfile
import numpy as np, psutil, cv2
from pathlib import Path
from cvs_core import runs
from cvs_core.imaging import read_image
from cvs_core.limits import LimitError
idle = psutil.Process().memory_info().rss / 2**20
tiff = Path(sys.argv[1]).read_bytes()
ok, strip = cv2.imencode(".png", np.full((10, 10000), 9, np.uint8))
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
    chunk = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    zf.writestr("labels.csv", "image_name,1_x\n")
    zf.writestr("blob.bin", (chunk + b"\0" * 300_000) * 40)
refused = 0
for _ in range(3):
    for src, name in ((tiff, "bomb.tif"), (strip.tobytes(), "strip.png"), ("/dev/zero", None)):
        try:
            read_image(src, name=name)
        except (ValueError, LimitError):
            refused += 1
    try:
        runs.extract_dataset_zip(buf.getvalue())
    except ValueError:
        refused += 1
peak = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024
print(json.dumps({"idle_mb": idle, "peak_mb": peak, "refused": refused}))
"""


def test_hostile_uploads_keep_memory_within_1_5x_idle(float_tiff, tmp_path):
    """The issue's acceptance: memory within 1.5× of idle through the hostile uploads (measured in a
    fresh process: its RSS after imports vs its peak RSS after three rounds of every hostile input)."""
    import json

    env = dict(os.environ, PYTHONPATH=str(REPO), CVS_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-c", HOSTILE_SCRIPT, str(float_tiff)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"hostile uploads: idle {m['idle_mb']:.0f} MB, peak {m['peak_mb']:.0f} MB")
    assert m["refused"] == 12
    assert m["peak_mb"] < 1.5 * m["idle_mb"], m

"""Background training runs: one separate process per run, all state on disk.

A run lives in ``$CVS_HOME/runs/<run_id>/``::

    config.json    the TrainConfig (written here and again by train())
    run.json       bookkeeping: pid, process start time, command, created, cancel request
    status.json    written by train(): {status: running|succeeded|failed|cancelled, epoch, epochs, best, …}
    metrics.csv    one row per finished epoch (written by train())
    log.txt        the process's stdout + stderr
    checkpoints/   best.keras, last.keras
    model/         the exported model folder (after success)

The process is ``python -m cvs_core.cli train --config config.json --out <run dir>``, started in its
own session (``start_new_session=True``) so it survives the app's script reruns, browser refreshes
and even an app restart, and so ``cancel`` can signal its whole process group. Because nothing is
kept in memory, :func:`list_runs` reconstructs everything from the folders; a run whose process has
gone without writing a final status is reported as ``failed`` with ``error="process exited"``.

Also here: :func:`extract_dataset_zip`, the safe extraction of an uploaded dataset zip (CSV + images)
into ``$CVS_HOME/uploads/`` where a run's process can read it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path, PurePosixPath

import pandas as pd

from cvs_core.registry import REPO_ROOT, cvs_home, read_json, register_model_folder, write_json_atomic

FINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("starting", "running")

_CHILDREN: dict[str, subprocess.Popen] = {}  # processes started by this interpreter (reaped on poll)


def runs_dir() -> Path:
    """``$CVS_HOME/runs`` (created on demand)."""
    d = cvs_home() / "runs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_dir(run_id: str) -> Path:
    """The folder of a run; raises ``ValueError`` for ids that are not plain folder names or unknown runs."""
    if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
        raise ValueError(f"invalid run id {run_id!r}")
    d = runs_dir() / run_id
    if not d.is_dir():
        raise ValueError(f"no run {run_id!r} in {runs_dir()}")
    return d


# ----------------------------------------------------------------------------- process bookkeeping
def _proc_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (Linux ``/proc/<pid>/stat`` field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()[0]


def _alive(run_id: str, info: dict) -> bool:
    """Whether the run's process is still running (zombies and reused pids count as gone)."""
    child = _CHILDREN.get(run_id)
    if child is not None:
        return child.poll() is None
    pid = info.get("pid")
    if not pid:
        return False
    if Path("/proc").is_dir():
        state = _proc_state(pid)
        if state is None or state in ("Z", "X"):
            if state == "Z":
                try:  # our own child from an earlier import of this module: reap it
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            return False
        started = info.get("start_ticks")
        return started is None or _proc_start_ticks(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exit_code(run_id: str) -> int | None:
    child = _CHILDREN.get(run_id)
    return None if child is None else child.returncode


# ----------------------------------------------------------------------------- public API
def new_run_id(model: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{model}-{secrets.token_hex(2)}"


def max_active_runs() -> int:
    """How many training processes may run at once (``$CVS_MAX_ACTIVE_RUNS``, default 2): a hosted
    lab shares its cores, and every run takes a whole process."""
    try:
        return max(1, int(os.environ.get("CVS_MAX_ACTIVE_RUNS", "2")))
    except ValueError:
        return 2


class RunLimitError(ValueError):
    """Too many runs are active to start another."""


def start_run(config, run_id: str | None = None) -> str:
    """Start training ``config`` (a ``TrainConfig``) in a separate process; returns the run id.

    Raises :class:`RunLimitError` when ``max_active_runs()`` runs are already starting or running.

    The process runs ``python -m cvs_core.cli train --config <run>/config.json --out <run>`` from the
    repository root, in a new session, with stdout and stderr appended to ``<run>/log.txt``."""
    active = [r["id"] for r in list_runs() if r["status"] in ACTIVE]
    if len(active) >= max_active_runs():
        raise RunLimitError(f"{len(active)} training run(s) are already active ({', '.join(active)}); the limit "
                            f"is {max_active_runs()} (CVS_MAX_ACTIVE_RUNS). Wait for one to finish or cancel one.")
    run_id = run_id or new_run_id(config.model)
    d = runs_dir() / run_id
    d.mkdir(parents=True, exist_ok=False)
    (d / "config.json").write_text(config.to_json())
    write_json_atomic(d / "status.json", {"status": "starting", "epoch": 0, "epochs": config.epochs,
                                    "updated": time.time()})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env["CVS_HOME"] = str(cvs_home())
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, "-m", "cvs_core.cli", "train", "--config", str(d / "config.json"), "--out", str(d)]
    with open(d / "log.txt", "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _CHILDREN[run_id] = proc
    write_json_atomic(d / "run.json", {
        "id": run_id, "pid": proc.pid, "pgid": proc.pid, "start_ticks": _proc_start_ticks(proc.pid),
        "created": _dt.datetime.now().isoformat(timespec="seconds"), "cmd": cmd,
        "model": config.model, "name": config.name, "cancel_requested": False,
    })
    return run_id


def run_info(run_id: str) -> dict:
    """Everything known about one run, reconciled with its process.

    Keys: id, status (starting|running|succeeded|failed|cancelled), status_text (e.g. "failed
    (process exited)"), epoch, epochs, progress (0..1), best (best validation MRE in ROI px, or
    None), created, model, name, pid, alive, error, model_dir (after success)."""
    d = run_dir(run_id)
    info = read_json(d / "run.json")
    status = read_json(d / "status.json")
    config = read_json(d / "config.json")
    state = status.get("status", "starting")
    alive = _alive(run_id, info) if info else False
    error = status.get("error")
    if state in ACTIVE and not alive and info:
        status = read_json(d / "status.json")  # it may have written its final status just now
        state = status.get("status", "starting")
        if state in ACTIVE:
            if info.get("cancel_requested"):
                state, error = "cancelled", None
                write_json_atomic(d / "status.json", {**status, "status": state, "updated": time.time()})
            else:
                code = _exit_code(run_id)
                error = "process exited" + (f" with code {code}" if code is not None else "")
                state = "failed"
                write_json_atomic(d / "status.json", {**status, "status": state, "error": error,
                                                "updated": time.time()})
    epochs = status.get("epochs") or config.get("epochs") or 0
    epoch = status.get("epoch") or 0
    if state == "succeeded":
        epoch = max(epoch, _metrics_epochs(d))
    text = state
    if state == "failed" and error:
        text = f"failed ({error if len(error) < 60 else error[:57] + '…'})"
    return {
        "id": run_id, "status": state, "status_text": text, "epoch": int(epoch), "epochs": int(epochs),
        "progress": 1.0 if state == "succeeded" else (min(1.0, epoch / epochs) if epochs else 0.0),
        "best": status.get("best"), "created": info.get("created") or _mtime_iso(d),
        "model": config.get("model", info.get("model")), "name": config.get("name"),
        "pid": info.get("pid"), "alive": alive, "error": error,
        "model_dir": str(d / "model") if (d / "model" / "manifest.json").is_file() else None,
        "registered_as": info.get("registered_as"),
    }


def _mtime_iso(path: Path) -> str:
    return _dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")


def _metrics_epochs(d: Path) -> int:
    try:
        return max(0, sum(1 for _ in open(d / "metrics.csv")) - 1)
    except OSError:
        return 0


def list_runs() -> list[dict]:
    """All runs, newest first, each as :func:`run_info` returns it."""
    out = []
    for d in runs_dir().iterdir():
        if d.is_dir() and ((d / "run.json").is_file() or (d / "status.json").is_file()):
            try:
                out.append(run_info(d.name))
            except ValueError:
                continue
    return sorted(out, key=lambda r: (r["created"] or "", r["id"]), reverse=True)


def read_metrics(run_id: str) -> pd.DataFrame:
    """The run's ``metrics.csv`` (one row per finished epoch); empty frame when there is none yet."""
    path = run_dir(run_id) / "metrics.csv"
    if not path.is_file():
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError):
        return pd.DataFrame()


def log_tail(run_id: str, n: int = 40, max_bytes: int = 65536) -> str:
    """The last ``n`` lines of the run's log (reads at most the last ``max_bytes``)."""
    path = run_dir(run_id) / "log.txt"
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        text = f.read().decode("utf-8", errors="replace")
    lines = [ln.split("\r")[-1] for ln in text.splitlines()]
    return "\n".join(lines[-n:])


def cancel(run_id: str, wait_s: float = 0.0) -> dict:
    """Ask a run to stop: SIGTERM to its process group (train() stops after the current batch and
    writes ``cancelled``). With ``wait_s`` > 0, wait that long and then SIGKILL whatever is left.
    Returns the run's info afterwards."""
    d = run_dir(run_id)
    info = read_json(d / "run.json")
    if not info or not _alive(run_id, info):
        return run_info(run_id)
    info["cancel_requested"] = True
    write_json_atomic(d / "run.json", info)
    try:
        os.killpg(info.get("pgid", info["pid"]), signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.time() + wait_s
    while wait_s > 0 and time.time() < deadline and _alive(run_id, info):
        time.sleep(0.2)
    if wait_s > 0 and _alive(run_id, info):
        try:
            os.killpg(info.get("pgid", info["pid"]), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        time.sleep(0.2)
    return run_info(run_id)


def register_run_model(run_id: str, name: str, overwrite: bool = False) -> Path:
    """Register a succeeded run's exported model (``<run>/model``) as user model ``name``."""
    d = run_dir(run_id)
    if run_info(run_id)["status"] != "succeeded":
        raise ValueError(f"run {run_id} has not succeeded; only a finished run's model can be registered")
    folder = register_model_folder(d / "model", name, overwrite=overwrite)
    info = read_json(d / "run.json")
    info["registered_as"] = name
    write_json_atomic(d / "run.json", info)
    return folder


def delete_run(run_id: str) -> None:
    """Delete a finished run's folder (running runs must be cancelled first)."""
    d = run_dir(run_id)
    if run_info(run_id)["status"] in ACTIVE:
        raise ValueError(f"run {run_id} is still active; cancel it first")
    shutil.rmtree(d)


# ----------------------------------------------------------------------------- uploaded datasets
MAX_ZIP_BYTES = 500 * 2 ** 20        # compressed upload
MAX_UNPACKED_BYTES = 2 * 2 ** 30     # all members together, uncompressed
MAX_MEMBERS = 20_000
MAX_RATIO = 200                      # uncompressed / compressed, per member (zip bombs)


class DatasetZipError(ValueError):
    """An uploaded dataset zip that cannot be used; the message says why."""


def _safe_member_path(name: str) -> PurePosixPath | None:
    """The member's relative path, or None for directories; raises for absolute or escaping paths."""
    norm = name.replace("\\", "/")
    if norm.endswith("/"):
        return None
    p = PurePosixPath(norm)
    if p.is_absolute() or norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise DatasetZipError(f"zip member {name!r} has an absolute path")
    if any(part == ".." for part in p.parts):
        raise DatasetZipError(f"zip member {name!r} points outside the archive (..)")
    if any(part.startswith("__MACOSX") for part in p.parts):
        return None
    return p


def extract_dataset_zip(data: bytes, dest_root: Path | None = None) -> tuple[Path, Path]:
    """Safely extract an uploaded dataset zip (one study-format CSV + its images).

    Rejects absolute paths and ``..``, symlinks, more than ``MAX_MEMBERS`` files, a total
    uncompressed size over ``MAX_UNPACKED_BYTES`` and members compressed more than ``MAX_RATIO``:1
    (zip bombs); sizes are counted while extracting, not trusted from the header. Extracts into
    ``dest_root/<sha256 prefix>/`` (default ``$CVS_HOME/uploads``); the same zip extracts once.
    Returns ``(csv path, image folder)``: the CSV (``labels.csv`` preferred, else the only/shallowest
    ``.csv``) and the folder holding the images its ``image_name`` column names."""
    if len(data) > MAX_ZIP_BYTES:
        raise DatasetZipError(f"the zip is {len(data) / 2**20:.0f} MB; the limit is {MAX_ZIP_BYTES // 2**20} MB")
    digest = hashlib.sha256(data).hexdigest()[:16]
    root = Path(dest_root) if dest_root else cvs_home() / "uploads"
    dest = root / digest
    if not (dest / ".complete").is_file():
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise DatasetZipError(f"not a valid zip file: {exc}") from None
        members = zf.infolist()
        if len(members) > MAX_MEMBERS:
            raise DatasetZipError(f"the zip has {len(members)} entries; the limit is {MAX_MEMBERS}")
        declared = sum(m.file_size for m in members)
        if declared > MAX_UNPACKED_BYTES:
            raise DatasetZipError(f"the zip unpacks to {declared / 2**30:.1f} GB; the limit is "
                                  f"{MAX_UNPACKED_BYTES / 2**30:.0f} GB")
        tmp = root / f".{digest}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        total = 0
        try:
            for m in members:
                rel = _safe_member_path(m.filename)
                if rel is None:
                    continue
                if (m.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DatasetZipError(f"zip member {m.filename!r} is a symbolic link")
                if m.file_size > 1024 and m.compress_size and m.file_size / m.compress_size > MAX_RATIO:
                    raise DatasetZipError(f"zip member {m.filename!r} is compressed {m.file_size // m.compress_size}:1 "
                                          f"(limit {MAX_RATIO}:1) — refusing a possible zip bomb")
                target = tmp.joinpath(*rel.parts)
                if not str(target.resolve()).startswith(str(tmp.resolve()) + os.sep):
                    raise DatasetZipError(f"zip member {m.filename!r} points outside the archive")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > MAX_UNPACKED_BYTES:
                            raise DatasetZipError("the zip unpacks to more than its declared size limit")
                        out.write(chunk)
        except zipfile.BadZipFile as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetZipError(f"corrupt zip: {exc}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / ".complete").write_text("ok")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return _locate_dataset(dest)


def _locate_dataset(folder: Path) -> tuple[Path, Path]:
    csvs = sorted((p for p in folder.rglob("*.csv") if not p.name.startswith(".")),
                  key=lambda p: (p.name != "labels.csv", len(p.parts), str(p)))
    if not csvs:
        raise DatasetZipError("the zip holds no .csv file (expected the study format image_name,1_x,…,19_y)")
    csv_path = csvs[0]
    try:
        first = pd.read_csv(csv_path, nrows=5)["image_name"].astype(str).tolist()
    except (KeyError, ValueError, pd.errors.ParserError) as exc:
        raise DatasetZipError(f"{csv_path.name}: not a study CSV (needs an image_name column): {exc}") from None
    candidates = [csv_path.parent, csv_path.parent / "images"]
    candidates += sorted({p.parent for p in folder.rglob("*") if p.is_file() and p.name in set(first)})
    for c in candidates:
        if first and all((c / n).is_file() for n in first[:3]):
            return csv_path, c
    raise DatasetZipError(f"could not find the images named in {csv_path.name} (e.g. {first[:1]}) in the zip")

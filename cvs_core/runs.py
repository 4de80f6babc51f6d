"""Background training runs: one separate process per run, all state on disk.

A run lives in ``$CVS_HOME/runs/<run_id>/``::

    config.json    the TrainConfig (written here and again by train())
    run.json       bookkeeping: pid, process start time, command, created, cancel request
    status.json    written by train(): {status: running|succeeded|failed|cancelled|interrupted, epoch, …}
    metrics.csv    one row per finished epoch (written by train())
    log.txt        the process's stdout + stderr
    checkpoints/   last.keras, best-eNNNN.keras + best.json (its score and epoch), best.keras (a copy)
    model/         the exported model folder (after success)

The process is ``python -m cvs_core.cli train --config config.json --out <run dir>``, started in its
own session (``start_new_session=True``) so it survives the app's script reruns, browser refreshes
and even an app restart, and so ``cancel`` can signal its whole process group. Nothing is kept in
memory: :func:`list_runs` reconstructs everything from the folders and from the run registry.

The run registry is an SQLite database (``$CVS_HOME/runs.sqlite``, WAL mode, stdlib ``sqlite3``):
one row per run with its folder, owner, host, pid, status, epoch, best score and a **heartbeat**
that a thread in the training process refreshes every ``HEARTBEAT_S`` seconds. Runs started from
the command line (``cvs train --out DIR``, also outside ``$CVS_HOME/runs``) register themselves
(:func:`track_cli_run`), so the app lists them too. A run whose process has gone (dead pid on this
host, or a heartbeat older than ``$CVS_HEARTBEAT_STALE_S`` for a run on another host) without a
final status is marked ``interrupted``; :func:`resume_run` (or ``cvs train --resume --out DIR``)
continues it from its last checkpoint, keeping its best checkpoint and score.

Why not MLflow: its SQLite tracking store needs the full ``mlflow`` package (mlflow-skinny alone
pulls 28 packages into the shared environment — databricks-sdk, fastapi, opentelemetry, pydantic,
cryptography … — and the SQL store adds SQLAlchemy, Alembic and Flask), and a tracker records
params and metrics but does not supervise processes: heartbeats, dead-pid detection, cancel and
resume would still be ours. The per-epoch metrics are in ``metrics.csv`` and TensorBoard logs.

Also here: :func:`extract_dataset_zip`, the safe extraction of an uploaded dataset zip (CSV + images)
into ``$CVS_HOME/uploads/`` where a run's process can read it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path, PurePosixPath

import pandas as pd

from cvs_core.registry import REPO_ROOT, cvs_home, read_json, register_model_folder, write_json_atomic

FINAL = ("succeeded", "failed", "cancelled", "interrupted")
ACTIVE = ("starting", "running")
RESUMABLE = ("interrupted", "failed", "cancelled")
HEARTBEAT_S = 5.0

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
    if d.is_dir():
        return d
    row = _db_get(run_id)
    if row and Path(row["dir"]).is_dir():
        return Path(row["dir"])
    raise ValueError(f"no run {run_id!r} in {runs_dir()} or the run registry")


# ----------------------------------------------------------------------------- run registry (SQLite)
_COLUMNS = ("id", "dir", "status", "pid", "start_time", "host", "owner", "created", "heartbeat", "epoch",
            "epochs", "best", "error", "resumes", "model")


def registry_path() -> Path:
    """``$CVS_HOME/runs.sqlite``: the run registry."""
    return cvs_home() / "runs.sqlite"


def _db() -> sqlite3.Connection:
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, dir TEXT NOT NULL, status TEXT, pid INTEGER, "
                 "start_time REAL, host TEXT, owner TEXT, created TEXT, heartbeat REAL, epoch INTEGER, "
                 "epochs INTEGER, best REAL, error TEXT, resumes INTEGER DEFAULT 0, model TEXT)")
    have = {row["name"] for row in conn.execute("PRAGMA table_info(runs)")}
    for column, kind in (("start_time", "REAL"),):  # registries written by earlier versions
        if column not in have:
            conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
    return conn


def _db_upsert(run_id: str, **values) -> None:
    values = {k: v for k, v in values.items() if k in _COLUMNS and k != "id"}
    with contextlib.closing(_db()) as conn:
        conn.execute("INSERT OR IGNORE INTO runs (id, dir) VALUES (?, ?)", (run_id, values.get("dir", "")))
        if values:
            conn.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                         (*values.values(), run_id))


def _db_get(run_id: str) -> dict | None:
    try:
        with contextlib.closing(_db()) as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    except sqlite3.Error:
        return None
    return dict(row) if row else None


def _db_all() -> list[dict]:
    try:
        with contextlib.closing(_db()) as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM runs")]
    except sqlite3.Error:
        return []


def _db_delete(run_id: str) -> None:
    with contextlib.closing(_db()) as conn:
        conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))


def heartbeat_stale_s() -> float:
    """Seconds without a heartbeat after which a run on another host counts as gone
    (``$CVS_HEARTBEAT_STALE_S``, default 60)."""
    try:
        return max(2 * HEARTBEAT_S, float(os.environ.get("CVS_HEARTBEAT_STALE_S", "60")))
    except ValueError:
        return 60.0


def beat(run_id: str, d: Path) -> None:
    """One heartbeat: the time now plus status, epoch and best from ``status.json``."""
    status = read_json(d / "status.json")
    _db_upsert(run_id, dir=str(d), heartbeat=time.time(), status=status.get("status"), epoch=status.get("epoch"),
               epochs=status.get("epochs"), best=status.get("best"), error=status.get("error"))


class _Heartbeat(threading.Thread):
    def __init__(self, run_id: str, d: Path):
        super().__init__(name=f"cvs-heartbeat-{run_id}", daemon=True)
        self.run_id, self.d, self.stop = run_id, d, threading.Event()

    def run(self):
        while not self.stop.wait(HEARTBEAT_S):
            try:
                beat(self.run_id, self.d)
            except (sqlite3.Error, OSError):
                pass  # a busy or read-only registry must not stop training


def run_id_for_dir(d: Path) -> str:
    """The id of the run in folder ``d``: its name under ``$CVS_HOME/runs``, else the id the registry
    holds for that folder, else ``<folder name>-<hash of its path>``."""
    d = Path(d).resolve()
    if d.parent == runs_dir().resolve():
        return d.name
    for row in _db_all():
        if row["dir"] and Path(row["dir"]).resolve() == d:
            return row["id"]
    return f"{d.name}-{hashlib.sha1(str(d).encode()).hexdigest()[:6]}"


@contextlib.contextmanager
def track_cli_run(out_dir: Path, config, resume: bool = False, owner: str | None = None):
    """Register the training that runs inside this block (in this process) in the run registry.

    Writes ``run.json`` with this process's pid (so a run resumed from the command line shows as
    running, not as a dead earlier process), refreshes the heartbeat every ``HEARTBEAT_S`` s from a
    thread, and records ``failed`` with the error when the block raises before ``train()`` wrote a
    final status. Used by ``cvs train``."""
    d = Path(out_dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    run_id = run_id_for_dir(d)
    info = read_json(d / "run.json")
    previous = _db_get(run_id) or {}
    pid = os.getpid()
    if info.get("pid") and info["pid"] != pid and _alive(run_id, info):
        raise ValueError(f"run {run_id} ({d}) is already being trained by process {info['pid']}; "
                         f"cancel it first or use another --out")
    info.update({"id": run_id, "pid": pid, "pgid": os.getpgid(pid), "start_time": _proc_start_time(pid),
                 "host": socket.gethostname(), "model": config.model, "name": config.name,
                 "cancel_requested": False, "cmd": info.get("cmd") or sys.argv})
    info.setdefault("created", _dt.datetime.now().isoformat(timespec="seconds"))
    if owner or "owner" not in info:
        info["owner"] = owner or info.get("owner") or os.environ.get("CVS_RUN_OWNER") or _local_user()
    write_json_atomic(d / "run.json", info)
    resumes = int(previous.get("resumes") or 0) + (1 if resume and previous else 0)
    _db_upsert(run_id, dir=str(d), pid=pid, start_time=info["start_time"], host=info["host"], owner=info["owner"],
               created=info["created"], heartbeat=time.time(), status="starting", epochs=config.epochs,
               error=None, resumes=resumes, model=config.model)
    hb = _Heartbeat(run_id, d)
    hb.start()
    try:
        yield run_id
    except BaseException as exc:
        status = read_json(d / "status.json")
        if status.get("status") in ACTIVE or not status:
            error = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            write_json_atomic(d / "status.json", {**status, "status": "failed", "error": error[:500],
                                                  "updated": time.time()})
        raise
    finally:
        hb.stop.set()
        try:
            beat(run_id, d)
        except (sqlite3.Error, OSError):
            pass


def _local_user() -> str:
    try:
        import getpass
        return getpass.getuser()
    except (KeyError, OSError):
        return "local"


# ----------------------------------------------------------------------------- process bookkeeping
def _proc_start_time(pid: int) -> float | None:
    """A process's start time (seconds since the epoch, ``psutil``), or None when it is gone.
    Together with the pid it tells a run's process from a later one that reused the pid."""
    import psutil
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):
        return None


def _alive(run_id: str, info: dict) -> bool:
    """Whether the run's process is still running (zombies and reused pids count as gone)."""
    import psutil

    child = _CHILDREN.get(run_id)
    if child is not None and child.pid == info.get("pid"):
        return child.poll() is None
    pid = info.get("pid")
    if not pid:
        return False
    if info.get("host") and info["host"] != socket.gethostname():  # another machine: only the heartbeat tells
        row = _db_get(run_id) or {}
        return bool(row.get("heartbeat")) and time.time() - row["heartbeat"] < heartbeat_stale_s()
    try:
        proc = psutil.Process(pid)
        status = proc.status()
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's process with that pid: it exists
        return True
    if status == psutil.STATUS_ZOMBIE:
        with contextlib.suppress(ChildProcessError, OSError):  # our own child from an earlier import: reap it
            os.waitpid(pid, os.WNOHANG)
        return False
    if status == psutil.STATUS_DEAD:
        return False
    expected = info.get("start_time")
    return expected is None or abs(started - float(expected)) < 0.05


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


def _check_capacity(owner: str | None) -> None:
    active = [r for r in list_runs() if r["status"] in ACTIVE]
    if len(active) >= max_active_runs():
        raise RunLimitError(f"{len(active)} training run(s) are already active ({', '.join(r['id'] for r in active)}); "
                            f"the limit is {max_active_runs()} (CVS_MAX_ACTIVE_RUNS). Wait for one to finish or cancel one.")
    if owner:
        from cvs_core.limits import limits
        mine = [r for r in active if r.get("owner") == owner]
        if len(mine) >= limits().max_jobs_per_user:
            raise RunLimitError(f"you already have {len(mine)} active run(s); the limit is "
                                f"{limits().max_jobs_per_user} per user (CVS_LIMIT_MAX_JOBS_PER_USER)")


def _spawn(run_id: str, d: Path, cmd: list[str], owner: str | None, extra: dict | None = None) -> None:
    """Start ``cmd`` for run ``run_id`` in its own session, log to ``d/log.txt``, record it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env["CVS_HOME"] = str(cvs_home())
    if owner:
        env["CVS_RUN_OWNER"] = owner
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(d / "log.txt", "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _CHILDREN[run_id] = proc
    info = read_json(d / "run.json")
    info.update({"id": run_id, "pid": proc.pid, "pgid": proc.pid, "start_time": _proc_start_time(proc.pid),
                 "host": socket.gethostname(), "cmd": cmd, "cancel_requested": False, **(extra or {})})
    if owner:
        info["owner"] = owner
    info.setdefault("created", _dt.datetime.now().isoformat(timespec="seconds"))
    write_json_atomic(d / "run.json", info)
    _db_upsert(run_id, dir=str(d), pid=proc.pid, start_time=info["start_time"], host=info["host"],
               owner=info.get("owner"), created=info["created"], heartbeat=time.time(), status="starting",
               error=None, model=info.get("model"))


def start_run(config, run_id: str | None = None, owner: str | None = None) -> str:
    """Start training ``config`` (a ``TrainConfig``) in a separate process; returns the run id.

    ``owner``: the user starting it (recorded; at most ``limits().max_jobs_per_user`` active runs each).
    Raises :class:`RunLimitError` when ``max_active_runs()`` runs are already starting or running.

    The process runs ``python -m cvs_core.cli train --config <run>/config.json --out <run>`` from the
    repository root, in a new session, with stdout and stderr appended to ``<run>/log.txt``."""
    _check_capacity(owner)
    run_id = run_id or new_run_id(config.model)
    d = runs_dir() / run_id
    d.mkdir(parents=True, exist_ok=False)
    (d / "config.json").write_text(config.to_json())
    write_json_atomic(d / "status.json", {"status": "starting", "epoch": 0, "epochs": config.epochs,
                                    "updated": time.time()})
    cmd = [sys.executable, "-m", "cvs_core.cli", "train", "--config", str(d / "config.json"), "--out", str(d)]
    _spawn(run_id, d, cmd, owner, {"model": config.model, "name": config.name,
                                   "created": _dt.datetime.now().isoformat(timespec="seconds")})
    return run_id


def resume_run(run_id: str, owner: str | None = None) -> str:
    """Continue an interrupted (or failed/cancelled) run from its last checkpoint, in a new process
    (``python -m cvs_core.cli train --resume --config <run>/config.json --out <run>``): the epochs done,
    the best checkpoint and its score are kept. The same as ``cvs train --resume --out <run>``.
    Returns the run id; raises ``ValueError`` when the run is active or succeeded."""
    d = run_dir(run_id)
    info = run_info(run_id)
    if info["status"] not in RESUMABLE:
        raise ValueError(f"run {run_id} is {info['status']}; only an interrupted, failed or cancelled run can be resumed")
    if not (d / "config.json").is_file():
        raise ValueError(f"run {run_id} has no config.json to resume from")
    _check_capacity(owner)
    write_json_atomic(d / "status.json", {**read_json(d / "status.json"), "status": "starting", "error": None,
                                          "updated": time.time()})
    cmd = [sys.executable, "-m", "cvs_core.cli", "train", "--resume", "--config", str(d / "config.json"),
           "--out", str(d)]
    _spawn(run_id, d, cmd, owner or info.get("owner"))
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
            else:
                # Gone without a final status: killed (SIGKILL, OOM, reboot) or crashed hard.
                code = _exit_code(run_id)
                error = ("process exited" + (f" with code {code}" if code is not None else "")
                         + " without a final status")
                state = "interrupted"
            write_json_atomic(d / "status.json", {**status, "status": state, "error": error,
                                                  "updated": time.time()})
            try:
                _db_upsert(run_id, dir=str(d), status=state, error=error)
            except sqlite3.Error:
                pass
    epochs = status.get("epochs") or config.get("epochs") or 0
    epoch = status.get("epoch") or 0
    if state == "succeeded":
        epoch = max(epoch, _metrics_epochs(d))
    text = state
    if state in ("failed", "interrupted") and error:
        text = f"{state} ({error if len(error) < 60 else error[:57] + '…'})"
    return {
        "id": run_id, "status": state, "status_text": text, "epoch": int(epoch), "epochs": int(epochs),
        "progress": 1.0 if state == "succeeded" else (min(1.0, epoch / epochs) if epochs else 0.0),
        "best": status.get("best"), "created": info.get("created") or _mtime_iso(d),
        "model": config.get("model", info.get("model")), "name": config.get("name"),
        "pid": info.get("pid"), "alive": alive, "error": error,
        "model_dir": str(d / "model") if (d / "model" / "manifest.json").is_file() else None,
        "registered_as": info.get("registered_as"), "owner": info.get("owner"), "dir": str(d),
        "resumable": state in RESUMABLE and (d / "config.json").is_file(),
        "resume_command": f"cvs train --resume --out {d}",
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
    out, seen = [], set()
    ids = [d.name for d in runs_dir().iterdir()
           if d.is_dir() and ((d / "run.json").is_file() or (d / "status.json").is_file())]
    ids += [row["id"] for row in _db_all() if row["dir"] and Path(row["dir"]).is_dir()]  # CLI runs elsewhere
    for run_id in ids:
        if run_id in seen:
            continue
        seen.add(run_id)
        try:
            out.append(run_info(run_id))
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
    """Delete a finished run's folder under ``$CVS_HOME/runs`` and its registry row (running runs must
    be cancelled first; a CLI run's folder elsewhere is left on disk, only its row goes)."""
    d = run_dir(run_id)
    if run_info(run_id)["status"] in ACTIVE:
        raise ValueError(f"run {run_id} is still active; cancel it first")
    if d.resolve().parent == runs_dir().resolve():
        shutil.rmtree(d)
    # A run trained elsewhere (`cvs train --out DIR`) is only forgotten: its folder is not ours to delete.
    _db_delete(run_id)


# ----------------------------------------------------------------------------- uploaded datasets
# The limits in force come from cvs_core.limits.limits() (CVS_LIMIT_* variables).
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


def open_checked_zip(data: bytes) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """Open an uploaded zip after the whole-archive checks (compressed size, member count, declared
    unpacked size, overall compression ratio). Raises :class:`DatasetZipError` naming the limit."""
    from cvs_core.limits import limits
    lim = limits()
    if len(data) > lim.max_zip_bytes:
        raise DatasetZipError(f"the zip is {len(data) / 2**20:.0f} MB; the limit is {lim.max_zip_bytes // 2**20} MB "
                              f"(CVS_LIMIT_MAX_ZIP_BYTES)")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise DatasetZipError(f"not a valid zip file: {exc}") from None
    members = zf.infolist()
    if len(members) > lim.max_zip_members:
        raise DatasetZipError(f"the zip has {len(members)} entries; the limit is {lim.max_zip_members}")
    declared = sum(m.file_size for m in members)
    if declared > lim.max_unpacked_bytes:
        raise DatasetZipError(f"the zip unpacks to {declared / 2**30:.2f} GB; the limit is "
                              f"{lim.max_unpacked_bytes / 2**30:.2f} GB (CVS_LIMIT_MAX_UNPACKED_BYTES)")
    if declared > 10 * 2 ** 20 and declared / max(1, len(data)) > lim.max_zip_total_ratio:
        raise DatasetZipError(f"the zip unpacks to {declared / max(1, len(data)):.0f}× its size (limit "
                              f"{lim.max_zip_total_ratio:g}:1, CVS_LIMIT_MAX_ZIP_TOTAL_RATIO) — refusing a "
                              f"possible zip bomb; images are already compressed, so a real dataset is near 1:1")
    return zf, members


def checked_member_path(m: zipfile.ZipInfo) -> PurePosixPath | None:
    """A member's safe relative path (None for folders and ``__MACOSX``); raises
    :class:`DatasetZipError` for absolute or escaping paths, symlinks and zip-bomb ratios."""
    from cvs_core.limits import limits
    rel = _safe_member_path(m.filename)
    if rel is None:
        return None
    if (m.external_attr >> 16) & 0o170000 == 0o120000:
        raise DatasetZipError(f"zip member {m.filename!r} is a symbolic link")
    ratio = limits().max_zip_member_ratio
    if m.file_size > 1024 and m.compress_size and m.file_size / m.compress_size > ratio:
        raise DatasetZipError(f"zip member {m.filename!r} is compressed {m.file_size // m.compress_size}:1 "
                              f"(limit {ratio:g}:1) — refusing a possible zip bomb")
    return rel


def extract_dataset_zip(data: bytes, dest_root: Path | None = None) -> tuple[Path, Path]:
    """Safely extract an uploaded dataset zip (one study-format CSV + its images).

    Rejects absolute paths and ``..``, symlinks, too many members, a total uncompressed size over
    the limit and members compressed beyond the ratio limit (zip bombs; :func:`open_checked_zip`,
    :func:`checked_member_path`); sizes are counted while extracting, not trusted from the header. Extracts into
    ``dest_root/<sha256 prefix>/`` (default ``$CVS_HOME/uploads``); the same zip extracts once.
    Returns ``(csv path, image folder)``: the CSV (``labels.csv`` preferred, else the only/shallowest
    ``.csv``) and the folder holding the images its ``image_name`` column names."""
    from cvs_core.limits import limits
    max_unpacked = limits().max_unpacked_bytes
    if len(data) > limits().max_zip_bytes:  # before hashing a huge upload
        open_checked_zip(data)
    digest = hashlib.sha256(data).hexdigest()[:16]
    root = Path(dest_root) if dest_root else cvs_home() / "uploads"
    dest = root / digest
    if not (dest / ".complete").is_file():
        zf, members = open_checked_zip(data)
        tmp = root / f".{digest}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        total = 0
        try:
            for m in members:
                rel = checked_member_path(m)
                if rel is None:
                    continue
                target = tmp.joinpath(*rel.parts)
                if not str(target.resolve()).startswith(str(tmp.resolve()) + os.sep):
                    raise DatasetZipError(f"zip member {m.filename!r} points outside the archive")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > max_unpacked:
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
        if dest_root is None:
            prune_uploads(keep=(dest,))
    else:
        os.utime(dest)  # recently used: pruned last
    try:
        return _locate_dataset(dest)
    except DatasetZipError:
        shutil.rmtree(dest, ignore_errors=True)  # unusable: do not keep it
        raise


@contextlib.contextmanager
def temporary_dataset(data: bytes):
    """Extract a dataset zip (as :func:`extract_dataset_zip`) into a fresh temporary folder under
    ``$CVS_HOME/tmp`` and delete it when the block ends, whatever happens (evaluation uploads)::

        with runs.temporary_dataset(zip_bytes) as (csv_path, image_dir):
            dataset = evaluate.load_dataset(csv_path, image_dir)
            ...  # use it fully inside the block
    """
    import tempfile
    base = cvs_home() / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="dataset-", dir=base))
    try:
        yield extract_dataset_zip(data, dest_root=folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def prune_uploads(keep: tuple[Path, ...] = ()) -> list[Path]:
    """Keep ``$CVS_HOME/uploads`` within ``limits().max_uploads_bytes``: delete the least recently used
    extracted datasets, never one an active run reads (its config names it) nor those in ``keep``."""
    from cvs_core.limits import evict_cache_folders, limits
    root = cvs_home() / "uploads"
    if not root.is_dir():
        return []
    in_use = set(keep)
    for r in list_runs():
        if r["status"] in ACTIVE:
            cfg = read_json(Path(r["dir"]) / "config.json")
            for p in [*(cfg.get("csv") if isinstance(cfg.get("csv"), list) else [cfg.get("csv")])]:
                if p and str(p).startswith(str(root)):
                    in_use.add(root / Path(p).relative_to(root).parts[0])
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "bundled_samples"]
    return evict_cache_folders(folders, limits().max_uploads_bytes, keep=tuple(in_use))


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

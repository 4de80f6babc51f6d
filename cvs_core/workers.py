"""Dataset prediction in several CPU worker processes, each with its share of the cores.

Why processes: on a CPU one model call does not use two cores well. Measured on the 2-core machine
(docs/benchmarks.md, "Evaluation throughput"): the U-Net takes 31 ms per image in one process with 2
threads, 45 ms with 1 thread, and two 1-thread processes side by side take 45 ms each, i.e. 22 ms per
image together. Threads in one process do not help: TensorFlow's intra-op pool is per process.

Each worker loads its own copy of the model (the time and memory of one model load: ≈ 4 s for the
U-Net on 2 cores, more for the InceptionResNetV2), reads its images from disk itself and sends back only
landmarks and confidences, so no image or heatmap crosses a process boundary::

    with WorkerPool("unet_heatmap", workers=2) as pool:        # starts and loads
        pset = evaluate.predict_dataset(pool, dataset)          # in place of a Predictor

Workers are CPU-only (they hide any GPU: on a GPU one process is the better choice). Worth it for
evaluations of a few hundred images or more; the app does not use it (a hosted server should not
start processes per user).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np

START_TIMEOUT_S = 600.0


class WorkerError(RuntimeError):
    """A worker failed to start, died, or raised while predicting (its message is kept)."""


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity, e.g. a container's limit), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _serve(folder: str, engine: str, threads: int, conn) -> None:
    """Worker main: load the model with ``threads`` TensorFlow threads, then answer requests
    ``(paths, kwargs)`` with ``("ok", landmarks (n, 19, 2), landmarks_roi (n, 19, 2), confidence (n, 19))``
    or ``("error", message)`` until ``None`` arrives or the parent goes away."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU workers: N processes must not each grab the GPU
    try:
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        from cvs_core.datasets import read_grey
        from cvs_core.predict import Predictor

        predictor = Predictor(Path(folder), engine=engine)
        conn.send(("ready", os.getpid()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        paths, kwargs = request
        try:
            results = predictor.predict_batch([read_grey(Path(p)) for p in paths], **kwargs)
            conn.send(("ok", np.stack([r.landmarks for r in results]), np.stack([r.landmarks_roi for r in results]),
                       np.stack([np.asarray(r.confidence, np.float64) for r in results])))
        except BaseException as exc:  # noqa: BLE001 - one bad image fails the request, not the worker
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class WorkerPool:
    """``workers`` processes each holding the model in ``name_or_dir`` (``threads`` TensorFlow threads
    each; default: the usable cores shared out). Quacks like a Predictor for
    :func:`cvs_core.evaluate.predict_dataset` and the cache key (``name``, ``folder``, ``manifest``,
    ``config``, ``codec``, ``tta``), read from the manifest without loading Keras here. ``start=False``
    starts the processes on the first :meth:`predict_paths` (nothing is started when every result comes
    from the cache). Close it (or use ``with``) to stop them; a call that fails or is interrupted
    closes the pool, so no stale reply can reach a later call."""

    def __init__(self, name_or_dir: str | Path, workers: int = 2, threads: int | None = None, engine: str = "tf",
                 start: bool = True):
        from cvs_core.codecs import codec_from_dict
        from cvs_core.preprocess import PreprocessConfig
        from cvs_core.registry import read_manifest, resolve_model
        from cvs_core.tta import TestTimeShifts

        from cvs_core.limits import check_eval_workers

        workers = check_eval_workers(workers)
        self.folder = Path(resolve_model(name_or_dir))
        self.manifest = read_manifest(self.folder)
        self.name = self.manifest.get("name", self.folder.name)
        self.config = PreprocessConfig.from_dict(self.manifest["preprocess"])
        self.codec = codec_from_dict(self.manifest["codec"])
        self.tta = TestTimeShifts.from_manifest(self.manifest)
        self.workers = workers
        self.threads = max(1, usable_cores() // self.workers) if threads is None else max(1, int(threads))
        self.engine = engine
        self._conns: list = []
        self._procs: list = []
        self._state = "new"
        if start:
            self.start()

    def start(self) -> None:
        """Start the processes and wait until each has loaded the model (no-op when running)."""
        from cvs_core.registry import WEIGHTS, unpack_model_folder

        if self._state == "running":
            return
        if self._state == "closed":
            raise WorkerError("the worker pool is closed")
        if self.manifest.get("packed_weights") and not (self.folder / WEIGHTS).is_file():
            unpack_model_folder(self.folder)  # once here, not by every worker at the same time
        ctx = mp.get_context("spawn")  # never fork a process that may already run TensorFlow threads
        try:
            for _ in range(self.workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(str(self.folder), self.engine, self.threads, child),
                                   daemon=True, name="cvs-eval-worker")
                self._conns.append(parent)
                self._procs.append(proc)
                proc.start()
                child.close()
            for i, conn in enumerate(self._conns):
                if not conn.poll(START_TIMEOUT_S):
                    raise WorkerError(f"evaluation worker {i} did not start within {START_TIMEOUT_S:.0f} s")
                msg = self._recv(i)
                if msg[0] != "ready":
                    raise WorkerError(f"evaluation worker {i} could not load {self.folder.name}: {msg[1]}")
        except BaseException:
            self.close()
            raise
        self._state = "running"

    def _recv(self, i: int):
        try:
            return self._conns[i].recv()
        except (EOFError, OSError):
            code = self._procs[i].exitcode
            raise WorkerError(f"evaluation worker {i} died (exit code {code})") from None

    def predict_paths(self, paths: list, batch_size: int = 8, progress=None, **kwargs):
        """Images on disk ``paths`` → ``(landmarks (n, 19, 2) original px, landmarks_roi (n, 19, 2),
        confidence (n, 19))``, in the order given. ``kwargs`` go to ``Predictor.predict_batch`` (``roi``,
        ``spacing_mm``, ``tta``). Requests of at most ``batch_size`` images (fewer when that leaves a worker
        idle), two in flight per worker; ``progress(done)`` after each."""
        n = len(paths)
        out = (np.full((n, 19, 2), np.nan), np.full((n, 19, 2), np.nan), np.full((n, 19), np.nan))
        if n == 0:
            return out
        self.start()
        size = max(1, min(int(batch_size), math.ceil(n / self.workers)))
        tasks = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
        queued: list[list[list[int]]] = [[] for _ in self._procs]  # per worker: tasks sent, oldest first
        nxt, done, error = 0, 0, None

        def send(w: int) -> None:
            nonlocal nxt
            idx = tasks[nxt]
            nxt += 1
            self._conns[w].send(([str(paths[i]) for i in idx], kwargs))
            queued[w].append(idx)

        try:
            for _ in range(2):
                for w in range(self.workers):
                    if nxt < len(tasks):
                        send(w)
            while any(queued):
                for conn in wait([self._conns[w] for w in range(self.workers) if queued[w]]):
                    w = self._conns.index(conn)
                    msg = self._recv(w)
                    idx = queued[w].pop(0)
                    if msg[0] == "ok":
                        for arr, part in zip(out, msg[1:]):
                            arr[idx] = part
                        done += len(idx)
                        if progress:
                            progress(done)
                    else:
                        error = error or msg[1]
                    if nxt < len(tasks) and error is None:
                        send(w)
        except BaseException:  # a dead worker, a broken pipe, Ctrl-C, a failing progress callback
            self.close()
            raise
        if error is not None:
            raise WorkerError(f"prediction failed in a worker: {error}")
        return out

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the workers (idempotent): ask each to exit, then terminate and kill what remains."""
        self._state = "closed"
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout_s
        for proc in self._procs:
            if proc.pid is not None:
                proc.join(timeout=max(0.0, deadline - time.monotonic()))
        for stop in ("terminate", "kill"):
            for proc in self._procs:
                if proc.pid is not None and proc.is_alive():
                    getattr(proc, stop)()
                    proc.join(timeout=5)
        for proc in self._procs:
            if proc.pid is not None and not proc.is_alive():
                proc.close()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a pool dropped without close() must not leave processes behind
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

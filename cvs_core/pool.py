"""A process-wide, bounded pool of loaded models, held outside Streamlit's caches.

Streamlit's ``st.cache_resource`` can be cleared by any browser (the "Clear cache" websocket message,
sent by the page menu or a hand-written client), after which every user's models reload. Models
held here are not touched by that message: the app asks the pool instead of caching them itself::

    from cvs_core.pool import models
    predictor = models().get("unet_heatmap")      # loads once per process, then shared

Eviction only drops the pool's reference (least recently used beyond ``max_models``, or
:meth:`ModelPool.discard` after a model folder is deleted/replaced); nothing is frozen or pinned, so
a dropped model's memory is freed once no request still uses it (``tests/test_limits.py`` measures
flat RSS over repeated load/drop rounds). Thread-safe; a model is loaded by one thread while others
asking for the same model wait for it.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from pathlib import Path


class ModelPool:
    """Up to ``max_models`` loaded :class:`cvs_core.predict.Predictor` s, keyed by model folder and the
    manifest's sha256 (a replaced model loads afresh)."""

    def __init__(self, max_models: int = 4, loader=None):
        self.max_models = max(1, int(max_models))
        self._loader = loader
        self._items: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._batchers: dict[tuple[str, str], BatchingPredictor] = {}  # dropped with their model
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}

    def _load(self, folder: Path):
        if self._loader is not None:
            return self._loader(folder)
        from cvs_core.predict import Predictor
        return Predictor(folder)

    @staticmethod
    def key(name_or_dir: str | Path) -> tuple[str, str]:
        """(folder, version): the version changes when the manifest's weights checksum or the
        weights file itself (its modification time) changes, so a replaced model loads afresh."""
        from cvs_core.registry import MANIFEST, WEIGHTS, read_json, resolve_model
        folder = Path(resolve_model(name_or_dir)).resolve()
        weights = folder / WEIGHTS
        stamp = weights.stat().st_mtime_ns if weights.is_file() else 0
        return str(folder), f"{read_json(folder / MANIFEST).get('weights_sha256', '')}:{stamp}"

    def get(self, name_or_dir: str | Path):
        """The loaded model for a name or folder (loading it on first use)."""
        return self._get(self.key(name_or_dir))

    def _get(self, key: tuple[str, str]):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            model = self._load(Path(key[0]))
            with self._lock:
                self._items[key] = model
                self._items.move_to_end(key)
                while len(self._items) > self.max_models:
                    old, _ = self._items.popitem(last=False)
                    self._batchers.pop(old, None)
                self._loading.pop(key, None)
            return model

    def discard(self, name_or_dir: str | Path | None = None) -> int:
        """Drop one model (all versions of its folder) or, with ``None``, all. Returns how many."""
        with self._lock:
            if name_or_dir is None:
                n = len(self._items)
                self._items.clear()
                self._batchers.clear()
                return n
            try:
                folder = self.key(name_or_dir)[0]
            except (ValueError, OSError):
                folder = str(Path(name_or_dir).resolve())
            drop = [k for k in self._items if k[0] == folder]
            for k in drop:
                del self._items[k]
                self._batchers.pop(k, None)
            return len(drop)

    def get_batched(self, name_or_dir: str | Path) -> BatchingPredictor:
        """The model wrapped in a :class:`BatchingPredictor` (one per loaded model, shared; held by the
        pool next to the model, so dropping the model drops it too)."""
        key = self.key(name_or_dir)
        model = self._get(key)
        with self._lock:
            wrapped = self._batchers.get(key)
            if wrapped is None or wrapped.predictor is not model:
                wrapped = BatchingPredictor(model)
                if key in self._items:
                    self._batchers[key] = wrapped
            return wrapped

    def loaded(self) -> list[str]:
        """Folder paths of the loaded models, least recently used first."""
        with self._lock:
            return [k[0] for k in self._items]


# Across models: when several models' dispatchers have work, the model that is faster per image runs
# first (shortest job first), so under load everyone's quick first result is not queued behind another
# user's slow one; a slower model waits at most MAX_DEFER_S for the faster one, and its batches are cut
# to about CALL_BUDGET_MS of work, so one call never blocks the faster model for long. Measured with
# bench/load.py (docs/benchmarks.md, "Hosting"), 20 sessions, interleaved runs: first result p50 1.40 → 1.08 s.
# A model that waited the full MAX_DEFER_S does not wait before its next call (no starvation).
CALL_BUDGET_MS = 500.0
MAX_DEFER_S = 2.0
IDLE_CHECK_S = 5.0  # a dispatcher whose BatchingPredictor was dropped stops within this time
_GATE = threading.Condition()
_DISPATCHERS: "weakref.WeakSet[BatchingPredictor]" = weakref.WeakSet()


class BatchingPredictor:
    """Concurrent ``predict`` calls on one model, gathered into shared model calls.

    Callers (one per browser session) block only for their own result; a dispatcher thread takes
    every request waiting at that moment (up to ``max_batch``, with the same ROI setting, and no more
    than ``CALL_BUDGET_MS`` of work by the measured time per image), after waiting at most ``window_s``
    for more to arrive, and runs them through one ``predictor.predict_batch`` — so N simultaneous users
    cost a few batched model calls instead of N serial ones, and each gets its result as soon as its
    batch is done. Between models, the faster one per image goes first (see ``CALL_BUDGET_MS``).
    Thread-safe; the wrapped predictor is used from the dispatcher thread only, which holds only a weak
    reference to this object, so a dropped model is freed."""

    def __init__(self, predictor, max_batch: int = 8, window_s: float = 0.01):
        import queue
        self.predictor = predictor
        self.max_batch = max(1, int(max_batch))
        self.window_s = float(window_s)
        self._queue: "queue.Queue" = queue.Queue()
        self.batches: list[int] = []  # sizes of the model calls made (for tests and benchmarks)
        self.ms_per_image: float | None = None  # median of the last calls' time per image
        self._recent_ms: list[float] = []
        self._busy = False  # holding or running requests
        self._waited_out = False  # the last call waited the full MAX_DEFER_S
        with _GATE:
            _DISPATCHERS.add(self)
        self._thread = threading.Thread(target=_dispatch, args=(weakref.ref(self), self._queue),
                                        name="cvs-batcher", daemon=True)
        self._thread.start()

    def __getattr__(self, name):  # name, manifest, config, codec … of the wrapped predictor
        return getattr(self.predictor, name)

    def predict(self, image, roi=None, spacing_mm: float | None = None):
        """Like ``Predictor.predict``: one ``(H, W)`` greyscale image → its ``Prediction``."""
        from concurrent.futures import Future
        fut: Future = Future()
        self._queue.put((image, (roi, spacing_mm), fut))
        return fut.result()

    @staticmethod
    def _group_key(request) -> str:
        """Requests with equal (roi, spacing) share a model call; any roi object is accepted."""
        import json
        try:
            return json.dumps(request, sort_keys=True, default=repr)
        except (TypeError, ValueError):
            return repr(request)

    def _run(self, images, request):
        roi, spacing_mm = request
        extra = {} if spacing_mm is None else {"spacing_mm": spacing_mm}
        return self.predictor.predict_batch(images, roi=roi, **extra)

    def _faster_model_busy(self) -> bool:
        """Another model with a smaller measured time per image has requests waiting or running."""
        mine = self.ms_per_image
        return mine is not None and any(
            d is not self and d.ms_per_image is not None and d.ms_per_image < mine and (d._busy or d._queue.qsize())
            for d in list(_DISPATCHERS))

    def _gather(self, pending: list) -> None:
        """Add to ``pending`` what arrives within ``window_s`` (up to ``max_batch``)."""
        import queue
        import time as _time
        deadline = _time.monotonic() + self.window_s
        while len(pending) < self.max_batch:
            left = deadline - _time.monotonic()
            try:
                pending.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
            except queue.Empty:
                return

    def _serve(self, pending: list) -> list:
        """Run one model call for the first group of ``pending``; returns the requests left."""
        import time as _time
        key = self._group_key(pending[0][1])
        group = [r for r in pending if self._group_key(r[1]) == key]
        limit = self.max_batch
        if self.ms_per_image:
            limit = max(1, min(limit, int(CALL_BUDGET_MS / self.ms_per_image)))
        batch = group[:limit]
        rest = group[limit:] + [r for r in pending if self._group_key(r[1]) != key]
        if self._waited_out:
            self._waited_out = False
        else:
            with _GATE:
                until = _time.monotonic() + MAX_DEFER_S
                while self._faster_model_busy():
                    if _time.monotonic() >= until:
                        self._waited_out = True
                        break
                    _GATE.wait(0.02)
        try:
            t0 = _time.perf_counter()
            results = list(self._run([r[0] for r in batch], batch[0][1]))
            if len(results) != len(batch):
                raise RuntimeError(f"the model returned {len(results)} results for {len(batch)} images")
            self._recent_ms = (self._recent_ms + [(_time.perf_counter() - t0) * 1e3 / len(batch)])[-5:]
            self.ms_per_image = float(sorted(self._recent_ms)[len(self._recent_ms) // 2])
            self.batches.append(len(batch))
            for (_, _, fut), res in zip(batch, results):
                fut.set_result(res)
        except BaseException as exc:  # noqa: BLE001 - one bad image must not fail the others
            if len(batch) == 1:
                batch[0][2].set_exception(exc)
                return rest
            for image, roi, fut in batch:  # retry one by one so each caller gets its own error
                try:
                    fut.set_result(self._run([image], roi)[0])
                except BaseException as one:  # noqa: BLE001
                    fut.set_exception(one)
        return rest


def _dispatch(ref: "weakref.ref[BatchingPredictor]", requests) -> None:
    """The dispatcher thread of one BatchingPredictor; ends once that object is gone."""
    import queue
    pending: list = []
    while True:
        if not pending:
            me = ref()
            if me is not None:
                me._busy = False
                del me
            with _GATE:
                _GATE.notify_all()
            try:
                pending.append(requests.get(timeout=IDLE_CHECK_S))
            except queue.Empty:
                if ref() is None:
                    return
                continue
        me = ref()
        if me is None:  # cannot happen while a caller waits (it holds the object); be safe anyway
            for _, _, fut in pending:
                fut.set_exception(RuntimeError("the model was unloaded"))
            return
        me._busy = True
        try:
            me._gather(pending)
            pending = me._serve(pending)
        except BaseException as exc:  # noqa: BLE001 - never leave a caller waiting for ever
            for _, _, fut in pending:
                if not fut.done():
                    fut.set_exception(exc)
            pending = []
        del me


_POOL: ModelPool | None = None
_POOL_LOCK = threading.Lock()


def models() -> ModelPool:
    """The process's pool (``$CVS_MAX_LOADED_MODELS``, default 4)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            try:
                n = int(os.environ.get("CVS_MAX_LOADED_MODELS", "4"))
            except ValueError:
                n = 4
            _POOL = ModelPool(n)
        return _POOL

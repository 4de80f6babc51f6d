"""Load test: N concurrent sessions on the Compare page of a local server.

Starts ``streamlit run streamlit_app.py`` on 127.0.0.1 (a free port, a temporary ``$CVS_HOME``) unless
``--url`` points at a running one, then for each N in ``--sessions`` (default 1 5 20) opens N sessions
at once, each asking for ``/compare`` and waiting for its results (both models' CVM stages).

Clients (``--client``):

- ``websocket`` (default): a session is one websocket on ``/_stcore/stream`` speaking Streamlit's
  protobufs (``tests/app_helpers.StreamlitClient``: BackMsg out, ForwardMsg in), one thread each. The
  first rerun asks for the page by its URL path (``ClientState.page_name = "compare"``), as the
  frontend does when it loads ``/compare``; fragment auto-reruns (``st.fragment(run_every=…)``) are
  sent like the frontend sends them. A client costs almost no CPU, so the numbers measure the server.
- ``browser``: headless Chromium (Playwright, Debian's ``/usr/bin/chromium``; nothing is downloaded)
  loading ``/compare``. On a 2-core machine the browsers take the CPU the server needs.

Inputs (``--inputs``): ``sample`` (default) leaves the page on its default input, the bundled sample
LC (1): after the warm-up session its predictions come from the app's per-process cache, so this
measures the page, not the models. ``phantom`` (websocket only) does what a user does to get their own
image: picks Input → Phantom, then a seed no other session of the bench used (from 1000 on), so every
session calls both models; its times count from that last request.

Per session: seconds to the *first result* (the first model's stage card: the first ``st.metric``
whose value starts with "CS", the ground-truth card excluded), to *both results* (two such metrics in
one script run) and, with websockets, to the end of the run (``ForwardMsg.script_finished``); errors:
an exception element, an error alert (``st.error``), page not found, a timeout, a closed socket.
Reports per N: errors, p50 / p95 / max of those times, wall time, and the server's RSS (idle before,
peak during, after), as a table and as JSON (``--json PATH``). Bounded: at most ``--max-sessions``
(50) sessions and ``--timeout`` s each.

    .venv/bin/python bench/load.py                       # 1, 5, 20 websocket sessions; own server
    .venv/bin/python bench/load.py --sessions 1 5 --json /tmp/load.json
    .venv/bin/python bench/load.py --inputs phantom      # every session on its own image
    .venv/bin/python bench/load.py --inputs phantom --server-env CVS_LIMIT_MAX_JOBS_PER_USER=64
    .venv/bin/python bench/load.py --client browser --sessions 1
    .venv/bin/python bench/load.py --url http://127.0.0.1:8501 --sessions 10

The acceptance target (issue 14): 20 sessions, 0 errors, p50 time to first result ≤ 3× the
single-user time. Run it on a quiet machine, or say that it was not.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from app_helpers import CHROMIUM, CHROMIUM_ARGS, StreamlitClient, free_port, streamlit_server  # noqa: E402

PAGE = "compare"  # the Compare page's URL path (st.Page("app_pages/compare.py") → /compare)
STAGE_PREFIX = "CS"  # a stage card's st.metric value: "CS3", or "CS3?" when the fit is unreliable
TRUTH_HELP = "from the true landmarks"  # the help text of the ground-truth card's metric: not a model's result
NOT_A_RESULT = {"generated as"}  # metric labels that show a stage but are no model's result (phantoms)
INPUT_RADIO, SEED_INPUT = "Input", "Seed"  # Compare's input choice and the phantom's seed (--inputs phantom)
SEED_BASE = 1000  # --inputs phantom: seeds 1000, 1001, … (the page's default seed is 7)

# Browser client: the same definitions on the page's DOM (the ground-truth card is the outer column
# whose text says "ground truth").
STAGES_JS = """() => [...document.querySelectorAll('[data-testid="stMetric"]')].filter(m => {
    const v = m.querySelector('[data-testid="stMetricValue"]'), l = m.querySelector('[data-testid="stMetricLabel"]');
    if (!v || !v.innerText.startsWith('CS') || (l && l.innerText.trim() === 'generated as')) return false;
    const inner = m.closest('[data-testid="stColumn"]');
    const outer = inner && inner.parentElement ? inner.parentElement.closest('[data-testid="stColumn"]') : null;
    return !(outer && outer.innerText.includes('ground truth'));
}).length"""
ERROR_JS = ("() => document.querySelectorAll('[data-testid=\"stException\"], "
            "[data-testid=\"stAlertContentError\"]').length")


# ----------------------------------------------------------------------------- ForwardMsg parsing
def stage_metric_path(msg) -> tuple[int, ...] | None:
    """The delta path of a model's stage metric when ``msg`` (a ForwardMsg) draws one, else None."""
    if msg.WhichOneof("type") != "delta" or msg.delta.WhichOneof("type") != "new_element":
        return None
    el = msg.delta.new_element
    if el.WhichOneof("type") != "metric":
        return None
    m = el.metric
    if not m.body.startswith(STAGE_PREFIX) or m.help == TRUTH_HELP or m.label in NOT_A_RESULT:
        return None
    return tuple(msg.metadata.delta_path)


def widget_id(msg, kind: str, label: str) -> str | None:
    """The id of the widget ``kind`` (Element field: ``"radio"``, ``"number_input"``…) labelled
    ``label`` when ``msg`` (a ForwardMsg) draws it, else None."""
    if msg.WhichOneof("type") != "delta" or msg.delta.WhichOneof("type") != "new_element":
        return None
    el = msg.delta.new_element
    if el.WhichOneof("type") != kind or getattr(el, kind).label != label:
        return None
    return getattr(el, kind).id


def error_in(msg) -> str | None:
    """What a user would see as an error in ``msg`` (a ForwardMsg), or None: an exception element
    (warnings excluded), an ``st.error`` alert, "page not found"."""
    kind = msg.WhichOneof("type")
    if kind == "page_not_found":
        return f"page not found: {msg.page_not_found.page_name!r}"
    if kind != "delta" or msg.delta.WhichOneof("type") != "new_element":
        return None
    el = msg.delta.new_element
    if el.WhichOneof("type") == "exception" and not el.exception.is_warning:
        return f"exception: {el.exception.type}: {el.exception.message[:120]}"
    if el.WhichOneof("type") == "alert":
        from streamlit.proto.Alert_pb2 import Alert

        if el.alert.format == Alert.ERROR:
            return f"error alert: {' '.join(el.alert.body.split())[:200]}"
    return None


@dataclass
class SessionTrace:
    """One session's progress, fed ForwardMsgs in arrival order with the seconds since the session
    started (``feed``). ``first_s``: first model stage metric; ``both_s``: ``results`` distinct stage
    metrics within one full script run (a new full run starts counting again, fragment runs do not);
    ``done_s``: the last full run finished successfully; ``errors``; ``auto_reruns``: fragment id →
    interval (s) of the ``st.fragment(run_every=…)`` the frontend would be re-running now."""

    results: int = 2
    first_s: float | None = None
    both_s: float | None = None
    done_s: float | None = None
    finished: bool = False
    errors: list[str] = field(default_factory=list)
    auto_reruns: dict[str, float] = field(default_factory=dict)
    paths: set[tuple[int, ...]] = field(default_factory=set)

    def feed(self, msg, t: float) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        kind = msg.WhichOneof("type")
        if kind == "new_session" and not msg.metadata.run.fragment_ids:  # a full script run starts
            self.paths.clear()
            self.auto_reruns.clear()  # the frontend drops its timers; the run registers them again
            self.finished = False
        elif kind == "auto_rerun":
            self.auto_reruns[msg.auto_rerun.fragment_id] = msg.auto_rerun.interval
        elif kind == "stop_auto_rerun":
            for fid in msg.stop_auto_rerun.fragment_ids:
                self.auto_reruns.pop(fid, None)
        elif kind == "script_finished":
            if msg.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY:
                self.finished, self.done_s = True, t
            elif msg.script_finished == ForwardMsg.FINISHED_WITH_COMPILE_ERROR:
                self.errors.append("the script did not compile")
        path = stage_metric_path(msg)
        if path is not None:
            self.paths.add(path)
            if self.first_s is None:
                self.first_s = t
            if self.both_s is None and len(self.paths) >= self.results:
                self.both_s = t
        err = error_in(msg)
        if err:
            self.errors.append(err)

    @property
    def complete(self) -> bool:
        """Nothing more to wait for: an error, or a full run finished with every result (or with no
        fragment left that could still bring one)."""
        return bool(self.errors) or (self.finished and (self.both_s is not None or not self.auto_reruns))


def _choose_phantom(client: StreamlitClient, seed: int, end: float) -> None:
    """Do what a user does to get their own image on Compare: pick Input = "Phantom" (radio), then
    type ``seed`` (number input); returns once the last of those requests is sent. The widget ids
    come from the elements the server draws (they are hashes of the widgets' keys and arguments)."""
    radio = seed_box = None
    while seed_box is None:
        msg, _ = client.recv(timeout=max(0.01, end - time.perf_counter()))
        err = error_in(msg)
        if err:
            raise RuntimeError(f"before the phantom was chosen: {err}")
        if radio is None and (radio := widget_id(msg, "radio", INPUT_RADIO)):
            client.request_run(widgets={radio: ("string_value", "Phantom")})
        elif radio is not None:
            seed_box = widget_id(msg, "number_input", SEED_INPUT)
    client.request_run(widgets={seed_box: ("double_value", float(seed))})


def ws_session(url: str, timeout_s: float, results: int = 2, page: str = PAGE, seed: int | None = None
               ) -> SessionTrace:
    """One websocket session: ask for ``page`` (with ``seed``: then choose that phantom as the input,
    and time from that request on), answer fragment auto-reruns, until the trace is complete or
    ``timeout_s``; every failure is recorded in the trace, none is raised."""
    from websockets.exceptions import ConnectionClosed

    trace = SessionTrace(results=results)
    t0 = time.perf_counter()
    client = None
    try:
        client = StreamlitClient(url, open_timeout=timeout_s)
        client.request_run(page_name=page)
        end, due = t0 + timeout_s, {}
        started = seed is None  # with a seed: feed the trace from the run of the final request on
        if seed is not None:
            _choose_phantom(client, seed, end)
            t0 = time.perf_counter()
        while not trace.complete:
            now = time.perf_counter()
            if now >= end:
                trace.errors.append(f"timeout after {timeout_s:.0f} s ({len(trace.paths)} of {results} results)")
                break
            for fid in [f for f in due if f not in trace.auto_reruns]:
                del due[fid]
            for fid, interval in trace.auto_reruns.items():
                if due.setdefault(fid, now + interval) <= now:
                    client.request_run(fragment_id=fid, is_auto_rerun=True)
                    due[fid] = now + interval
            try:
                msg, _ = client.recv(timeout=max(0.01, min([end, *due.values()]) - now))
            except TimeoutError:
                continue
            started = started or (msg.WhichOneof("type") == "new_session" and not msg.metadata.run.fragment_ids)
            if started:
                trace.feed(msg, time.perf_counter() - t0)
        if trace.finished and trace.both_s is None and not trace.errors:
            trace.errors.append(f"the run finished with {len(trace.paths)} of {results} results")
    except ConnectionClosed as exc:
        trace.errors.append(f"the server closed the socket ({exc})")
    except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the others
        trace.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")
    finally:
        if client is not None:
            client.close()
    return trace


def run_ws_level(url: str, n: int, timeout_s: float, results: int = 2, seeds: list[int] | None = None
                 ) -> list[SessionTrace]:
    """``n`` websocket sessions at once (one thread each; they connect together); ``seeds``: one
    phantom seed per session (its own input), else all on the page's default input."""
    start = threading.Barrier(n)

    def one(i):
        start.wait()
        return ws_session(url, timeout_s, results, seed=None if seeds is None else seeds[i])
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


# ----------------------------------------------------------------------------- browser client
async def browser_session(browser, url: str, timeout_s: float, results: int = 2) -> SessionTrace:
    """Open /compare in a fresh context; seconds to the first and to ``results`` stage metrics."""
    trace = SessionTrace(results=results)
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await ctx.new_page()
        t0 = time.perf_counter()
        await page.goto(url + "/" + PAGE, timeout=timeout_s * 1000)
        while trace.both_s is None:  # one wait per change: a second round trip would add render time
            need = 1 if trace.first_s is None else results
            left = max(1.0, timeout_s - (time.perf_counter() - t0))
            handle = await page.wait_for_function(
                f"() => ({ERROR_JS})() > 0 ? -1 : (({STAGES_JS})() >= {need} ? ({STAGES_JS})() : 0)",
                timeout=left * 1000, polling=100)
            t, found = time.perf_counter() - t0, await handle.json_value()
            if found < 0:
                trace.errors.append("the page shows an error")
                break
            trace.first_s = trace.first_s if trace.first_s is not None else t
            if found >= results:
                trace.both_s = t
    except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the others
        trace.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")
    finally:
        await ctx.close()
    return trace


async def _browser_level(url: str, n: int, timeout_s: float, results: int) -> list[SessionTrace]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            return list(await asyncio.gather(*(browser_session(browser, url, timeout_s, results)
                                               for _ in range(n))))
        finally:
            await browser.close()


def run_browser_level(url: str, n: int, timeout_s: float, results: int = 2) -> list[SessionTrace]:
    return asyncio.run(_browser_level(url, n, timeout_s, results))


# ----------------------------------------------------------------------------- the bench
class RssSampler(threading.Thread):
    """Samples a process tree's RSS (MB) every ``interval`` s; ``peak`` and ``last``."""

    def __init__(self, pid: int | None, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self.last = pid, interval, 0.0, 0.0
        self.stop = threading.Event()

    def sample(self) -> float:
        if self.pid is None:
            return float("nan")
        import psutil
        try:
            p = psutil.Process(self.pid)
            return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2 ** 20
        except psutil.Error:
            return float("nan")

    def run(self):
        while not self.stop.wait(self.interval):
            self.last = self.sample()
            self.peak = max(self.peak, self.last)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of ``values`` (``q`` in 0..1); None when empty."""
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else None


def summarise(n: int, traces: list[SessionTrace], wall: float, rss: dict) -> dict:
    """One level's row: errors, p50 / p95 / max / mean of first / both / done seconds, wall, RSS."""
    row = {"sessions": n, "errors": sum(1 for t in traces if t.errors),
           "error_samples": [e for t in traces for e in t.errors][:5]}
    for name in ("first", "both", "done"):
        vals = [getattr(t, f"{name}_s") for t in traces if not t.errors and getattr(t, f"{name}_s") is not None]
        row.update({f"{name}_p50_s": percentile(vals, 0.5), f"{name}_p95_s": percentile(vals, 0.95),
                    f"{name}_max_s": max(vals) if vals else None,
                    f"{name}_mean_s": statistics.fmean(vals) if vals else None})
    row["wall_s"] = wall
    row.update(rss)
    return row


def run_level(client: str, url: str, n: int, timeout_s: float, sampler: RssSampler, results: int = 2,
              seeds: list[int] | None = None) -> dict:
    idle = sampler.sample()
    sampler.peak = idle
    t0 = time.perf_counter()
    if client == "websocket":
        traces = run_ws_level(url, n, timeout_s, results, seeds)
    else:
        traces = run_browser_level(url, n, timeout_s, results)
    wall = time.perf_counter() - t0
    return summarise(n, traces, wall, {"rss_idle_mb": idle, "rss_peak_mb": sampler.peak,
                                       "rss_after_mb": sampler.sample()})


def print_table(rows: list[dict]) -> None:
    def f(v, fmt="{:.2f}"):
        return "—" if v is None or v != v else fmt.format(v)
    print(f"{'N':>4} {'errors':>6} | {'first p50':>9} {'p95':>6} {'max':>6} | {'both p50':>8} {'p95':>6} {'max':>6} | "
          f"{'done p50':>8} {'max':>6} | {'wall s':>6} | {'RSS idle':>8} {'peak':>6} {'after':>6} MB")
    for r in rows:
        print(f"{r['sessions']:>4} {r['errors']:>6} | {f(r['first_p50_s']):>9} {f(r['first_p95_s']):>6} "
              f"{f(r['first_max_s']):>6} | {f(r['both_p50_s']):>8} {f(r['both_p95_s']):>6} {f(r['both_max_s']):>6} | "
              f"{f(r['done_p50_s']):>8} {f(r['done_max_s']):>6} | {f(r['wall_s'], '{:.1f}'):>6} | "
              f"{f(r['rss_idle_mb'], '{:.0f}'):>8} {f(r['rss_peak_mb'], '{:.0f}'):>6} {f(r['rss_after_mb'], '{:.0f}'):>6}")
        for e in r["error_samples"]:
            print(f"      error: {e}")
    if len(rows) > 1 and rows[0]["first_p50_s"] and rows[-1]["first_p50_s"]:
        a, b = rows[0], rows[-1]
        both = (f", both results {b['both_p50_s'] / a['both_p50_s']:.1f}×"
                if a["both_p50_s"] and b["both_p50_s"] else "")
        print(f"p50 ratio N={b['sessions']} / N={a['sessions']}: first result "
              f"{b['first_p50_s'] / a['first_p50_s']:.1f}×{both} (target ≤ 3×)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running server (default: start one on 127.0.0.1)")
    ap.add_argument("--client", choices=("websocket", "browser"), default="websocket",
                    help="websocket sessions (default) or headless-Chromium pages")
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--inputs", choices=("sample", "phantom"), default="sample",
                    help="sample: every session on the page's default input (after the warm-up its "
                         "predictions come from the app's cache); phantom: each session picks its own "
                         "phantom (Input → Phantom, a seed no other session used), so every session "
                         "calls the models; timed from that choice (websocket client only)")
    ap.add_argument("--results", type=int, default=2, help="stage cards that make a complete answer (default 2)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per session (default 180)")
    ap.add_argument("--max-sessions", type=int, default=50)
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="skip the first single session that loads the models (not reported)")
    ap.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment for the server this bench starts (repeatable), e.g. "
                         "CVS_LIMIT_MAX_JOBS_PER_USER=64")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.client == "browser" and not CHROMIUM.exists():
        print(f"error: --client browser needs Debian's chromium at {CHROMIUM} (apt-get install chromium); "
              "nothing is downloaded", file=sys.stderr)
        return 2
    if args.inputs == "phantom" and args.client != "websocket":
        print("error: --inputs phantom needs --client websocket", file=sys.stderr)
        return 2
    if any("=" not in e for e in args.server_env) or (args.server_env and args.url):
        print("error: --server-env takes NAME=VALUE, and only for the server this bench starts (no --url)",
              file=sys.stderr)
        return 2
    server_env = dict(e.split("=", 1) for e in args.server_env)
    if any(n < 1 or n > args.max_sessions for n in args.sessions):
        print(f"error: --sessions must be between 1 and --max-sessions ({args.max_sessions})", file=sys.stderr)
        return 2

    def bench(url: str, pid: int | None) -> list[dict]:
        sampler = RssSampler(pid)
        sampler.start()
        seed = itertools.count(SEED_BASE)  # a new phantom for every session of the whole bench

        def level(n):
            seeds = [next(seed) for _ in range(n)] if args.inputs == "phantom" else None
            return run_level(args.client, url, n, args.timeout, sampler, args.results, seeds)
        try:
            if args.warmup:
                level(1)
            return [level(n) for n in args.sessions]
        finally:
            sampler.stop.set()

    if args.url:
        url = args.url.rstrip("/")
        rows = bench(url, None)
    else:
        with tempfile.TemporaryDirectory(prefix="cvs_load_") as tmp:
            with streamlit_server("streamlit_app.py", free_port(), Path(tmp), Path(tmp) / "server.log",
                                  env=server_env) as server:
                url = server.url
                rows = bench(url, server.pid)
    print(f"client {args.client} · page /{PAGE} · inputs {args.inputs} · {os.cpu_count()} cores · {url}")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"url": url, "client": args.client, "inputs": args.inputs,
                                               "server_env": server_env, "cores": os.cpu_count(),
                                               "levels": rows}, indent=2))
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Load test: N concurrent browser sessions on the Compare page of a local server.

Starts ``streamlit run streamlit_app.py`` on 127.0.0.1 (a free port, a temporary ``$CVS_HOME``) unless
``--url`` points at a running one, then for each N in ``--sessions`` (default 1 5 20) opens N
headless-Chromium sessions at once (Playwright, Debian's ``/usr/bin/chromium``; nothing is
downloaded), each loading ``/compare`` and waiting for its first result (both models' CVM stages).
Reports per N: errors (timeouts, Streamlit exception boxes, failed loads), p50 / p95 / max time to
first result, and the server's RSS (idle before, peak during, after), as a table and as JSON
(``--json PATH``). Bounded: at most ``--max-sessions`` (50) sessions and ``--timeout`` s each.

    .venv/bin/python bench/load.py                       # 1, 5, 20 sessions; starts its own server
    .venv/bin/python bench/load.py --sessions 1 5 --json /tmp/load.json
    .venv/bin/python bench/load.py --url http://127.0.0.1:8501 --sessions 10

Run it on a quiet machine: the sessions' browsers share the server's cores, so the numbers measure
the machine as much as the app (say so when you report them). The acceptance target (issue 14):
20 sessions, 0 errors, p50 time to first result ≤ 3× the single-user time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RESULT_JS = ("() => [...document.querySelectorAll('[data-testid=\"stMetricValue\"]')]"
             ".filter(e => e.innerText.startsWith('CS')).length >= 2")
ERROR_JS = "() => document.querySelectorAll('[data-testid=\"stException\"], [data-testid=\"stAlertContentError\"]').length"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    """``streamlit run`` on 127.0.0.1:<free port>; returns (process, url) once /_stcore/health answers."""
    port = _free_port()
    env = dict(os.environ, CVS_HOME=str(home), PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {(home / 'server.log').read_text()[-2000:]}")
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read().strip() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not come up in 90 s")


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


async def one_session(browser, url: str, timeout_s: float) -> tuple[float | None, str | None]:
    """Open /compare in a fresh context; seconds until both stages show, or (None, error)."""
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await ctx.new_page()
        t0 = time.perf_counter()
        await page.goto(url + "/compare", timeout=timeout_s * 1000)
        await page.wait_for_function(f"() => ({RESULT_JS})() || ({ERROR_JS})() > 0", timeout=timeout_s * 1000,
                                     polling=100)
        seconds = time.perf_counter() - t0
        if await page.evaluate(ERROR_JS):
            return None, "the page shows an error"
        return seconds, None
    except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the others
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    finally:
        await ctx.close()


async def run_level(url: str, n: int, timeout_s: float, sampler: RssSampler) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            idle = sampler.sample()
            sampler.peak = idle
            t0 = time.perf_counter()
            results = await asyncio.gather(*(one_session(browser, url, timeout_s) for _ in range(n)))
            wall = time.perf_counter() - t0
        finally:
            await browser.close()
    times = sorted(t for t, _ in results if t is not None)
    errors = [e for _, e in results if e is not None]

    def pct(q):
        return times[min(len(times) - 1, int(round(q * (len(times) - 1))))] if times else None
    return {"sessions": n, "errors": len(errors), "error_samples": errors[:5], "p50_s": pct(0.5), "p95_s": pct(0.95),
            "max_s": times[-1] if times else None, "mean_s": statistics.fmean(times) if times else None,
            "wall_s": wall, "rss_idle_mb": idle, "rss_peak_mb": sampler.peak, "rss_after_mb": sampler.sample()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running server (default: start one on 127.0.0.1)")
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per session (default 180)")
    ap.add_argument("--max-sessions", type=int, default=50)
    ap.add_argument("--warmup", action="store_true", default=True,
                    help="one session first so models are loaded (default on)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"error: needs Debian's chromium at {CHROMIUM} (apt-get install chromium); nothing is downloaded",
              file=sys.stderr)
        return 2
    if any(n < 1 or n > args.max_sessions for n in args.sessions):
        print(f"error: --sessions must be between 1 and --max-sessions ({args.max_sessions})", file=sys.stderr)
        return 2
    proc = None
    tmp = None
    try:
        if args.url:
            url, pid = args.url.rstrip("/"), None
        else:
            tmp = tempfile.TemporaryDirectory(prefix="cvs_load_")
            proc, url = start_server(Path(tmp.name))
            pid = proc.pid
        sampler = RssSampler(pid)
        sampler.start()
        if args.warmup:
            asyncio.run(run_level(url, 1, args.timeout, sampler))
        rows = [asyncio.run(run_level(url, n, args.timeout, sampler)) for n in args.sessions]
        sampler.stop.set()
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if tmp is not None:
            tmp.cleanup()

    def f(v, fmt="{:.2f}"):
        return "—" if v is None or v != v else fmt.format(v)
    print(f"{'N':>4} {'errors':>6} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'RSS idle':>9} {'peak':>7} {'after':>7} MB")
    for r in rows:
        print(f"{r['sessions']:>4} {r['errors']:>6} {f(r['p50_s']):>7} {f(r['p95_s']):>7} {f(r['max_s']):>7} "
              f"{f(r['rss_idle_mb'], '{:.0f}'):>9} {f(r['rss_peak_mb'], '{:.0f}'):>7} {f(r['rss_after_mb'], '{:.0f}'):>7}")
        for e in r["error_samples"]:
            print(f"      error: {e}")
    if rows and rows[0]["p50_s"] and rows[-1]["p50_s"]:
        print(f"p50 ratio N={rows[-1]['sessions']} / N={rows[0]['sessions']}: {rows[-1]['p50_s'] / rows[0]['p50_s']:.1f}×")
    if args.json:
        Path(args.json).write_text(json.dumps({"url": url, "cores": os.cpu_count(), "levels": rows}, indent=2))
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The benches' one timing loop: interleaved rounds of timed calls.

On a shared machine the load from other processes drifts over seconds, so timing one variant after
the other moves their ratio. :func:`interleaved_rounds` instead runs every variant once per round
(A, B, A, B, … or, with ``rotate``, A B / B A / …: who goes first alternates) and times each call
with ``time.perf_counter``; summed or median times of the variants then saw the same load.
Used by ``bench/bench_pipeline.py`` (blocks of images), ``bench/engines.py`` (engines) and
``bench/inapp_latency.py`` (the plain-process runs).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass
class Rounds:
    """What :func:`interleaved_rounds` measured.

    seconds : name → wall seconds of each round's call, ``rounds`` values in round order.
    results : name → each round's return value (only with ``keep_results``; else empty lists).
    order : the names in the order they ran, one list per round.
    """

    seconds: dict[str, list[float]]
    results: dict[str, list[Any]]
    order: list[list[str]] = field(default_factory=list)

    def total(self, name: str) -> float:
        """Summed seconds of ``name`` over all rounds."""
        return float(sum(self.seconds[name]))

    def median_ms(self, name: str, per: int = 1) -> float:
        """Median milliseconds of one call of ``name``, divided by ``per`` (e.g. the batch size)."""
        return statistics.median(self.seconds[name]) * 1e3 / per


def interleaved_rounds(calls: Mapping[str, Callable[[int], Any]], rounds: int, *, rotate: bool = True,
                       pause_s: float = 0.0, keep_results: bool = False) -> Rounds:
    """Call every ``calls[name](round_index)`` once per round for ``rounds`` rounds, timing each call.

    rotate : start round ``k`` at the ``k % len(calls)``-th name (with two variants: A B, B A, A B, …)
        so that neither always runs first; False keeps the mapping's order every round.
    pause_s : sleep after each call (not timed), e.g. to let a server or cache settle.
    keep_results : keep each call's return value in ``Rounds.results`` (off: large outputs are
        dropped at once).
    """
    if rounds < 0:
        raise ValueError(f"rounds must be ≥ 0, got {rounds}")
    names = list(calls)
    out = Rounds(seconds={n: [] for n in names}, results={n: [] for n in names})
    for k in range(rounds):
        shift = k % len(names) if (rotate and names) else 0
        order = names[shift:] + names[:shift]
        out.order.append(order)
        for name in order:
            t0 = time.perf_counter()
            result = calls[name](k)
            out.seconds[name].append(time.perf_counter() - t0)
            if keep_results:
                out.results[name].append(result)
            del result
            if pause_s > 0:
                time.sleep(pause_s)
    return out

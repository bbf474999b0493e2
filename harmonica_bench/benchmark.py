"""Latency measured the honest way on a noisy machine: interleaved runs, warm-up, median of repeats."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def _sync(device: str | torch.device | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved_all(
    runs: dict[str, Callable[[], object]],
    repeats: int = 3,
    warmup: int = 1,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, list[float]]:
    """Wall-clock seconds of every timed round of each callable; the callables take turns
    (A B C A B C ...), so a slow phase of the machine hits all of them alike, and round r of A and
    round r of B ran back to back (their ratio is a paired speedup)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    total = (warmup + repeats) * len(order)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="timing", leave=False)
    for rep in range(warmup + repeats):
        for name in order:
            _sync(device)
            start = time.perf_counter()
            runs[name]()
            _sync(device)
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return times


def time_interleaved(
    runs: dict[str, Callable[[], object]],
    repeats: int = 3,
    warmup: int = 1,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Median wall-clock seconds of each callable, timed as ``time_interleaved_all`` does."""
    times = time_interleaved_all(runs, repeats, warmup, device, progress)
    return {name: statistics.median(t) for name, t in times.items()}

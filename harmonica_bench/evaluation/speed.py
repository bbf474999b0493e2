"""Latency of the stock pipeline and of caching methods, measured interleaved in one process."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .. import methods
from .cost import weights_bytes
from .prepare import measure_cost, prepare
from .sampling import SamplingSetup


@dataclass
class SpeedRow:
    label: str
    series: str
    knob: object
    latency_s: float
    speedup: float
    cache_usage: float
    macs: int
    macs_speedup: float
    peak_memory_mb: float | None
    latencies_s: list = field(default_factory=list)  # every timed round
    speedup_spread: dict = field(default_factory=dict)  # of the per-round ratios stock / this (speed_spread)
    above_macs_bound: bool = False  # measured speedup > MACs speedup: not a result (flagged in tables)
    info: dict = field(default_factory=dict)


def speed_spread(stock_times: list[float], times: list[float]) -> dict:
    """Spread of the speedup over interleaved rounds: round r's ratio stock_r / this_r (the two ran
    back to back); min, quartiles, median and max of those ratios."""
    ratios = np.asarray(stock_times, dtype=np.float64) / np.asarray(times, dtype=np.float64)
    q = np.percentile(ratios, [0, 25, 50, 75, 100])
    return {"min": float(q[0]), "q25": float(q[1]), "median": float(q[2]), "q75": float(q[3]), "max": float(q[4]),
            "rounds": int(len(ratios))}


def above_macs_bound(speedup: float | None, macs_speedup: float | None) -> bool:
    """A measured speedup above the MACs speedup cannot come from the skipped computation (the rest
    of the call does not shrink): it is timing noise or an unfair comparison and is flagged."""
    if speedup is None or macs_speedup is None:
        return False
    if not (np.isfinite(speedup) and np.isfinite(macs_speedup)):
        return False
    return bool(speedup > macs_speedup)


def speed_benchmark(pipe, entries: list[tuple[methods.MethodRequest, object]], setup: SamplingSetup,
                    repeats: int = 5, warmup: int = 2, progress: bool = True) -> dict:
    """Latency of the stock pipeline and of each (method, knob), measured in this process, interleaved
    (A B C A B C ...), after ``warmup`` rounds, median of ``repeats`` (and the spread of the per-round
    speedups, ``speed_spread``; a speedup above the MACs speedup is flagged); plus each one's cache usage,
    transformer MACs and peak working memory from one separate measured call.

    All variants are clones sharing one copy of the weights, so memory numbers differ only by what
    each method allocates. Returns ``{"rows": [...], "setup": ..., "device": ...}``; row 0 is the stock
    pipeline."""
    import statistics

    from ..benchmark import time_interleaved_all

    indices = list(range(setup.batch_size))
    variants = [prepare(pipe, methods.MethodRequest("none", []), None, setup)]
    for request, knob in entries:
        variants.append(prepare(pipe, request, knob, setup))
    names = []
    for v in variants:  # unique display names
        name, k = v.label, 2
        while name in names:
            name, k = f"{v.label} ({k})", k + 1
        names.append(name)
    costs = {}
    for name, v in zip(names, variants):
        costs[name] = measure_cost(v.pipe, setup, indices, v.applied.call_overrides)

    def runner(v):
        kwargs = setup.call_kwargs(v.pipe, indices, v.applied.call_overrides)

        def run():
            with torch.no_grad():
                v.pipe(**kwargs)

        return run

    device = pipe.transformer.device
    times = time_interleaved_all({n: runner(v) for n, v in zip(names, variants)}, repeats=repeats, warmup=warmup,
                                 device=device, progress=progress)
    latency = {name: statistics.median(t) for name, t in times.items()}
    stock = names[0]
    rows = []
    for name, v in zip(names, variants):
        c = costs[name]
        mem = c["peak_memory_bytes"]
        speedup = latency[stock] / latency[name]
        macs_speedup = costs[stock]["macs"] / c["macs"] if c["macs"] else float("nan")
        rows.append(SpeedRow(
            label=name, series=v.series, knob=v.applied.knob, latency_s=latency[name],
            speedup=speedup, cache_usage=c["cache_usage"], macs=c["macs"], macs_speedup=macs_speedup,
            peak_memory_mb=None if mem is None else mem / 2**20, latencies_s=times[name],
            speedup_spread=speed_spread(times[stock], times[name]),
            above_macs_bound=name != stock and above_macs_bound(speedup, macs_speedup),
            info={**v.applied.info, "cost": c},
        ))
    return {
        "rows": [asdict(r) for r in rows],
        "setup": setup.describe(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "repeats": repeats,
        "warmup": warmup,
        "weights_mb": weights_bytes(pipe) / 2**20,
        "memory_method": costs[stock]["memory_method"],
    }


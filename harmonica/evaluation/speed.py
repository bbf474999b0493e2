"""Latency of the stock pipeline and of caching methods, measured interleaved in one process."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .. import methods
from .cost import weights_bytes
from .prepare import harmonica_stats, measure_cost, prepare
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
    info: dict = field(default_factory=dict)


def speed_benchmark(pipe, entries: list[tuple[methods.MethodRequest, object]], setup: SamplingSetup,
                    repeats: int = 5, warmup: int = 2, progress: bool = True) -> dict:
    """Latency of the stock pipeline and of each (method, knob), measured in this process, interleaved
    (A B C A B C ...), after ``warmup`` rounds, median of ``repeats``; plus each one's cache usage,
    transformer MACs and peak working memory from one separate measured call.

    All variants are clones sharing one copy of the weights, so memory numbers differ only by what
    each method allocates. Returns ``{"rows": [...], "setup": ..., "device": ...}``; row 0 is the stock
    pipeline."""
    from ..benchmark import time_interleaved

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
        costs[name]["harmonica"] = harmonica_stats(v.pipe)

    def runner(v):
        kwargs = setup.call_kwargs(v.pipe, indices, v.applied.call_overrides)

        def run():
            with torch.no_grad():
                v.pipe(**kwargs)

        return run

    device = pipe.transformer.device
    latency = time_interleaved({n: runner(v) for n, v in zip(names, variants)}, repeats=repeats, warmup=warmup,
                               device=device, progress=progress)
    stock = names[0]
    rows = []
    for name, v in zip(names, variants):
        c = costs[name]
        mem = c["peak_memory_bytes"]
        rows.append(SpeedRow(
            label=name, series=v.series, knob=v.applied.knob, latency_s=latency[name],
            speedup=latency[stock] / latency[name], cache_usage=c["cache_usage"], macs=c["macs"],
            macs_speedup=costs[stock]["macs"] / c["macs"] if c["macs"] else float("nan"),
            peak_memory_mb=None if mem is None else mem / 2**20,
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


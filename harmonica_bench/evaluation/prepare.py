"""A method applied to its own clone of the pipeline, and what one call of it costs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import methods
from .cost import CallCost, CallMeter
from .sampling import SamplingSetup, calibration_call


@dataclass
class Prepared:
    """A method applied to its own clone of the pipeline."""

    series: str
    applied: methods.Applied
    pipe: object

    @property
    def label(self) -> str:
        return self.applied.label


def prepare(pipe, request: methods.MethodRequest, knob, setup: SamplingSetup) -> Prepared:
    """Clone ``pipe`` (weights shared) and apply the requested method with ``knob`` to the clone."""
    clone = methods.clone_pipeline(pipe)
    applied = methods.apply_method(clone, request.name, knob, num_inference_steps=setup.num_inference_steps,
                                   router=request.router, calibrate=calibration_call(setup), fused=request.fused)
    if not request.fused:
        applied.label += " (kernel off)"
    return Prepared(request.series, applied, clone)


def measure_cost(prepared_pipe, setup: SamplingSetup, indices, overrides: dict | None = None) -> dict:
    """One measured (untimed) call: cache usage, transformer MACs, peak memory; under ``"harmonica"``, where
    harmonica runs, its own statistics of the same call, checked against the meter's (``check_one_count``)."""
    meter = CallMeter(prepared_pipe)
    try:
        with torch.no_grad(), meter.measure():
            prepared_pipe(**setup.call_kwargs(prepared_pipe, indices, overrides))
    finally:
        meter.detach()
    cost = meter.cost.to_dict()
    cost.pop("per_forward_computed", None)
    cost["computed_per_step"] = meter.cost.per_forward_computed
    stats = check_one_count(prepared_pipe, meter.cost)
    cost["harmonica"] = None if stats is None else {"cache_usage": stats.cache_usage,
                                                     "macs_speedup": stats.macs_speedup}
    return cost


def check_one_count(pipe, cost: CallCost):
    """Where harmonica runs, ``harmonica.stats`` and the harness's meter count the same call with the same
    ``MacCounter``: the forwards, branch computations and MACs must be equal, or the figures of one of them
    are wrong. Returns the call's ``CacheStats`` (None where harmonica is not enabled)."""
    from harmonica.cache import controller

    found = controller(pipe)
    stats = None if found is None else found.stats_for(pipe)
    if stats is None:
        return None
    pairs = {"transformer forwards": (cost.transformer_forwards, stats.forwards),
             "branch computations": (cost.branches_computed, stats.branch_calls - stats.reused),
             "branch slots": (cost.branch_slots, stats.branch_calls),
             "MACs": (cost.macs, stats.macs_spent)}
    if found.layout.units:  # coarse units: harmonica.stats counts units, the meter branches; the MACs still agree
        pairs = {k: v for k, v in pairs.items() if not k.startswith("branch")}
    differ = [f"{what}: meter {a}, harmonica.stats {b}" for what, (a, b) in pairs.items() if a != b]
    if differ:
        raise RuntimeError("the harness's meter and harmonica.stats disagree on one call (" + "; ".join(differ)
                           + "): one of the two counts is wrong")
    return stats

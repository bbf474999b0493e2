"""A method applied to its own clone of the pipeline, and what one call of it costs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import methods
from .cost import CallMeter
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
    """One measured (untimed) call: cache usage, transformer MACs, peak memory."""
    meter = CallMeter(prepared_pipe)
    try:
        with torch.no_grad(), meter.measure():
            prepared_pipe(**setup.call_kwargs(prepared_pipe, indices, overrides))
    finally:
        meter.detach()
    cost = meter.cost.to_dict()
    cost.pop("per_forward_computed", None)
    cost["computed_per_step"] = meter.cost.per_forward_computed
    return cost


def harmonica_stats(pipe) -> dict | None:
    from ..cache import controller

    found = controller(pipe)
    if found is None:
        return None
    st = found.stats_for(pipe)
    return None if st is None else {"cache_usage": st.cache_usage, "macs_speedup": st.macs_speedup}


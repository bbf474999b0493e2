"""Where a transformer forward sits in the pipeline's denoising loop.

The step index is looked up from the timestep the pipeline passes to the transformer, in the
pipeline scheduler's current ``timesteps`` (the loop's own position, not a call counter that drifts
when a call is interrupted). Used by harmonica's cache hooks and by the caching baselines.
"""

from __future__ import annotations

import inspect
import weakref

import torch


class StepLookupError(RuntimeError):
    pass


def timestep_value(timestep) -> float:
    """The (first) timestep of a forward as a float (syncs once if it lives on a GPU)."""
    return float(timestep.flatten()[0].item()) if torch.is_tensor(timestep) else float(timestep)


class StepLocator:
    """Maps a transformer forward's timestep to (step index, number of steps) of the pipeline's loop."""

    def __init__(self, pipe, transformer: torch.nn.Module, hint: str = ""):
        self._pipe = weakref.ref(pipe)
        params = list(inspect.signature(transformer.forward).parameters)
        self._timestep_pos = params.index("timestep") if "timestep" in params else None
        self._timesteps_id = None
        self._index: dict[float, int] = {}
        self.hint = hint

    def timestep(self, args, kwargs):
        """The ``timestep`` argument of a forward call."""
        if "timestep" in kwargs:
            return kwargs["timestep"]
        if self._timestep_pos is not None and len(args) > self._timestep_pos:
            return args[self._timestep_pos]
        raise StepLookupError("the transformer was called without a timestep")

    def lookup(self, timestep) -> tuple[int, int]:
        scheduler = self._pipe().scheduler
        timesteps = scheduler.timesteps
        if timesteps is None:
            raise StepLookupError("the scheduler has no timesteps; call the transformer through the pipeline")
        if id(timesteps) != self._timesteps_id:
            values = [float(t) for t in timesteps.flatten().tolist()]
            if len(set(values)) != len(values):
                raise StepLookupError(
                    f"{type(scheduler).__name__} visits some timesteps twice, so a step cannot be told from its "
                    "timestep; use a single-evaluation scheduler (DDIM, DPM-Solver++, Euler, ...)"
                )
            self._index = {v: i for i, v in enumerate(values)}
            self._timesteps_id = id(timesteps)
        t = timestep_value(timestep)
        index = self._index.get(t)
        if index is None:
            raise StepLookupError(
                f"timestep {t} is not one of the scheduler's current timesteps; step-wise caching follows the "
                f"pipeline's denoising loop{self.hint}"
            )
        return index, len(self._index)

    def __call__(self, args, kwargs) -> tuple[int, int]:
        return self.lookup(self.timestep(args, kwargs))

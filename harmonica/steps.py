"""Where a transformer forward sits in a pipeline's denoising loop.

A step-wise cache needs the index of the denoising step each forward belongs to, and the number of
steps of the call. harmonica finds them without holding on to any pipeline object:

1. when the pipeline sets a diffusers cache context that carries them (``cache_context("cond",
   step_index=i, num_inference_steps=n)``, as WanPipeline does), those are used;
2. otherwise the pipeline whose ``__call__`` is running the forward is found on the call stack (the
   innermost ``DiffusionPipeline.__call__`` frame of this thread), and the forward's timestep is
   looked up in *that* pipeline's ``scheduler.timesteps``: the denoising loop's own position, not a
   call counter that drifts when a call is interrupted. The family says how the forward's timestep
   relates to the scheduler's (Flux and Qwen-Image pass t / 1000, Sana scales by its config);
   per-token timesteps (Wan 2.2 TI2V) are reduced to their largest value; a low-precision timestep
   (Flux casts t to the latents' dtype) is matched to the nearest scheduler timestep when that match
   is unambiguous.

So pipelines made with ``from_pipe``, ``Pipeline(**components)`` or ``copy.deepcopy`` find their own
scheduler, and two threads find their own pipeline calls.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

MATCH_TOLERANCE = 0.02  # relative; bf16 rounds a timestep by up to 0.4%, twice on Flux's way in


class StepLookupError(RuntimeError):
    pass


@dataclass(frozen=True)
class StepPosition:
    step: int
    num_steps: int
    pipeline: object | None  # the pipeline whose call made the forward
    timesteps: tuple[float, ...] | None = None  # that call's scheduler timesteps


def calling_pipeline():
    """The innermost ``DiffusionPipeline`` whose ``__call__`` is on this thread's stack, or None."""
    from diffusers import DiffusionPipeline

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "__call__":
            owner = frame.f_locals.get("self")
            if isinstance(owner, DiffusionPipeline):
                return owner
        frame = frame.f_back
    return None


def timestep_value(timestep) -> float:
    """A forward's timestep as one float: per-sample or per-token timesteps are reduced to their largest
    value (syncs once if it lives on a GPU)."""
    if torch.is_tensor(timestep):
        return float(timestep.detach().float().max().item()) if timestep.numel() > 1 else float(timestep.item())
    return float(timestep)


class TimestepIndex:
    """Nearest-match lookup of a value in a scheduler's timesteps, rebuilt when they change."""

    def __init__(self):
        self._key = None
        self._values: list[float] = []

    def values(self, scheduler) -> list[float]:
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None:
            raise StepLookupError(f"{type(scheduler).__name__} has no timesteps yet: the pipeline has not set them")
        key = (id(scheduler), id(timesteps), len(timesteps))
        if key != self._key:
            values = [float(t) for t in torch.as_tensor(timesteps).flatten().tolist()]
            if len(set(values)) != len(values):
                raise StepLookupError(
                    f"{type(scheduler).__name__} visits some timesteps twice, so a step cannot be told from its "
                    "timestep; use a single-evaluation scheduler (DDIM, DPM-Solver++, Euler, flow-matching Euler, ...)"
                )
            self._key, self._values = key, values
        return self._values

    def find(self, scheduler, t: float) -> int:
        values = self.values(scheduler)
        distances = [abs(v - t) for v in values]
        best = min(range(len(values)), key=distances.__getitem__)
        gaps = [abs(values[best] - values[j]) for j in (best - 1, best + 1) if 0 <= j < len(values)]
        tolerance = MATCH_TOLERANCE * max(abs(values[best]), 1.0)
        if distances[best] > tolerance or (gaps and distances[best] >= min(gaps) / 2):
            raise StepLookupError(
                f"timestep {t:g} is not one of the scheduler's current timesteps "
                f"({', '.join(f'{v:g}' for v in values[:4])}{', ...' if len(values) > 4 else ''}); step-wise caching "
                "follows the pipeline's denoising loop"
            )
        return best


class StepLocator:
    """Finds (step, number of steps) of a transformer forward (see the module docstring)."""

    def __init__(self, family, transformer: torch.nn.Module):
        self.family = family
        self.transformer = transformer
        self.index = TimestepIndex()

    def locate(self, call: dict, context=None, pipe=None) -> StepPosition:
        """``pipe``: the pipeline whose call runs the forward (``calling_pipeline()``), None outside one."""
        if context is not None and context.step_index is not None and context.num_inference_steps is not None:
            return StepPosition(int(context.step_index), int(context.num_inference_steps), pipe)
        if pipe is None:
            raise StepLookupError(
                "the transformer was called outside a pipeline call, so harmonica cannot tell which denoising step "
                "this is; call the pipeline, or use `with harmonica.paused(pipe):` to run the transformer directly"
            )
        if "timestep" not in call or call["timestep"] is None:
            raise StepLookupError("the transformer was called without a timestep")
        t = timestep_value(call["timestep"]) * self.family.timestep_scale(self.transformer)
        step = self.index.find(pipe.scheduler, t)
        values = self.index.values(pipe.scheduler)
        return StepPosition(step, len(values), pipe, tuple(values))

"""Per-step bookkeeping for caching baselines, on every family.

diffusers' cache hooks (FirstBlockCache, TaylorSeer, MagCache, ...) keep their state in
``StateManager`` objects that need a ``CacheContext`` to be set around every denoiser call; pipelines
of ``CacheMixin`` models (Flux, Wan, Qwen-Image, ...) do that with ``transformer.cache_context(...)``
and reset the hooks' state after the call. ``DiTTransformer2DModel`` and ``PixArtTransformer2DModel``
lack the mixin and their pipelines do neither, so ``StepTracker`` does it from a hook on the
transformer itself:

* it finds the step index of each forward (``harmonica.steps``: the timestep in the running
  pipeline's scheduler, the denoising loop's own position, not a call counter);
* at the first step of a pipeline call (any step not after the previous one) it resets every
  stateful hook under the transformer, so nothing leaks from one call into the next;
* when the pipeline set no cache context, it sets ``CacheContext("cond", step_index=...,
  num_inference_steps=..., timestep=...)`` for the forward (DiT and PixArt run the CFG batch in one
  forward, so one context serves both halves); a pipeline's own context ("cond" / "uncond") is kept;
* after the last step it resets the hooks again (frees cached tensors) and clears what it set.

It also exposes ``step`` / ``num_steps`` / ``timestep`` to hooks of our own (Delta-DiT) and to
diffusers' PyramidAttentionBroadcast, which asks for the current timestep through a callback.
"""

from __future__ import annotations

from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager, _set_cache_context

from harmonica.families import family_for
from harmonica.families.spec import bind_call
from harmonica.steps import StepLocator, calling_pipeline, timestep_value

STEP_TRACKER = "harmonica_eval_step_tracker"


class _Nothing(BaseState):
    def reset(self):
        pass


class StepTracker(ModelHook):
    """See the module docstring. Attach with ``StepTracker.attach(pipe)``."""

    _is_stateful = True  # to see the pipeline's own cache context

    def __init__(self, pipe, context_name: str = "cond"):
        super().__init__()
        self.locator = StepLocator(family_for(pipe), pipe.transformer)
        self.pipeline_context = StateManager(_Nothing)
        self.context_name = context_name
        self.step: int | None = None
        self.num_steps: int | None = None
        self.timestep: float | None = None

    @classmethod
    def attach(cls, pipe) -> "StepTracker":
        registry = HookRegistry.check_if_exists_or_initialize(pipe.transformer)
        existing = registry.get_hook(STEP_TRACKER)
        if existing is not None:
            return existing
        tracker = cls(pipe)
        registry.register_hook(tracker, STEP_TRACKER)
        return tracker

    def reset_state(self, module):
        return module

    def new_forward(self, module, *args, **kwargs):
        call = bind_call(module, args, kwargs)
        own = self.pipeline_context._context
        position = self.locator.locate(call, own, calling_pipeline())
        step, num_steps = position.step, position.num_steps
        registry = HookRegistry.check_if_exists_or_initialize(module)
        # a pipeline that sets its own cache context (CacheMixin models) also resets the hooks after each
        # call; resetting here would drop the context it just set
        if own is None and (self.step is None or step <= self.step):  # a new call: no state from the last one
            registry.reset_stateful_hooks(recurse=True)
        self.step, self.num_steps = step, num_steps
        self.timestep = timestep_value(call.get("timestep")) * self.locator.family.timestep_scale(module)
        if own is None:
            _set_cache_context(module, CacheContext(self.context_name, step_index=step,
                                                    num_inference_steps=num_steps, timestep=self.timestep))
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            if own is None:  # what this tracker set lives for one forward
                if step == num_steps - 1:
                    registry.reset_stateful_hooks(recurse=True)
                    self.step = None
                _set_cache_context(module, None)


def forwards_per_step(pipe, ctx) -> int | None:
    """Transformer forwards per denoising step in one calibration call (``ctx.calibrate``): 2 where
    the pipeline runs the conditional and unconditional passes apart (true CFG: Flux with a negative
    prompt, Wan, Qwen-Image), 1 where it batches them or has no CFG; None without a calibration call."""
    if ctx.calibrate is None:
        return None
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        ctx.calibrate(pipe)
    finally:
        handle.remove()
    return len(calls) // ctx.num_inference_steps


def refresh_registries(transformer) -> None:
    """Make the transformer's registry see hooks added on its submodules."""
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()

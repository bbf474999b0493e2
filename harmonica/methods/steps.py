"""Per-step bookkeeping for caching baselines on transformers without diffusers' ``CacheMixin``.

diffusers' cache hooks (FirstBlockCache, TaylorSeer, MagCache, ...) keep their state in
``StateManager`` objects that need a ``CacheContext`` to be set around every denoiser call; pipelines
of ``CacheMixin`` models do that with ``transformer.cache_context(...)``, and reset the hooks' state
after the call. ``DiTTransformer2DModel`` and ``PixArtTransformer2DModel`` lack the mixin and
``DiTPipeline`` / ``PixArtAlphaPipeline`` do neither, so ``StepTracker`` does it from a hook on the
transformer itself:

* it finds the step index of each forward from its timestep in the pipeline scheduler's
  ``timesteps`` (the denoising loop's own position, not a call counter);
* at the first step of a pipeline call (any step not after the previous one) it resets every
  stateful hook under the transformer, so nothing leaks from one call into the next;
* it sets ``CacheContext("cond", step_index=..., num_inference_steps=..., timestep=...)`` for the
  forward (DiT and PixArt run the CFG batch in one forward, so one context serves both halves);
* after the last step it resets the hooks again (frees cached tensors) and clears the context.

It also exposes ``step`` / ``num_steps`` / ``timestep`` to hooks of our own (Delta-DiT) and to
diffusers' PyramidAttentionBroadcast, which asks for the current timestep through a callback.
"""

from __future__ import annotations

from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import CacheContext, _set_cache_context

from ..steps import StepLocator, timestep_value

STEP_TRACKER = "harmonica_eval_step_tracker"


class StepTracker(ModelHook):
    """See the module docstring. Attach with ``StepTracker.attach(pipe)``."""

    def __init__(self, pipe, context_name: str = "cond"):
        super().__init__()
        self.locator = StepLocator(pipe, pipe.transformer)
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

    def lookup(self, timestep) -> tuple[int, int]:
        """(step index, number of steps) of ``timestep`` in the pipeline scheduler's current timesteps."""
        return self.locator.lookup(timestep)

    def new_forward(self, module, *args, **kwargs):
        t = self.locator.timestep(args, kwargs)
        step, num_steps = self.lookup(t)
        registry = HookRegistry.check_if_exists_or_initialize(module)
        if self.step is None or step <= self.step:  # a new pipeline call: no state from the last one
            registry.reset_stateful_hooks(recurse=True)
        self.step, self.num_steps, self.timestep = step, num_steps, timestep_value(t)
        _set_cache_context(module, CacheContext(self.context_name, step_index=step, num_inference_steps=num_steps,
                                                timestep=self.timestep))
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            if step == num_steps - 1:
                registry.reset_stateful_hooks(recurse=True)
                _set_cache_context(module, None)
                self.step = None


def refresh_registries(transformer) -> None:
    """Make the transformer's registry see hooks added on its submodules."""
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()

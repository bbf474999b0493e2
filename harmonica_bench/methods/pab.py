"""diffusers' PyramidAttentionBroadcast, on every family.

The hooks are applied with diffusers' own ``apply_*`` function and driven by ``StepTracker``
(``steps.py``), which gives them the timestep and, on DiT / PixArt (no ``CacheMixin``), sets the
cache context per denoising step and resets the hooks' state between pipeline calls.

diffusers' PAB hook keeps one state per attention module, so where a pipeline runs true CFG as two
forwards per step (FluxPipeline with ``true_cfg_scale``) the unconditional pass would be handed the
conditional pass's cached attention and the counter would advance twice per step. ``_per_stream``
gives each hook one state per cache context ("cond" / "uncond"), as diffusers' own ``StateManager``
hooks (FirstBlockCache, TaylorSeer, ...) have.
"""

from __future__ import annotations

from diffusers.hooks import HookRegistry
from diffusers.hooks.hooks import StateManager
from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK as PAB_HOOK
from diffusers.hooks.pyramid_attention_broadcast import PyramidAttentionBroadcastHook, PyramidAttentionBroadcastState

from .base import Applied, Context, MethodSpec
from .steps import StepTracker, refresh_registries


class _PerStreamPAB(PyramidAttentionBroadcastHook):
    """diffusers' PAB hook whose ``state`` is the one of the current cache context."""

    @property
    def state(self) -> PyramidAttentionBroadcastState:
        return self._streams.get_state()

    def reset_state(self, module):
        self._streams.reset()
        return module


def _per_stream(transformer) -> None:
    """Turn every PAB hook under ``transformer`` into a ``_PerStreamPAB``."""
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(PAB_HOOK) if isinstance(registry, HookRegistry) else None
        if isinstance(hook, PyramidAttentionBroadcastHook) and not isinstance(hook, _PerStreamPAB):
            del hook.state  # the single state set by initialize_hook
            hook.__class__ = _PerStreamPAB
            hook._streams = StateManager(PyramidAttentionBroadcastState)


PAB_TIMESTEP_RANGE = (100, 800)  # diffusers' default: broadcast only in the middle of sampling


def apply_pab(pipe, knob, ctx: Context) -> Applied:
    from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    from harmonica.families import blocks_of

    skip = int(knob)
    if skip < 2:
        raise ValueError(f"pab's block_skip_range must be >= 2 (1 never reuses), got {knob}")
    tracker = StepTracker.attach(pipe)
    has_cross = any(b.name == "attn2" for block in blocks_of(pipe) for b in block.branches)
    cross = 2 * skip if has_cross else None  # PAB broadcasts cross-attention over a longer range
    config = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=skip,
        cross_attention_block_skip_range=cross,
        spatial_attention_timestep_skip_range=PAB_TIMESTEP_RANGE,
        cross_attention_timestep_skip_range=PAB_TIMESTEP_RANGE,
        current_timestep_callback=lambda: tracker.timestep,
    )
    apply_pyramid_attention_broadcast(pipe.transformer, config)
    _per_stream(pipe.transformer)
    refresh_registries(pipe.transformer)
    return Applied("pab", skip, f"PAB N={skip}",
                   info={"spatial_skip_range": skip, "cross_skip_range": cross, "timestep_range": PAB_TIMESTEP_RANGE})


SPEC = MethodSpec(
    name="pab",
    title="PyramidAttentionBroadcast (diffusers)",
    knob="block_skip_range",
    kind=int,
    apply=apply_pab,
    default=lambda info: 2,
    sweep=lambda info: [2, 3, 4, 6],
    faster="higher",
    description="self-attention outputs computed every N steps (cross-attention every 2N) for timesteps in "
    f"{PAB_TIMESTEP_RANGE}, broadcast in between; MLPs always run",
)

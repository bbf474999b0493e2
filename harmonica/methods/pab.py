"""diffusers' PyramidAttentionBroadcast on DiT / PixArt.

DiT / PixArt lack diffusers' ``CacheMixin``: the hooks are applied with diffusers' own ``apply_*``
function and driven by ``StepTracker`` (``steps.py``), which sets the cache context per denoising
step and resets the hooks' state between pipeline calls.
"""

from __future__ import annotations

from .base import Applied, Context, MethodSpec
from .steps import StepTracker, refresh_registries


PAB_TIMESTEP_RANGE = (100, 800)  # diffusers' default: broadcast only in the middle of sampling


def apply_pab(pipe, knob, ctx: Context) -> Applied:
    from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    from ..families import blocks_of

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

"""diffusers' FirstBlockCache on DiT / PixArt: the first block always runs; the other blocks' residual is
reused while the first block's residual changes less than the threshold (relative mean abs).

DiT / PixArt lack diffusers' ``CacheMixin``: the hooks are applied with diffusers' own ``apply_*``
function and driven by ``StepTracker`` (``steps.py``), which sets the cache context per denoising
step and resets the hooks' state between pipeline calls.
"""

from __future__ import annotations

from .base import Applied, Context, MethodSpec
from .steps import StepTracker, refresh_registries


def apply_fbcache(pipe, knob, ctx: Context) -> Applied:
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    threshold = float(knob)
    StepTracker.attach(pipe)
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=threshold))
    refresh_registries(pipe.transformer)
    return Applied("fbcache", threshold, f"FBCache {threshold:g}", info={"threshold": threshold})


SPEC = MethodSpec(
    name="fbcache",
    title="FirstBlockCache (diffusers)",
    knob="threshold",
    kind=float,
    apply=apply_fbcache,
    default=lambda info: 0.1,
    sweep=lambda info: [0.02, 0.05, 0.1, 0.2, 0.4],
    faster="higher",
    description="first block always computed; the rest reused while the first block's residual changes "
    "less than the threshold (relative mean abs)",
)

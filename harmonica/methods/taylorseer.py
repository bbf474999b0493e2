"""diffusers' TaylorSeer cache on DiT / PixArt (first-order forecasts of every branch output).

DiT / PixArt lack diffusers' ``CacheMixin``: the hooks are applied with diffusers' own ``apply_*``
function and driven by ``StepTracker`` (``steps.py``), which sets the cache context per denoising
step and resets the hooks' state between pipeline calls.
"""

from __future__ import annotations

import re

from .base import Applied, Context, MethodSpec
from .steps import StepTracker, refresh_registries


def taylorseer_warmup(num_steps: int) -> int:
    """Steps fully computed before forecasting starts: diffusers' default 3, fewer for short schedules."""
    return max(1, min(3, num_steps // 5))


def apply_taylorseer(pipe, knob, ctx: Context) -> Applied:
    from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

    from ..families import blocks_of

    interval = int(knob)
    if interval < 1:
        raise ValueError(f"taylorseer's cache_interval must be >= 1, got {knob}")
    # diffusers' default identifiers do not match DiT's attn1: name every branch module explicitly.
    modules = dict.fromkeys((block.list_name, branch.module) for block in blocks_of(pipe) for branch in block.branches)
    patterns = [rf"^{re.escape(name)}\.\d+\.{re.escape(module)}$" for name, module in modules]
    warmup = taylorseer_warmup(ctx.num_inference_steps)
    config = TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=warmup, max_order=1,
                                   taylor_factors_dtype=pipe.transformer.dtype, cache_identifiers=patterns)
    StepTracker.attach(pipe)
    apply_taylorseer_cache(pipe.transformer, config)
    refresh_registries(pipe.transformer)
    return Applied("taylorseer", interval, f"TaylorSeer N={interval}",
                   info={"cache_interval": interval, "disable_cache_before_step": warmup, "max_order": 1,
                         "modules": patterns})


SPEC = MethodSpec(
    name="taylorseer",
    title="TaylorSeer (diffusers)",
    knob="cache_interval",
    kind=int,
    apply=apply_taylorseer,
    default=lambda info: 2,
    sweep=lambda info: [n for n in (2, 3, 4, 5) if n < info.num_inference_steps],
    faster="higher",
    description="branch outputs forecast by a first-order Taylor expansion between full steps every N",
)

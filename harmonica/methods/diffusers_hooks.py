"""diffusers' own training-free caches on DiT / PixArt: FirstBlockCache, TaylorSeer,
PyramidAttentionBroadcast and MagCache.

These models lack diffusers' ``CacheMixin``, so the hooks are applied with diffusers' ``apply_*``
functions and driven by ``StepTracker`` (see ``steps.py``), which sets the cache context per
denoising step and resets the hooks' state between pipeline calls.
"""

from __future__ import annotations

import re

import torch

from .base import Applied, Context, MethodSpec, PipeInfo
from .steps import StepTracker, refresh_registries


# ------------------------------------------------------------------------------ FirstBlockCache
def apply_fbcache(pipe, knob, ctx: Context) -> Applied:
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    threshold = float(knob)
    StepTracker.attach(pipe)
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=threshold))
    refresh_registries(pipe.transformer)
    return Applied("fbcache", threshold, f"FBCache {threshold:g}", info={"threshold": threshold})


FBCACHE = MethodSpec(
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


# ---------------------------------------------------------------------------------- TaylorSeer
def taylorseer_warmup(num_steps: int) -> int:
    """Steps fully computed before forecasting starts: diffusers' default 3, fewer for short schedules."""
    return max(1, min(3, num_steps // 5))


def apply_taylorseer(pipe, knob, ctx: Context) -> Applied:
    from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

    from ..blocks import block_branches

    interval = int(knob)
    if interval < 1:
        raise ValueError(f"taylorseer's cache_interval must be >= 1, got {knob}")
    branches = block_branches(pipe.transformer)
    # diffusers' default identifiers do not match DiT's attn1: name every branch explicitly.
    patterns = [rf"transformer_blocks\.\d+\.{re.escape(b)}" for b in branches]
    warmup = taylorseer_warmup(ctx.num_inference_steps)
    config = TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=warmup, max_order=1,
                                   taylor_factors_dtype=pipe.transformer.dtype, cache_identifiers=patterns)
    StepTracker.attach(pipe)
    apply_taylorseer_cache(pipe.transformer, config)
    refresh_registries(pipe.transformer)
    return Applied("taylorseer", interval, f"TaylorSeer N={interval}",
                   info={"cache_interval": interval, "disable_cache_before_step": warmup, "max_order": 1,
                         "modules": patterns})


TAYLORSEER = MethodSpec(
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


# ------------------------------------------------------------------- PyramidAttentionBroadcast
PAB_TIMESTEP_RANGE = (100, 800)  # diffusers' default: broadcast only in the middle of sampling


def apply_pab(pipe, knob, ctx: Context) -> Applied:
    from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    from ..blocks import block_branches

    skip = int(knob)
    if skip < 2:
        raise ValueError(f"pab's block_skip_range must be >= 2 (1 never reuses), got {knob}")
    tracker = StepTracker.attach(pipe)
    has_cross = "attn2" in block_branches(pipe.transformer)
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


PAB = MethodSpec(
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


# ------------------------------------------------------------------------------------ MagCache
@torch.no_grad()
def magnitude_ratios(pipe, run) -> list[float]:
    """MagCache's calibration, measured here with plain forward hooks: at every step, the mean over
    tokens of ||r_t|| / ||r_{t-1}||, where r is the residual the whole block stack adds (last block's
    output minus first block's input); 1.0 at the first step. ``run(pipe)`` makes one pipeline call."""
    blocks = pipe.transformer.transformer_blocks
    inputs, ratios, previous = {}, [], {}

    def pre(module, args, kwargs):
        inputs["h"] = args[0] if args else kwargs["hidden_states"]

    def post(module, args, kwargs, output):
        out = output[0] if isinstance(output, tuple) else output
        residual = (out - inputs["h"]).float()
        norm = torch.linalg.norm(residual, dim=-1)
        if "norm" in previous:
            ratios.append((norm / (previous["norm"] + 1e-8)).mean().item())
        else:
            ratios.append(1.0)
        previous["norm"] = norm

    handles = [blocks[0].register_forward_pre_hook(pre, with_kwargs=True),
               blocks[-1].register_forward_hook(post, with_kwargs=True)]
    try:
        run(pipe)
    finally:
        for h in handles:
            h.remove()
    return ratios


def apply_magcache(pipe, knob, ctx: Context) -> Applied:
    from diffusers.hooks import MagCacheConfig, apply_mag_cache

    if ctx.calibrate is None:
        raise ValueError("magcache needs a calibration run (Context.calibrate) to measure its magnitude ratios")
    threshold = float(knob)
    ratios = magnitude_ratios(pipe, ctx.calibrate)
    if len(ratios) != ctx.num_inference_steps:
        raise RuntimeError(f"calibration saw {len(ratios)} steps, expected {ctx.num_inference_steps}")
    config = MagCacheConfig(threshold=threshold, num_inference_steps=ctx.num_inference_steps, mag_ratios=ratios)
    StepTracker.attach(pipe)
    apply_mag_cache(pipe.transformer, config)
    refresh_registries(pipe.transformer)
    return Applied("magcache", threshold, f"MagCache {threshold:g}",
                   info={"threshold": threshold, "max_skip_steps": config.max_skip_steps,
                         "retention_ratio": config.retention_ratio, "mag_ratios": [round(r, 5) for r in ratios]})


MAGCACHE = MethodSpec(
    name="magcache",
    title="MagCache (diffusers)",
    knob="threshold",
    kind=float,
    apply=apply_magcache,
    default=lambda info: 0.06,
    sweep=lambda info: [0.02, 0.06, 0.12, 0.24],
    faster="higher",
    description="whole block stack skipped (previous residual reused) while the accumulated magnitude-ratio "
    "error stays under the threshold; ratios calibrated on the model first",
)

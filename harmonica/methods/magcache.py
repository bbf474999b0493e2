"""diffusers' MagCache on DiT / PixArt, with its magnitude ratios calibrated on the model first.

DiT / PixArt lack diffusers' ``CacheMixin``: the hooks are applied with diffusers' own ``apply_*``
function and driven by ``StepTracker`` (``steps.py``), which sets the cache context per denoising
step and resets the hooks' state between pipeline calls.
"""

from __future__ import annotations

import torch

from .base import Applied, Context, MethodSpec
from .steps import StepTracker, refresh_registries


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


SPEC = MethodSpec(
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

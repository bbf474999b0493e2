"""diffusers' MagCache, with its magnitude ratios calibrated on the model first.

DiT / PixArt lack diffusers' ``CacheMixin``: the hooks are applied with diffusers' own ``apply_*``
function and driven by ``StepTracker`` (``steps.py``), which sets the cache context per denoising
step and resets the hooks' state between pipeline calls.
"""

from __future__ import annotations

import torch

from .base import Applied, Context, MethodSpec
from .steps import StepTracker, refresh_registries


@torch.no_grad()
def magnitude_ratios(pipe, run, num_steps: int) -> list[float]:
    """MagCache's calibration, measured here with plain forward hooks: at every step, the mean over
    tokens of ||r_t|| / ||r_{t-1}||, where r is the residual the whole block stack adds to the image
    tokens (last block's output minus first block's input, over every block list, e.g. Flux's double
    then single blocks; outputs picked by diffusers' block metadata, as its MagCache hooks do); 1.0
    at the first step. Pipelines with true CFG run k forwards per step (cond, uncond): each stream's
    ratios are taken against its own previous step and the k streams averaged, since diffusers'
    MagCache applies one list to every cache context. ``run(pipe)`` makes one pipeline call."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    from harmonica.families import blocks_of

    blocks = [b.module for b in blocks_of(pipe)]
    head, tail = blocks[0], blocks[-1]
    index = TransformerBlockRegistry.get(type(tail)).return_hidden_states_index
    inputs, norms = {}, []

    def pre(module, args, kwargs):
        inputs["h"] = args[0] if args else kwargs["hidden_states"]

    def post(module, args, kwargs, output):
        out = output[index] if isinstance(output, tuple) else output
        start = inputs["h"]
        residual = out[:, -start.shape[1]:] - start if out.dim() == 3 else out - start  # image tokens
        norms.append(torch.linalg.norm(residual.float(), dim=-1))

    handles = [head.register_forward_pre_hook(pre, with_kwargs=True),
               tail.register_forward_hook(post, with_kwargs=True)]
    try:
        run(pipe)
    finally:
        for h in handles:
            h.remove()
    if not norms or len(norms) % num_steps:
        raise RuntimeError(f"calibration saw {len(norms)} transformer forwards, not a multiple of {num_steps} steps")
    k = len(norms) // num_steps
    streams = [[1.0] + [(n / (p + 1e-8)).mean().item() for p, n in zip(norms[i::k], norms[i + k::k])]
               for i in range(k)]
    return [sum(r) / k for r in zip(*streams)]


def apply_magcache(pipe, knob, ctx: Context) -> Applied:
    from diffusers.hooks import MagCacheConfig, apply_mag_cache

    if ctx.calibrate is None:
        raise ValueError("magcache needs a calibration run (Context.calibrate) to measure its magnitude ratios")
    threshold = float(knob)
    ratios = magnitude_ratios(pipe, ctx.calibrate, ctx.num_inference_steps)
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

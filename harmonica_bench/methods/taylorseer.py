"""diffusers' TaylorSeer cache: every branch output is computed every N steps and
forecast in between by a Taylor expansion over its last computed values.

The expansion order is part of the method name, so a sweep of each order is one series with one
knob (the interval N): ``taylorseer`` is first order (``max_order=1``), ``taylorseer2`` second order
(``max_order=2``), e.g. ``--method taylorseer2=2,3``.

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


def _apply(order: int):
    name = "taylorseer" if order == 1 else f"taylorseer{order}"

    def apply_taylorseer(pipe, knob, ctx: Context) -> Applied:
        from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

        from harmonica.families import blocks_of

        interval = int(knob)
        if interval < 1:
            raise ValueError(f"{name}'s cache_interval must be >= 1, got {knob}")
        # diffusers' default identifiers do not match DiT's attn1: name every branch module explicitly.
        blocks = blocks_of(pipe)
        modules = dict.fromkeys((b.list_name, branch.module) for b in blocks for branch in b.branches)
        patterns = [rf"^{re.escape(lst)}\.\d+\.{re.escape(module)}$" for lst, module in modules]
        # a whole-block branch (Flux's single blocks: proj_out mixes attention and MLP) is forecast in
        # place of everything that feeds it: those children skip their work on forecast steps
        # (diffusers' skip_predict: zeros of the recorded shape); the norm, which gives the gate, runs
        feeders = dict.fromkeys((b.list_name, name) for b in blocks if b.kind.whole_block
                                for name, _ in b.module.named_children()
                                if name not in {br.module for br in b.branches} and not name.startswith("norm"))
        skipped = [rf"^{re.escape(lst)}\.\d+\.{re.escape(module)}$" for lst, module in feeders]
        warmup = taylorseer_warmup(ctx.num_inference_steps)
        config = TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=warmup, max_order=order,
                                       taylor_factors_dtype=pipe.transformer.dtype, cache_identifiers=patterns,
                                       skip_predict_identifiers=skipped or None)
        StepTracker.attach(pipe)
        apply_taylorseer_cache(pipe.transformer, config)
        refresh_registries(pipe.transformer)
        label = f"TaylorSeer N={interval}" if order == 1 else f"TaylorSeer-O{order} N={interval}"
        return Applied(name, interval, label,
                       info={"cache_interval": interval, "disable_cache_before_step": warmup, "max_order": order,
                             "modules": patterns, "skipped_on_forecast": skipped})

    return apply_taylorseer


def _spec(order: int) -> MethodSpec:
    return MethodSpec(
        name="taylorseer" if order == 1 else f"taylorseer{order}",
        title=f"TaylorSeer order {order} (diffusers)",
        knob="cache_interval",
        kind=int,
        apply=_apply(order),
        default=lambda info: 2,
        sweep=lambda info: [n for n in (2, 3, 4, 5) if n < info.num_inference_steps],
        faster="higher",
        description=f"branch outputs forecast by an order-{order} Taylor expansion between full steps every N",
    )


SPEC = _spec(1)
SPEC_ORDER2 = _spec(2)

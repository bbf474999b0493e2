"""FORA-style static reuse: every branch is computed at every N-th step and reused in between.

Applied through harmonica's own cache with a fixed router (``HarmoniCaRouter.static``), so it reuses
exactly what HarmoniCa reuses (un-gated branch outputs) and differs only in the schedule.
"""

from __future__ import annotations

from .base import Applied, Context, MethodSpec


def apply(pipe, knob, ctx: Context) -> Applied:
    from harmonica.cache import describe, enable
    from harmonica.router import HarmoniCaRouter

    n = int(knob)
    router = HarmoniCaRouter.static(describe(pipe), ctx.num_inference_steps, compute_every=n)
    enable(pipe, router, fused=ctx.fused)
    return Applied("fora", n, f"FORA N={n}", info={"compute_every": n, "router_cache_usage": router.cache_usage()})


SPEC = MethodSpec(
    name="fora",
    title="FORA (static reuse)",
    knob="compute_every",
    kind=int,
    apply=apply,
    default=lambda info: 2,
    sweep=lambda info: [n for n in (2, 3, 4, 5) if n < info.num_inference_steps],
    faster="higher",
    description="all branches computed every N steps, reused from the cache in between",
)

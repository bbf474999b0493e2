"""Learned routers: HarmoniCa and Learning-to-Cache (LTC).

Both are harmonica router folders (``HarmoniCaRouter.save_pretrained``); they differ only in how
they were trained (HarmoniCa: SDT + IEPO; LTC: the LTC objective). The knob is the inference
threshold tau in (0, 1) (a branch is computed when its score exceeds it); by default the router's own. For
a noise-level router a knob >= 1 is the transformer-MACs speedup every call is planned for
(``harmonica=1.5,2,2.5@DIR``).
"""

from __future__ import annotations

import hashlib

from .base import Applied, Context, MethodSpec


OBJECTIVE_TITLES = {"harmonica": "HarmoniCa", "sdt": "SDT only", "ltc": "LTC"}


def _title(router, default: str) -> str:
    """Name a router by how it was trained (its training_info), so ablation routers read as such."""
    info = router.training_info or {}
    title = OBJECTIVE_TITLES.get(info.get("objective"), default)
    config = info.get("config") or {}
    notes = []
    if info.get("objective") == "harmonica" and config.get("lambda_variant") == "paper":
        notes.append("paper lambda")
    if config.get("init") in ("random", "uniform"):
        notes.append(f"{config['init']} init")
    if (config.get("history") or 1) > 1:  # learned forecasts: K past outputs, coefficients' start
        notes.append(f"K={config['history']} from {config.get('forecast_init') or 'taylor'}")
    return f"{title} ({', '.join(notes)})" if notes else title


def _apply(name: str, title: str):
    def apply(pipe, knob, ctx: Context) -> Applied:
        from harmonica.cache import enable
        from harmonica.pipeline import load_router

        if ctx.router is None:
            raise ValueError(f"{name} needs a router folder: write the method as '{name}@ROUTER_DIR'")
        from harmonica.router import NoiseLevelRouter

        router = load_router(ctx.router)
        digest = hashlib.sha1(router.logits.detach().cpu().numpy().tobytes()).hexdigest()[:16]
        if isinstance(router, NoiseLevelRouter):
            speedup = None if knob is None or float(knob) < 1 else float(knob)
            threshold = None if speedup is not None else router.threshold if knob is None else float(knob)
            enable(pipe, router, threshold=threshold, speedup=speedup, fused=ctx.fused)
            label = f"{_title(router, title)} noise-level " + (f"{speedup:g}x" if speedup else f"tau={threshold:.3g}")
            return Applied(name, speedup or threshold, label,
                           info={"router": str(ctx.router), "router_logits_sha1": digest, "speedup": speedup,
                                 "threshold": threshold, "training": router.training_info})
        threshold = router.threshold if knob is None else float(knob)
        enable(pipe, router, threshold=threshold, fused=ctx.fused)
        return Applied(name, threshold, f"{_title(router, title)} {router.cache_usage(threshold):.0%} tau={threshold:.3g}",
                       info={"router": str(ctx.router), "router_logits_sha1": digest, "threshold": threshold,
                             "router_cache_usage": router.cache_usage(threshold),
                             "router_num_steps": router.num_steps, "training": router.training_info})

    return apply


HARMONICA = MethodSpec(
    name="harmonica",
    title="HarmoniCa",
    knob="threshold",
    kind=float,
    apply=_apply("harmonica", "HarmoniCa"),
    default=None,  # the router's own threshold
    sweep=None,  # the router's own threshold; routers trained at other target usages are other points
    faster="higher",
    needs_router=True,
    description="learned router (SDT + IEPO); knob: inference threshold",
)

LTC = MethodSpec(
    name="ltc",
    title="Learning-to-Cache",
    knob="threshold",
    kind=float,
    apply=_apply("ltc", "LTC"),
    default=None,
    sweep=None,
    faster="higher",
    needs_router=True,
    description="learned router trained with the LTC objective; knob: inference threshold",
)

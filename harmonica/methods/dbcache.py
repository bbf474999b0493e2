"""cache-dit's DBCache (optional: ``pip install cache-dit --no-deps``; not a harmonica dependency).

DBCache computes the first ``Fn`` blocks, compares their residual with the previous step's, and
reuses the remaining blocks' residual while the relative change stays under the threshold. Settings
for small models (see shared/ENVIRONMENT.md): Fn = 1, Bn = 0; warm-up steps: a fifth of the schedule.
cache-dit patches the pipeline *class*'s ``__call__``; so that it patches only this pipeline, the
pipeline is first given a private subclass of its own class (same name, same behaviour).
"""

from __future__ import annotations

from .base import Applied, Context, MethodSpec


def apply(pipe, knob, ctx: Context) -> Applied:
    import cache_dit

    threshold = float(knob)
    cls = type(pipe)
    pipe.__class__ = type(cls.__name__, (cls,), {"__module__": cls.__module__})
    warmup = max(1, ctx.num_inference_steps // 5)
    config = cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold,
                                     max_warmup_steps=warmup, num_inference_steps=ctx.num_inference_steps)
    cache_dit.enable_cache(pipe, cache_config=config)
    return Applied("dbcache", threshold, f"DBCache {threshold:g}",
                   info={"residual_diff_threshold": threshold, "Fn_compute_blocks": 1, "Bn_compute_blocks": 0,
                         "max_warmup_steps": warmup, "cache_dit": getattr(cache_dit, "__version__", "?")})


SPEC = MethodSpec(
    name="dbcache",
    title="DBCache (cache-dit)",
    knob="residual_diff_threshold",
    kind=float,
    apply=apply,
    default=lambda info: 0.08,
    sweep=lambda info: [0.04, 0.08, 0.12, 0.2, 0.3],
    faster="higher",
    requires="cache_dit",
    description="cache-dit's dual-block cache, Fn=1 Bn=0",
)

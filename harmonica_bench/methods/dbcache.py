"""cache-dit's DBCache (optional: ``pip install cache-dit --no-deps``; not a harmonica dependency).

DBCache computes the first ``Fn`` blocks, compares their residual with the previous step's, and
reuses the remaining blocks' residual while the relative change stays under the threshold. Settings
for small models: Fn = 1, Bn = 0; warm-up steps: a fifth of the schedule. cache-dit's defaults (Fn = 8,
8 warm-up steps) are sized for large models: on the embedded models (12 blocks, 20 steps) they would
always compute 8 of the 12 blocks and cache nothing in the first 8 steps.
cache-dit patches the pipeline *class*'s ``__call__``; so that it patches only this pipeline, the
pipeline is first given a private subclass of its own class (same name, same behaviour).

``dbcache-taylorseer`` is DBCache with cache-dit's TaylorSeer calibrator
(``TaylorSeerCalibratorConfig(taylorseer_order=1)``, cache-dit's recommended order): the reused
residual of the middle blocks is forecast from its history instead of copied. In cache-dit 1.5.3 the
calibrator's first derivative exists only from the 4th fully computed step on, so with the warm-up
used here (a fifth of the steps) it forecasts from 20 steps up and reduces to DBCache below that.

A pipeline that runs CFG as two transformer forwards per step (true CFG) is told so
(``enable_separate_cfg=True``, counted on a calibration call): cache-dit's own registry assumes
Flux.1-dev's distilled guidance (one forward), so it would otherwise compare the conditional
residual with the unconditional one and never cache.

cache-dit reads a process group of more than one process as context or tensor parallelism (all
processes working on the same images) and averages its residual difference over them. Under data
parallelism (``accelerate launch`` of the harness: each process its own images) that would tie one
process's caching decisions to the other's images, and hang when the main process samples alone (the
harness's cost call). During this pipeline's calls the average is therefore kept only where the
transformer itself is parallelized (cache-dit's or diffusers' parallelism); each process decides on
its own images, as in one process.
"""

from __future__ import annotations

import contextlib
import functools

from .base import Applied, Context, MethodSpec
from .steps import forwards_per_step


TAYLORSEER_ORDER = 1  # cache-dit's default and recommendation for its calibrator (1 or 2)


def _apply(calibrated: bool):
    name = "dbcache-taylorseer" if calibrated else "dbcache"

    def apply(pipe, knob, ctx: Context) -> Applied:
        import cache_dit

        threshold = float(knob)
        separate_cfg = True if forwards_per_step(pipe, ctx) == 2 else None  # None: cache-dit's registry decides
        cls = type(pipe)
        pipe.__class__ = type(cls.__name__, (cls,), {"__module__": cls.__module__})
        warmup = max(1, ctx.num_inference_steps // 5)
        config = cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold,
                                         max_warmup_steps=warmup, num_inference_steps=ctx.num_inference_steps,
                                         enable_separate_cfg=separate_cfg)
        info = {"residual_diff_threshold": threshold, "Fn_compute_blocks": 1, "Bn_compute_blocks": 0,
                "max_warmup_steps": warmup, "enable_separate_cfg": separate_cfg,
                "cache_dit": getattr(cache_dit, "__version__", "?")}
        calibrator = None
        if calibrated:
            calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=TAYLORSEER_ORDER)
            info["calibrator"] = {"type": "taylorseer", "taylorseer_order": TAYLORSEER_ORDER}
        cache_dit.enable_cache(pipe, cache_config=config, calibrator_config=calibrator)
        _decide_per_process(type(pipe))
        info["decisions"] = "per process"
        label = f"DBCache+TaylorSeer {threshold:g}" if calibrated else f"DBCache {threshold:g}"
        return Applied(name, threshold, label, info=info)

    return apply


def _model_parallel(transformer) -> bool:
    return bool(getattr(transformer, "_is_parallelized", False)
                or getattr(transformer, "_parallel_config", None) is not None)


@contextlib.contextmanager
def _per_process_decisions():
    from cache_dit.caching.cache_blocks.pattern_base import CachedBlocks_Pattern_Base as Blocks

    shared = Blocks._is_parallelized
    Blocks._is_parallelized = lambda blocks: _model_parallel(blocks.transformer) and shared(blocks)
    try:
        yield
    finally:
        Blocks._is_parallelized = shared


def _decide_per_process(cls):
    """Wrap the (private) pipeline class's cache-dit ``__call__`` in ``_per_process_decisions``."""
    call = cls.__call__

    @functools.wraps(call)
    def __call__(self, *args, **kwargs):
        with _per_process_decisions():
            return call(self, *args, **kwargs)

    cls.__call__ = __call__


SPEC = MethodSpec(
    name="dbcache",
    title="DBCache (cache-dit)",
    knob="residual_diff_threshold",
    kind=float,
    apply=_apply(False),
    default=lambda info: 0.08,
    sweep=lambda info: [0.04, 0.08, 0.12, 0.2, 0.3],
    faster="higher",
    requires="cache_dit",
    description="cache-dit's dual-block cache, Fn=1 Bn=0",
)

SPEC_TAYLORSEER = MethodSpec(
    name="dbcache-taylorseer",
    title="DBCache + TaylorSeer calibrator (cache-dit)",
    knob="residual_diff_threshold",
    kind=float,
    apply=_apply(True),
    default=lambda info: 0.12,
    sweep=lambda info: [0.04, 0.08, 0.12, 0.2, 0.3, 0.4],
    faster="higher",
    requires="cache_dit",
    description="cache-dit's DBCache (Fn=1 Bn=0) with its first-order TaylorSeer calibrator forecasting the reused residual",
)

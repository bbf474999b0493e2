"""The public API: ``enable``, ``disable``, ``paused``, ``stats`` and ``controller``."""

from __future__ import annotations

from contextlib import contextmanager

from ..families import family_for, pipeline_transformers
from .config import HarmoniCaConfig, apply_harmonica
from .controller import HarmoniCa
from .hooks import STEP_HOOK
from .stats import CacheStats


def controller(pipe) -> HarmoniCa | None:
    """The harmonica controller on ``pipe``'s transformers (None when harmonica is not enabled there).

    The transformers are found as ``enable`` finds them (``pipeline_transformers``: every component the
    family names, ``transformer`` and ``transformer_2`` for Wan 2.2, each possibly None)."""
    try:
        transformers = pipeline_transformers(pipe, family_for(pipe))
    except ValueError:  # not a supported pipeline, or all its transformers are None
        return None
    for _, transformer in transformers:
        registry = transformer.__dict__.get("_diffusers_hook")
        hook = None if registry is None else registry.get_hook(STEP_HOOK)
        if hook is not None:
            return hook.controller
    return None


def enable(pipe, router, threshold: float | None = None, fused: bool = True, speedup: float | None = None,
           max_cache_memory: int | str | None = None, cache_dtype=None, cache_device=None):
    """Attach ``router`` (a ``HarmoniCaRouter`` or ``NoiseLevelRouter``, a router folder or a hub id) to
    ``pipe``'s transformer(s), replacing a router already attached. Returns ``pipe``.

    A noise-level router serves any step count and any scheduler it was trained for; with ``speedup``
    (e.g. 2.0) every call computes the branches it scores highest until the call's transformer MACs are at
    most ``1 / speedup`` of full computation (``harmonica.stats(pipe).macs_speedup`` says what was reached).

    The hooks live on the transformer: every pipeline sharing it (``from_pipe``, ``Pipeline(**components)``)
    runs with this router, each with its own scheduler. ``fused=False`` applies reused branches one by one
    (the torch reference wherever a block must be replaced as a whole), for measuring the kernel.
    ``max_cache_memory`` (bytes, or "4GB") bounds what a call's cache holds per cache context: a call over it
    raises ``CacheMemoryError`` naming the figure before its first block runs. ``cache_dtype`` keeps the cached
    outputs in another dtype (``torch.bfloat16``: half an fp32 model's cache), ``cache_device="cpu"`` in host memory.
    Every check runs before anything is attached: on error the pipeline is left as it was. The same as
    ``apply_harmonica(pipe, HarmoniCaConfig(router, threshold, fused, speedup, max_cache_memory, ...))``.
    """
    return apply_harmonica(pipe, HarmoniCaConfig(router, threshold, fused, speedup, max_cache_memory, cache_dtype,
                                                 cache_device))


def disable(pipe):
    """Remove harmonica from ``pipe``'s transformer(s): every module is left exactly as before ``enable``, and
    ``pipe.save_pretrained`` no longer saves a router."""
    from ..pipeline import forget_router_on_save

    found = controller(pipe)
    if found is not None:
        found.detach()
    forget_router_on_save(pipe)
    return pipe


def _require(pipe) -> HarmoniCa:
    found = controller(pipe)
    if found is None:
        raise RuntimeError(
            "harmonica is not enabled on this pipeline (harmonica.enable(pipe, router)). Its hooks live on the "
            "transformer objects and are not saved by save_pretrained: a pipeline loaded with from_pretrained, or built "
            "from new transformers, starts without them; enable it again there."
        )
    return found


def stats(pipe) -> CacheStats | None:
    """Statistics of the last completed call of ``pipe`` (None before its first)."""
    return _require(pipe).stats_for(pipe)


@contextmanager
def paused(pipe):
    """Run the transformer without harmonica (no cache reads or writes) inside the block."""
    found = controller(pipe)
    if found is None:
        yield pipe
        return
    previous = found.active
    found.active = False
    try:
        yield pipe
    finally:
        found.active = previous

"""diffusers' own caches beside harmonica: refused in either order, before any image is produced.

FasterCache, FirstBlockCache, MagCache, PyramidAttentionBroadcast, SeaCache and TaylorSeer each decide on their
own which blocks, attention layers or whole forwards run and what replaces them; harmonica decides the same for
every branch from its router. Stacked, one cache's reuse feeds the other's stored outputs and neither schedule is
what it was made for (FasterCache + harmonica crashed inside the hooks), so the two are never run together:

* ``enable`` on a transformer that has one of them raises before anything is attached (``check_no_diffusers_cache``);
* one applied after ``enable`` (``transformer.enable_cache`` or an ``apply_*`` function: diffusers cannot be told)
  is found by the step hook at the first forward of a call, which raises before the transformer runs.

Either cache can then be removed (``transformer.disable_cache()`` / ``harmonica.disable(pipe)``) and the other is
left as it was. TextKVCache composes: it is exact (it precomputes text keys and values) and hooks only
NucleusMoE-Image blocks, which no harmonica family has, so on these transformers it only records a pointer.

The hooks are found by the names diffusers registers them under (``diffusers.hooks.*_HOOK``), stable across
diffusers releases; a name a release does not have is simply never found.
"""

from __future__ import annotations

from torch import nn

# hook name -> the cache it belongs to (diffusers.hooks.faster_cache._FASTER_CACHE_DENOISER_HOOK, ...)
DIFFUSERS_CACHE_HOOKS = {
    "faster_cache_denoiser": "FasterCache",
    "faster_cache_block": "FasterCache",
    "fbc_leader_block_hook": "FirstBlockCache",
    "fbc_block_hook": "FirstBlockCache",
    "mag_cache_leader_block_hook": "MagCache",
    "mag_cache_block_hook": "MagCache",
    "pyramid_attention_broadcast": "PyramidAttentionBroadcast",
    "sea_cache_root": "SeaCache",
    "sea_cache_leader_block": "SeaCache",
    "sea_cache_block": "SeaCache",
    "sea_cache_post_norm": "SeaCache",
    "taylorseer_cache": "TaylorSeerCache",
    "text_kv_cache_block": "TextKVCache",  # its transformer-level hook alone is harmless (see above)
}


def diffusers_caches(transformer: nn.Module) -> dict[str, list[str]]:
    """The diffusers caches hooked anywhere in ``transformer``: ``{cache: [its hook names]}`` (empty: none)."""
    found: dict[str, list[str]] = {}
    for module in transformer.modules():
        registry = module.__dict__.get("_diffusers_hook")
        for name in () if registry is None else registry.hooks:
            cache = DIFFUSERS_CACHE_HOOKS.get(name)
            if cache is not None and name not in found.setdefault(cache, []):
                found[cache].append(name)
    return found


def _removal(component: str, transformer: nn.Module, hooks: list[str]) -> str:
    if getattr(transformer, "_cache_config", None) is not None:  # CacheMixin.enable_cache put it there
        return f"pipe.{component}.disable_cache()"
    names = ", ".join(repr(h) for h in hooks)
    return (f"diffusers.hooks.HookRegistry.check_if_exists_or_initialize(pipe.{component}).remove_hook(name, "
            f"recurse=True) for each name in ({names})")


def check_no_diffusers_cache(named_transformers, enabling: bool) -> None:
    """Raise naming every diffusers cache on the ``(component, transformer)`` pairs and how to remove it.
    ``enabling``: raised by ``harmonica.enable`` (else at a forward, the cache applied after ``enable``)."""
    problems = []
    for component, transformer in named_transformers:
        for cache, hooks in diffusers_caches(transformer).items():
            problems.append(f"{component} has diffusers' {cache} ({_removal(component, transformer, hooks)} "
                            "removes it)")
    if not problems:
        return
    if enabling:
        advice = "Remove it, then call harmonica.enable(pipe, router) again (nothing was attached)."
    else:
        advice = ("It was applied after harmonica.enable, and this call stopped before the transformer ran: remove it "
                  "to run harmonica, or call harmonica.disable(pipe) to run it alone.")
    raise RuntimeError("harmonica: two feature caches cannot run on one transformer (each decides which blocks "
                       f"run and what replaces the others): {'; '.join(problems)}. {advice}")

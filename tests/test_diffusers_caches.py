"""harmonica beside diffusers' own caches (every cache config the installed diffusers has), on tiny Wan, where
each of them runs: ``enable`` on a transformer with one is refused before anything is attached; one applied after
``enable`` is refused at the first forward, before the transformer runs; removing either cache then leaves the other
exactly as it ran alone. TextKVCache (exact, and hooking no block of these families) composes bit-exactly."""

from __future__ import annotations

import diffusers.hooks as dh
import pytest
import torch
from conftest import one_thread_for_tiny_models
from tiny_models import tiny_wan_pipeline, wan_call_kwargs

import harmonica
from harmonica import HarmoniCaRouter
from harmonica.cache.coexist import DIFFUSERS_CACHE_HOOKS

STEPS = 3
KWARGS = wan_call_kwargs(num_inference_steps=STEPS)


def _configs(pipe) -> dict:
    """name -> a fresh config of every diffusers cache this diffusers has, set to reuse within 3 steps."""
    timestep = lambda: pipe.current_timestep  # noqa: E731
    makers = {
        "FasterCache": lambda c: c(current_timestep_callback=timestep, spatial_attention_timestep_skip_range=(-1, 1000)),
        "FirstBlockCache": lambda c: c(threshold=0.5),
        "MagCache": lambda c: c(num_inference_steps=STEPS, mag_ratios=[1.0] * STEPS, retention_ratio=0.0),
        "PyramidAttentionBroadcast": lambda c: c(spatial_attention_block_skip_range=2, current_timestep_callback=timestep,
                                                 spatial_attention_timestep_skip_range=(-1, 1000)),
        "SeaCache": lambda c: c(),
        # its default module patterns match no Wan module (they are Flux's): Wan's attention named
        "TaylorSeerCache": lambda c: c(cache_interval=2, disable_cache_before_step=1,
                                       cache_identifiers=[r"blocks\.\d+\.attn1"]),
    }
    return {name: (lambda make=make, c=getattr(dh, f"{name}Config"): make(c))
            for name, make in makers.items() if hasattr(dh, f"{name}Config")}


CACHES = list(_configs(None))


one_thread = pytest.fixture(autouse=True, scope="module")(one_thread_for_tiny_models)


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def router(pipe):
    return HarmoniCaRouter.static(harmonica.describe(pipe), STEPS, compute_every=2)


@pytest.fixture(scope="module")
def alone(pipe, router):
    """Each cache's frames run alone (the diffusers ones, and harmonica's)."""
    frames = {"stock": run(pipe)}
    for name, config in _configs(pipe).items():
        pipe.transformer.enable_cache(config())
        frames[name] = run(pipe)
        pipe.transformer.disable_cache()
        # the cache really reused something; SeaCache runs fail-open (computes all) where the pipeline's loop gives
        # cache_context no step metadata, as Wan's does: it is refused all the same, for the loops that do
        assert name == "SeaCache" or not torch.equal(frames[name], frames["stock"]), name
    harmonica.enable(pipe, router)
    frames["harmonica"] = run(pipe)
    harmonica.disable(pipe)
    return frames


def run(pipe):
    return pipe(**KWARGS, generator=torch.Generator().manual_seed(0)).frames


def hooks(pipe) -> dict:
    return {name: (tuple(m._diffusers_hook.hooks) if "_diffusers_hook" in m.__dict__ else None, "forward" in m.__dict__)
            for name, m in pipe.transformer.named_modules()}


def test_every_diffusers_cache_of_this_release_is_covered():
    assert {"FirstBlockCache", "PyramidAttentionBroadcast", "FasterCache"} <= set(CACHES)
    assert set(DIFFUSERS_CACHE_HOOKS.values()) >= set(CACHES)


@pytest.mark.parametrize("name", CACHES)
def test_enable_on_a_transformer_with_a_diffusers_cache_is_refused(pipe, router, alone, name):
    pipe.transformer.enable_cache(_configs(pipe)[name]())
    before = hooks(pipe)
    with pytest.raises(RuntimeError, match=rf"transformer has diffusers' {name} \(pipe.transformer.disable_cache\(\)"):
        harmonica.enable(pipe, router)
    assert harmonica.controller(pipe) is None and hooks(pipe) == before  # nothing attached
    assert torch.equal(run(pipe), alone[name])  # the diffusers cache runs as it did alone
    pipe.transformer.disable_cache()


def test_a_cache_applied_with_apply_star_is_named_with_its_hooks(pipe, router):
    dh.apply_first_block_cache(pipe.transformer, dh.FirstBlockCacheConfig(threshold=0.5))
    with pytest.raises(RuntimeError, match="FirstBlockCache .*remove_hook.*'fbc_leader_block_hook'"):
        harmonica.enable(pipe, router)
    registry = dh.HookRegistry.check_if_exists_or_initialize(pipe.transformer)
    for name in ("fbc_leader_block_hook", "fbc_block_hook"):
        registry.remove_hook(name, recurse=True)
    harmonica.enable(pipe, router)  # the advice works
    harmonica.disable(pipe)


@pytest.mark.parametrize("name", CACHES)
def test_a_diffusers_cache_after_enable_is_refused_at_the_first_forward(pipe, router, alone, name):
    harmonica.enable(pipe, router)
    pipe.transformer.enable_cache(_configs(pipe)[name]())
    steps = []
    with pytest.raises(RuntimeError, match=rf"diffusers' {name} .*applied after harmonica.enable"):
        pipe(**KWARGS, generator=torch.Generator().manual_seed(0),
             callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw)
    assert steps == []  # stopped at the first forward
    pipe.transformer.disable_cache()  # removing the diffusers cache leaves harmonica as it was
    assert torch.equal(run(pipe), alone["harmonica"]) and harmonica.stats(pipe).cache_usage > 0.3

    pipe.transformer.enable_cache(_configs(pipe)[name]())
    harmonica.disable(pipe)  # removing harmonica leaves the diffusers cache as it was
    assert torch.equal(run(pipe), alone[name])
    pipe.transformer.disable_cache()
    assert torch.equal(run(pipe), alone["stock"])


@pytest.mark.skipif(not hasattr(dh, "TextKVCacheConfig"), reason="this diffusers has no TextKVCache")
@pytest.mark.parametrize("order", ["diffusers first", "harmonica first"])
def test_text_kv_cache_composes_exactly(pipe, router, alone, order):
    exact = HarmoniCaRouter.for_layout(harmonica.describe(pipe), STEPS, init="compute")
    for r, expected in ((exact, alone["stock"]), (router, alone["harmonica"])):
        if order == "diffusers first":
            pipe.transformer.enable_cache(dh.TextKVCacheConfig())
            harmonica.enable(pipe, r)
        else:
            harmonica.enable(pipe, r)
            pipe.transformer.enable_cache(dh.TextKVCacheConfig())
        assert torch.equal(run(pipe), expected)
        harmonica.disable(pipe)
        assert "text_kv_cache_transformer" in pipe.transformer._diffusers_hook.hooks  # left intact
        pipe.transformer.disable_cache()

"""Every entry point finds a pipeline's transformers the same way: ``transformer`` and ``transformer_2`` (or
whatever the family spec names), each possibly None. Wan 2.2 with only ``transformer_2`` (diffusers' own
``test_save_load_optional_components`` builds it) must enable, run, report, pause, disable and re-enable, and
``disable`` must leave no harmonica hook on any module of any family's pipeline."""

from __future__ import annotations

import pytest
import torch
from conftest import one_thread_for_tiny_models
from diffusers import DiffusionPipeline
from tiny_models import (flux_call_kwargs, pixart_call_kwargs, qwenimage_call_kwargs, sana_call_kwargs, sd3_call_kwargs,
                         tiny_dit_pipeline, tiny_flux_pipeline, tiny_pixart_pipeline, tiny_qwenimage_pipeline,
                         tiny_sana_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline,
                         wan_call_kwargs)

import harmonica
from harmonica import HarmoniCaRouter


one_thread = pytest.fixture(autouse=True, scope="module")(one_thread_for_tiny_models)


def frames(pipe, **extra):
    kwargs = wan_call_kwargs(guidance_scale=1.0, **extra)
    return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames


def only_second_expert():
    """Wan 2.2 A14B-like with ``transformer=None``: at boundary_ratio 1.0 every step runs ``transformer_2``."""
    pipe = tiny_wan_pipeline(two_experts=True, boundary_ratio=1.0)
    pipe.register_modules(transformer=None)
    return pipe


def only_first_expert():
    pipe = tiny_wan_pipeline(two_experts=True, boundary_ratio=None)
    pipe.register_modules(transformer_2=None)
    return pipe


def hook_state(pipe) -> dict:
    """Per module of every component: its diffusers hooks and whether its forward is patched."""
    state = {}
    for component, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            for name, sub in module.named_modules():
                registry = sub.__dict__.get("_diffusers_hook")
                hooks = None if registry is None else tuple(registry.hooks)
                state[f"{component}.{name}"] = (hooks, "forward" in sub.__dict__)
    return state


def harmonica_hooks(pipe) -> list[str]:
    return [f"{where}: {hook}" for where, (hooks, _) in hook_state(pipe).items() for hook in hooks or ()
            if hook.startswith("harmonica")]


@pytest.mark.parametrize("build, expert", [(only_second_expert, "transformer_2"), (only_first_expert, "transformer")])
def test_a_pipeline_with_one_of_two_experts(tmp_path, build, expert):
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    # diffusers' save / load round trip with an optional component set to None
    pipe.save_pretrained(tmp_path)
    pipe = DiffusionPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    assert getattr(pipe, "transformer" if expert == "transformer_2" else "transformer_2") is None
    stock = frames(pipe)
    before = hook_state(pipe)  # after a stock call: diffusers' cache_context leaves empty registries
    steps = wan_call_kwargs()["num_inference_steps"]

    router = HarmoniCaRouter.static(harmonica.describe(pipe), steps, compute_every=2)
    harmonica.enable(pipe, router)
    assert harmonica.controller(pipe) is not None
    cached = frames(pipe)
    stats = harmonica.stats(pipe)
    assert stats is not None and stats.num_steps == steps and stats.cache_usage > 0.3
    assert not torch.equal(cached, stock)  # the cache really ran on the one expert
    with harmonica.paused(pipe):
        assert torch.equal(frames(pipe), stock)
    assert torch.equal(frames(pipe), cached)  # resumed after the block

    harmonica.disable(pipe)
    assert harmonica.controller(pipe) is None
    assert harmonica_hooks(pipe) == [] and hook_state(pipe) == before
    assert torch.equal(frames(pipe), stock)

    harmonica.enable(pipe, router)  # a second enable after disable
    harmonica.enable(pipe, router)  # and one replacing a router already attached
    assert torch.equal(frames(pipe), cached)
    harmonica.disable(pipe)
    assert hook_state(pipe) == before


def two_expert_wan():
    return tiny_wan_pipeline(two_experts=True, boundary_ratio=0.8)


PIPELINES = {
    "dit": (tiny_dit_pipeline, dict(class_labels=[1, 2], num_inference_steps=3, output_type="pt")),
    "pixart": (tiny_pixart_pipeline, pixart_call_kwargs(num_inference_steps=3)),
    "flux": (tiny_flux_pipeline, flux_call_kwargs(num_inference_steps=3)),
    "sd3": (tiny_sd3_pipeline, sd3_call_kwargs(num_inference_steps=3)),
    "sana": (tiny_sana_pipeline, sana_call_kwargs(num_inference_steps=3)),
    "wan22": (two_expert_wan, wan_call_kwargs(num_inference_steps=3)),
    "qwenimage": (tiny_qwenimage_pipeline, qwenimage_call_kwargs(num_inference_steps=3)),
}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_disable_leaves_no_hook_on_any_module(name):
    build, kwargs = PIPELINES[name]
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    pipe(**kwargs, generator=torch.Generator().manual_seed(0))
    before = hook_state(pipe)
    harmonica.enable(pipe, HarmoniCaRouter.static(harmonica.describe(pipe), 3, compute_every=2))
    assert harmonica_hooks(pipe) != []
    pipe(**kwargs, generator=torch.Generator().manual_seed(0))  # a call leaves per-call state behind
    assert harmonica.stats(pipe).cache_usage > 0
    harmonica.disable(pipe)
    assert harmonica_hooks(pipe) == [] and hook_state(pipe) == before, name
    assert harmonica.controller(pipe) is None


def test_controller_of_a_pipeline_without_transformers_is_none():
    pipe = only_second_expert()
    pipe.register_modules(transformer_2=None)
    assert harmonica.controller(pipe) is None
    harmonica.disable(pipe)  # nothing to remove, no error
    with pytest.raises(RuntimeError, match="not enabled"):
        harmonica.stats(pipe)


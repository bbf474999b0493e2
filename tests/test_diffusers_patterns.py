"""diffusers' own pipeline-test patterns (``tests/pipelines/test_pipelines_common.py``) on every family with harmonica
enabled: an all-compute router gives exactly the stock outputs, a caching router runs and reuses. Save / load (the
hooks live on the transformer object and are not saved: the loaded pipeline is enabled again), optional components
None through a round trip (Wan 2.2 with only ``transformer_2``, as diffusers' ``test_save_load_optional_components``
builds it; PixArt without its text encoder), attention slicing, batch consistency, ``num_images_per_prompt``,
``callback_on_step_end`` and ``output_type``. Tiny models, 3 steps, one thread."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from conftest import one_thread_for_tiny_models
from diffusers import DiffusionPipeline
from tiny_models import (flux_call_kwargs, pixart_call_kwargs, qwenimage_call_kwargs, sana_call_kwargs, sd3_call_kwargs,
                         tiny_dit_pipeline, tiny_flux_pipeline, tiny_pixart_pipeline, tiny_qwenimage_pipeline,
                         tiny_sana_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline, wan_call_kwargs)

import harmonica
from harmonica import HarmoniCaRouter

STEPS = 3
FAMILIES = {
    "dit": (tiny_dit_pipeline, dict(class_labels=[1, 2], num_inference_steps=STEPS, output_type="pt")),
    "pixart": (tiny_pixart_pipeline, pixart_call_kwargs(num_inference_steps=STEPS)),
    "flux": (tiny_flux_pipeline, flux_call_kwargs(num_inference_steps=STEPS)),
    "sd3": (tiny_sd3_pipeline, sd3_call_kwargs(num_inference_steps=STEPS)),
    "sana": (tiny_sana_pipeline, sana_call_kwargs(num_inference_steps=STEPS)),
    "wan": (tiny_wan_pipeline, wan_call_kwargs(num_inference_steps=STEPS)),
    "qwenimage": (tiny_qwenimage_pipeline, qwenimage_call_kwargs(num_inference_steps=STEPS)),
}
BATCHED = ("prompt", "negative_prompt", "class_labels")


one_thread = pytest.fixture(autouse=True, scope="module")(one_thread_for_tiny_models)


class Family:
    """One family's pipeline with its all-compute and caching routers, switched on and off per call."""

    def __init__(self, name, path):
        build, self.kwargs = FAMILIES[name]
        self.name, self.path = name, path
        build().save_pretrained(path)
        self.pipe = load(path)
        layout = harmonica.describe(self.pipe)
        self.routers = {"exact": HarmoniCaRouter.for_layout(layout, STEPS, init="compute"),
                        "caching": HarmoniCaRouter.static(layout, STEPS, compute_every=2)}

    def accepts(self, parameter: str) -> bool:
        return parameter in inspect.signature(type(self.pipe).__call__).parameters

    def run(self, router=None, pipe=None, seed=0, **extra):
        """The first output (images or frames) of a call, stock (``router`` None) or with that router enabled."""
        pipe = self.pipe if pipe is None else pipe
        if router is not None:
            harmonica.enable(pipe, self.routers[router])
        try:
            generator = [torch.Generator().manual_seed(s) for s in seed] if isinstance(seed, list) else \
                torch.Generator().manual_seed(seed)
            out = pipe(**{**self.kwargs, **extra}, generator=generator)[0]
            if router == "caching":
                assert harmonica.stats(pipe).cache_usage > 0.3
            return out
        finally:
            harmonica.disable(pipe)


def load(path):
    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def equal(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if torch.is_tensor(a) else np.array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    return Family(request.param, tmp_path_factory.mktemp(request.param))


def test_save_load_round_trip(family, tmp_path):
    stock = family.run()
    harmonica.enable(family.pipe, family.routers["caching"])
    family.pipe.save_pretrained(tmp_path)  # saved with harmonica enabled: the weights alone
    harmonica.disable(family.pipe)
    loaded = load(tmp_path)
    assert harmonica.controller(loaded) is None  # hooks are not saved
    with pytest.raises(RuntimeError, match="not enabled on this pipeline.*not saved.*enable it again"):
        harmonica.stats(loaded)
    assert equal(family.run(pipe=loaded), stock) and equal(family.run("exact", pipe=loaded), stock)
    assert not equal(family.run("caching", pipe=loaded), stock)


def test_optional_components_none_round_trip(family, tmp_path):
    """diffusers' ``test_save_load_optional_components``: optional components None, saved, loaded, still None."""
    extra = {}
    if family.name == "wan":  # Wan 2.2 A14B-like with transformer=None: transformer_2 runs every step
        pipe = tiny_wan_pipeline(two_experts=True, boundary_ratio=1.0)
        pipe.register_modules(transformer=None)
    elif family.name == "pixart":  # prompt embeddings given: the text encoder and tokenizer are not needed
        pipe = load(family.path)
        with torch.no_grad():
            embeds, mask, negative, negative_mask = pipe.encode_prompt(family.kwargs["prompt"], max_sequence_length=16)
        extra = dict(prompt=None, negative_prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask,
                     negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask)
    else:
        pipe = load(family.path)
    optional = [c for c in getattr(pipe, "_optional_components", []) if c in pipe.components and
                (family.name != "wan" or c == "transformer")]
    if not optional:
        pytest.skip(f"{type(pipe).__name__} has no optional components")
    for component in optional:
        setattr(pipe, component, None)
    pipe.set_progress_bar_config(disable=True)
    router = HarmoniCaRouter.static(harmonica.describe(pipe), STEPS, compute_every=2)
    stock = family.run(pipe=pipe, **extra)
    harmonica.enable(pipe, router)
    cached = pipe(**{**family.kwargs, **extra}, generator=torch.Generator().manual_seed(0))[0]
    pipe.save_pretrained(tmp_path)
    loaded = load(tmp_path)
    assert all(getattr(loaded, c) is None for c in optional)
    assert equal(family.run(pipe=loaded, **extra), stock)  # loaded without harmonica: stock
    harmonica.enable(loaded, router)  # enabled again on the loaded pipeline: the same cached outputs
    assert equal(loaded(**{**family.kwargs, **extra}, generator=torch.Generator().manual_seed(0))[0], cached)
    assert harmonica.stats(loaded).cache_usage > 0.3 and not equal(cached, stock)


def test_attention_slicing(family):
    stock = family.run()
    family.pipe.enable_attention_slicing(slice_size=1)
    try:
        sliced = family.run()
        assert equal(family.run("exact"), sliced)
        family.run("caching")
    finally:
        family.pipe.disable_attention_slicing()
    torch.testing.assert_close(sliced, stock)


def test_batch_consistency(family):
    """The batch's first output equals that prompt alone (its own generator) as closely with harmonica as stock."""
    single = {k: v[:1] for k, v in family.kwargs.items() if k in BATCHED and isinstance(v, list)}
    for router in (None, "exact", "caching"):
        batched = family.run(router, seed=[0, 1])
        alone = family.run(router, seed=[0], **single)
        difference = (batched[:1] - alone).abs().max().item()
        if router is None:
            tolerance = difference + 1e-5
        assert difference <= tolerance, (router, difference)


def test_num_images_per_prompt(family):
    parameter = next((p for p in ("num_images_per_prompt", "num_videos_per_prompt") if family.accepts(p)), None)
    if parameter is None:
        pytest.skip(f"{type(family.pipe).__name__} takes no images-per-prompt count")
    stock = family.run(**{parameter: 2})
    assert len(stock) == 2 * len(family.kwargs["prompt"])
    assert equal(family.run("exact", **{parameter: 2}), stock)
    assert family.run("caching", **{parameter: 2}).shape == stock.shape


def test_callback_on_step_end(family):
    if not family.accepts("callback_on_step_end"):
        pytest.skip(f"{type(family.pipe).__name__} takes no callback_on_step_end")
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append(step)
        if step == 1:  # a callback that changes the latents: the next steps run on them
            tensors["latents"] = tensors["latents"] * 0.9
        return tensors

    stock = family.run(callback_on_step_end=callback)
    assert equal(family.run("exact", callback_on_step_end=callback), stock)
    family.run("caching", callback_on_step_end=callback)
    assert seen == list(range(STEPS)) * 3


@pytest.mark.parametrize("output_type", ["pt", "np", "latent"])
def test_output_type(family, output_type):
    stock = family.run(output_type=output_type)
    assert equal(family.run("exact", output_type=output_type), stock)
    cached = family.run("caching", output_type=output_type)
    assert np.asarray(cached).shape == np.asarray(stock).shape and not equal(cached, stock)

"""LoRA on an enabled pipeline (diffusers' loader, with peft): loading, fusing, unfusing and unloading LoRA weights
after ``enable`` keeps an all-compute router bit-identical to the stock pipeline in the same state, and a caching
router equal to the hand-written reference cache (Flux's single-block ``proj_out`` branch is a layer the LoRA wraps:
its hook follows). The router's weights check tells a LoRA on the weights it was trained on (named, quality
unmeasured) from a fused one (the weights moved) and from other weights. Skipped without peft."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import one_thread_for_tiny_models
from test_families import reference_images
from tiny_models import flux_call_kwargs, tiny_flux_pipeline

import harmonica
from harmonica import HarmoniCaRouter
from harmonica.router import weights_summary

pytest.importorskip("peft")

STEPS = 4
KWARGS = flux_call_kwargs(num_inference_steps=STEPS)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff.net.2",
           "ff_context.net.2", "proj_mlp", "proj_out"]  # diffusers' Flux LoRAs target these (and more)


one_thread = pytest.fixture(autouse=True, scope="module")(one_thread_for_tiny_models)


@pytest.fixture(scope="module")
def lora():
    """A LoRA state dict in diffusers' format for the tiny Flux transformer, with random (non-zero) weights."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = tiny_flux_pipeline().transformer
    torch.manual_seed(7)
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=TARGETS, init_lora_weights=False))
    state = get_peft_model_state_dict(transformer)
    assert any(".single_transformer_blocks.0.proj_out." in f".{k}" for k in state)
    return {f"transformer.{k}": v for k, v in state.items()}


def pipeline():
    pipe = tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe):
    return pipe(**KWARGS, generator=torch.Generator().manual_seed(0)).images


# the pipeline's LoRA states, in order, each as the step that reaches it from the one before
STAGES = {
    "loaded": lambda pipe, lora: pipe.load_lora_weights(lora, adapter_name="tiny"),
    "fused": lambda pipe, lora: pipe.fuse_lora(components=["transformer"]),
    "unfused": lambda pipe, lora: pipe.unfuse_lora(components=["transformer"]),
    "unloaded": lambda pipe, lora: pipe.unload_lora_weights(),
}


@pytest.mark.parametrize("caching", [False, True])
def test_load_fuse_unfuse_unload_on_an_enabled_pipeline(lora, caching):
    pipe, stock = pipeline(), pipeline()
    layout = harmonica.describe(pipe)
    router = (HarmoniCaRouter.static(layout, STEPS, compute_every=2) if caching
              else HarmoniCaRouter.for_layout(layout, STEPS, init="compute"))
    harmonica.enable(pipe, router)
    base = run(stock)
    images = {}
    for stage, step in STAGES.items():
        step(pipe, lora)
        step(stock, lora)
        got = run(pipe)
        if caching:  # the reference cache on a third pipeline in the same state
            reference = pipeline()
            for s in list(STAGES)[:list(STAGES).index(stage) + 1]:
                STAGES[s](reference, lora)
            assert torch.equal(got, reference_images(reference, KWARGS, router.schedule(), 2)), stage
            assert harmonica.stats(pipe).cache_usage > 0.4
        else:
            assert torch.equal(got, run(stock)), stage
        images[stage] = got
    assert not torch.equal(images["loaded"], images["unloaded"])  # the LoRA changed the image
    torch.testing.assert_close(images["fused"], images["loaded"], rtol=0, atol=1e-5)  # fusing: rounding only
    if not caching:  # unfusing subtracts what fusing added: the weights are back up to rounding
        torch.testing.assert_close(images["unloaded"], base, rtol=0, atol=1e-5)


def test_the_weights_check_tells_a_lora_from_other_weights(lora):
    pipe = pipeline()
    router = HarmoniCaRouter.static(harmonica.describe(pipe), STEPS, compute_every=2,
                                    training={"transformer_weights": weights_summary(pipe.transformer)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        harmonica.enable(pipe, router)  # the weights it was trained on: silent
    pipe.load_lora_weights(lora, adapter_name="tiny")
    with pytest.warns(UserWarning, match="trained on the base transformer weights, which LoRA adapter.s. tiny modify: "
                                         "its quality with this LoRA is unmeasured") as caught:
        run(pipe)  # loaded after enable: named at the next call, once
    assert not any("other transformer weights" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(pipe)  # nothing changed since: no second warning
    with pytest.warns(UserWarning, match="this LoRA is unmeasured"):
        harmonica.enable(pipe, router)  # enabled on a pipeline with the LoRA: the same
    pipe.fuse_lora(components=["transformer"])
    with pytest.warns(UserWarning, match=r"trained on other transformer weights \(.*; the LoRA adapter.s. tiny fused "
                                         "into them moved them\\)"):
        run(pipe)
    pipe.unload_lora_weights()  # fused then unloaded: the weights stay moved, no adapter left to name
    with pytest.warns(UserWarning, match="other transformer weights .*possibly a LoRA fused into the weights"):
        harmonica.enable(pipe, router)

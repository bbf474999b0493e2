"""Flux with an IP adapter: its attention returns the image-prompt attention output as a third tensor, which the
spec names and the cache keeps and rebuilds with the other two. An all-compute router is bit-identical to stock;
a caching one skips the branch (the IP projections do not run) and equals the hand-written reference cache; a
processor changed after ``enable`` is refused at the first forward of the next call."""

from __future__ import annotations

import pytest
import torch
from conftest import one_thread_for_tiny_models
from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, FluxIPAdapterAttnProcessor
from test_families import reference_images
from tiny_models import flux_call_kwargs, tiny_flux_pipeline

import harmonica
from harmonica import HarmoniCaRouter

STEPS = 4
IMAGE_EMBED_DIM = 8


one_thread = pytest.fixture(autouse=True, scope="module")(one_thread_for_tiny_models)


def load_tiny_ip_adapter(transformer) -> None:
    """What diffusers' ``_load_ip_adapter_weights`` builds for Flux, with random weights: the IP processor on every
    double block (single blocks keep theirs) and the image projection of one IP adapter (4 image tokens)."""
    torch.manual_seed(5)
    processors = {}
    for name in transformer.attn_processors:
        if name.startswith("single_transformer_blocks"):
            processors[name] = FluxAttnProcessor()
        else:
            processors[name] = FluxIPAdapterAttnProcessor(hidden_size=transformer.inner_dim, num_tokens=(4,),
                                                          cross_attention_dim=transformer.config.joint_attention_dim)
    transformer.set_attn_processor(processors)
    transformer.encoder_hid_proj = MultiIPAdapterImageProjection([ImageProjection(
        image_embed_dim=IMAGE_EMBED_DIM, cross_attention_dim=transformer.config.joint_attention_dim,
        num_image_text_embeds=4)])
    transformer.config.encoder_hid_dim_type = "ip_image_proj"


def ip_kwargs(**extra):
    """Precomputed image embeddings (no image encoder), one per IP adapter, for the prompt and the negative."""
    generator = torch.Generator().manual_seed(6)
    embeds = [torch.randn(1, 1, IMAGE_EMBED_DIM, generator=generator)]
    negative = [torch.randn(1, 1, IMAGE_EMBED_DIM, generator=generator)]
    return flux_call_kwargs(num_inference_steps=STEPS, ip_adapter_image_embeds=embeds,
                            negative_ip_adapter_image_embeds=negative, **extra)


def run(pipe, kwargs):
    return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images


def pipeline(ip_adapter: bool = True):
    pipe = tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    if ip_adapter:
        load_tiny_ip_adapter(pipe.transformer)
    return pipe


@pytest.fixture(scope="module")
def stock():
    return run(pipeline(), ip_kwargs())


def test_the_ip_adapter_changes_the_image(stock):
    assert not torch.equal(stock, run(pipeline(ip_adapter=False), flux_call_kwargs(num_inference_steps=STEPS)))


def test_the_spec_names_the_third_output_of_a_double_block():
    pipe = pipeline()
    harmonica.enable(pipe, HarmoniCaRouter.for_layout(harmonica.describe(pipe), STEPS, init="compute"))
    blocks = harmonica.controller(pipe).blocks[0]
    assert [b.branches[0].streams for b in blocks] == [("image", "text", "image")] * 2 + [("joint",)] * 2


def test_all_compute_router_is_exact(stock):
    pipe = pipeline()
    harmonica.enable(pipe, HarmoniCaRouter.for_layout(harmonica.describe(pipe), STEPS, init="compute"))
    assert torch.equal(run(pipe, ip_kwargs()), stock)
    assert harmonica.stats(pipe).cache_usage == 0.0


@pytest.mark.parametrize("fused", [False, True])
def test_a_caching_router_skips_and_matches_the_reference_cache(stock, fused):
    pipe = pipeline()
    router = HarmoniCaRouter.static(harmonica.describe(pipe), STEPS, compute_every=2)
    expected = reference_images(pipeline(), ip_kwargs(), router.schedule(), 2)
    harmonica.enable(pipe, router, fused=fused)
    calls = []
    ip_projection = pipe.transformer.transformer_blocks[0].attn.processor.to_k_ip[0]
    ip_projection.register_forward_pre_hook(lambda *_: calls.append(1))
    got = run(pipe, ip_kwargs())
    assert len(calls) == STEPS // 2 * 2  # computed at every other step, cond and uncond
    assert harmonica.stats(pipe).cache_usage > 0.4 and not torch.equal(got, stock)
    if fused:  # the fused apply adds the ungated IP output before the gated MLP output: rounding only
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    else:
        assert torch.equal(got, expected)


@pytest.mark.parametrize("change", ["loaded after enable", "unloaded after enable", "unknown processor"])
def test_a_processor_the_spec_does_not_describe_is_refused_at_the_first_forward(change):
    pipe = pipeline(ip_adapter=change != "loaded after enable")
    router = HarmoniCaRouter.static(harmonica.describe(pipe), STEPS, compute_every=2)
    if change == "unknown processor":  # one that returns a fourth tensor the spec cannot know
        class Extra(FluxIPAdapterAttnProcessor):
            def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                         image_rotary_emb=None, ip_hidden_states=None):  # the attention passes what it names
                return (*super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                                          ip_hidden_states), None)

        block = pipe.transformer.transformer_blocks[1]
        extra = Extra(pipe.transformer.inner_dim, pipe.transformer.config.joint_attention_dim)
        extra.load_state_dict(block.attn.processor.state_dict())
        block.attn.set_processor(extra)
    harmonica.enable(pipe, router)
    if change == "loaded after enable":
        load_tiny_ip_adapter(pipe.transformer)
    elif change == "unloaded after enable":
        pipe.unload_ip_adapter()  # diffusers puts back FluxAttnProcessor
    steps = []
    kwargs = ip_kwargs() if change != "unloaded after enable" else flux_call_kwargs(num_inference_steps=STEPS)
    with pytest.raises(RuntimeError, match=r"attn returned \d tensors, its family spec named \d at harmonica.enable"):
        pipe(**kwargs, generator=torch.Generator().manual_seed(0), callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw)
    assert steps == []  # before the first step ended
    harmonica.enable(pipe, router)  # enabling again reads the processors as they are now
    if change == "unknown processor":
        with pytest.raises(RuntimeError, match="returned 4 tensors, its family spec named 3"):
            run(pipe, kwargs)
    else:
        assert harmonica.stats(pipe) is None and run(pipe, kwargs).isfinite().all()
        assert harmonica.stats(pipe).cache_usage > 0.4

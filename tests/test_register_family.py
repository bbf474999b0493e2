"""A family registered from outside the package, for a pipeline class harmonica has never heard of (not
derived from a served one): ``describe`` and ``enable`` serve it (an all-compute router is bit-identical
to the stock call, a static schedule really reuses), router training's denoiser and the harness's call
arguments are registered by the family's name, and the registry refuses what it cannot serve."""

from __future__ import annotations

import pytest
import torch
from conftest import generator
from diffusers import DDIMScheduler, DiffusionPipeline
from tiny_models import tiny_dit_pipeline

import harmonica
from harmonica import HarmoniCaRouter
from harmonica.families import (FAMILIES, SUPPORTED_PIPELINES, Family, UnsupportedPipelineError, family_for,
                                unregister_family)
from harmonica.families.dit import BASIC_BLOCK

STEPS = 6


class LatentLoopPipeline(DiffusionPipeline):
    """A class-conditional pipeline of its own: a DiT transformer, a scheduler, its own denoising loop and
    latents out (no VAE, no guidance)."""

    def __init__(self, transformer, scheduler):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, class_labels, num_inference_steps: int = STEPS, generator=None, latents=None):
        config = self.transformer.config
        labels = torch.as_tensor(class_labels)
        shape = (len(labels), config.in_channels, config.sample_size, config.sample_size)
        x = torch.randn(shape, generator=generator) if latents is None else latents
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            out = self.transformer(x, timestep=t.expand(len(labels)), class_labels=labels).sample
            x = self.scheduler.step(out, t, x).prev_sample
        return x


LATENT_LOOP = Family(
    name="latent-loop",
    pipelines=("LatentLoopPipeline",),
    block_lists=("transformer_blocks",),
    kinds=(BASIC_BLOCK,),  # diffusers' BasicTransformerBlock, as DiT's family describes it
    conditioning="class",
    notes="a family registered by a test",
)


@pytest.fixture
def pipe():
    return LatentLoopPipeline(transformer=tiny_dit_pipeline().transformer, scheduler=DDIMScheduler(clip_sample=False))


@pytest.fixture
def registered():
    family = harmonica.register_family(LATENT_LOOP)
    try:
        yield family
    finally:
        unregister_family(LATENT_LOOP.name)


def run(pipe, seed=0):
    return pipe([1, 2], generator=generator(seed))


def test_unregistered_pipeline_is_refused(pipe):
    with pytest.raises(UnsupportedPipelineError, match="LatentLoopPipeline.*register_family"):
        harmonica.describe(pipe)
    assert "LatentLoopPipeline" not in SUPPORTED_PIPELINES


def test_registered_family_is_served(registered, pipe):
    assert registered is LATENT_LOOP and family_for(pipe) is LATENT_LOOP
    # the names imported before the registration see it, and lose it when it is unregistered
    assert "LatentLoopPipeline" in SUPPORTED_PIPELINES and "LatentLoopPipeline" in harmonica.SUPPORTED_PIPELINES
    assert FAMILIES[-1] is LATENT_LOOP
    layout = harmonica.describe(pipe)
    assert layout.pipeline_class == "LatentLoopPipeline"
    assert layout.blocks == (("transformer_blocks", ("attn1", "ff")),) * 3


def test_unregistered_family_is_gone(pipe):
    harmonica.register_family(LATENT_LOOP)
    assert unregister_family(LATENT_LOOP.name) is LATENT_LOOP
    assert "LatentLoopPipeline" not in SUPPORTED_PIPELINES
    with pytest.raises(UnsupportedPipelineError):
        family_for(pipe)
    with pytest.raises(ValueError, match="no family named 'latent-loop'"):
        unregister_family(LATENT_LOOP.name)


def test_all_compute_router_is_bit_identical(registered, pipe):
    expected = run(pipe)
    harmonica.enable(pipe, HarmoniCaRouter.for_layout(harmonica.describe(pipe), STEPS, init="compute"))
    assert torch.equal(run(pipe), expected)
    assert harmonica.stats(pipe).cache_usage == 0.0
    harmonica.disable(pipe)
    assert torch.equal(run(pipe), expected)


def test_static_router_reuses(registered, pipe):
    expected = run(pipe)
    router = HarmoniCaRouter.static(harmonica.describe(pipe), STEPS, compute_every=2)
    harmonica.enable(pipe, router)
    fused = run(pipe)
    assert harmonica.stats(pipe).cache_usage > 0
    assert torch.isfinite(fused).all() and not torch.equal(fused, expected)
    harmonica.enable(pipe, router, fused=False)  # fully reused blocks through the fused apply or one by one
    assert torch.equal(run(pipe), fused)
    harmonica.disable(pipe)
    assert torch.equal(run(pipe), expected)


def test_refusals(registered):
    before = tuple(FAMILIES)
    with pytest.raises(ValueError, match="'latent-loop' is already registered.*replace=True"):
        harmonica.register_family(LATENT_LOOP)
    with pytest.raises(ValueError, match="'dit' is already registered"):
        harmonica.register_family(Family("dit", ("OtherPipeline",), ("transformer_blocks",), (BASIC_BLOCK,)))
    served = Family("my-dit", ("DiTPipeline",), ("transformer_blocks",), (BASIC_BLOCK,), conditioning="class")
    with pytest.raises(ValueError, match="DiTPipeline is already served by the 'dit' family"):
        harmonica.register_family(served)
    with pytest.raises(ValueError, match="DiTPipeline is already served by the 'dit' family"):
        harmonica.register_family(served, replace=True)  # replace is by name, not by pipeline
    with pytest.raises(ValueError, match="takes a harmonica.families.Family, got dict"):
        harmonica.register_family({"name": "x", "pipelines": ("XPipeline",)})
    with pytest.raises(ValueError, match="pipelines must be a non-empty tuple of names"):
        harmonica.register_family(Family("x", "XPipeline", ("transformer_blocks",), (BASIC_BLOCK,)))
    assert tuple(FAMILIES) == before
    # replace=True puts a new spec in the place of the one of that name
    renamed = Family(**{**LATENT_LOOP.__dict__, "notes": "replaced"})
    assert harmonica.register_family(renamed, replace=True) is renamed
    assert family_for("LatentLoopPipeline") is renamed and len(FAMILIES) == len(before)


def test_training_and_evaluation_adapters_are_registered_by_name(registered, pipe):
    from harmonica_bench.evaluation.call_kwargs import CALL_KWARGS, call_kwargs_for, register_call_kwargs
    from harmonica_bench.evaluation.sampling import SamplingSetup
    from harmonica.training.denoisers import DENOISERS, denoiser_for, register_denoiser
    from harmonica.training.denoisers.dit import DiTDenoiser

    with pytest.raises(ValueError, match="no denoiser for the 'latent-loop' family.*register_denoiser"):
        denoiser_for(pipe)
    with pytest.raises(ValueError, match="no call arguments for the 'latent-loop' family.*register_call_kwargs"):
        call_kwargs_for(pipe)
    try:
        register_denoiser(LATENT_LOOP.name, DiTDenoiser)
        register_call_kwargs(LATENT_LOOP.name, lambda pipe, conditions, **extra: {"class_labels": list(conditions)})
        assert denoiser_for(pipe) is DiTDenoiser
        setup = SamplingSetup(num_inference_steps=STEPS, num_classes=10)
        assert setup.call_kwargs(pipe, [0, 3])["class_labels"] == [0, 3]
        # router training's adapter, stepped through the schedule, lands where the pipeline's loop does
        denoiser = denoiser_for(pipe)(pipe, 1.0, None, num_classes=10)
        denoiser.set_timesteps(pipe.scheduler, STEPS)
        noise, cond = denoiser.initial_latents(2, generator(5)), denoiser.conditions(2, generator(6))
        x = noise
        with torch.no_grad():
            for t in pipe.scheduler.timesteps:
                x = pipe.scheduler.step(denoiser.guided(denoiser.forward(x, t, cond)), t, x).prev_sample
        assert torch.equal(x, pipe(cond["class_labels"], latents=noise.clone()))
    finally:
        DENOISERS.pop(LATENT_LOOP.name, None)
        CALL_KWARGS.pop(LATENT_LOOP.name, None)

"""Every supported family on a tiny model built offline and loaded through ``from_pretrained``:
an all-compute router is bit-identical to the stock pipeline; reused branches do not run; a
hand-written reference cache (patched module forwards, no harmonica code) gives the same images;
bad input gets clear errors; router training runs on it."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from diffusers import DiffusionPipeline
from tiny_models import flux_call_kwargs, tiny_flux_pipeline

import harmonica
from harmonica import HarmoniCaRouter, RouterError
from harmonica.families import blocks_of


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


# name -> (builder, {variant: call kwargs}, forwards per step for each variant)
CASES = {
    "flux": (tiny_flux_pipeline, {"true-cfg": (flux_call_kwargs(true_cfg=True), 2),
                                   "no-cfg": (flux_call_kwargs(true_cfg=False), 1)}),
    "flux-dev": (lambda: tiny_flux_pipeline(guidance_embeds=True),
                 {"guidance-embedding": (flux_call_kwargs(true_cfg=False), 1)}),
}
VARIANTS = [(name, variant) for name, (_, variants) in CASES.items() for variant in variants]


@pytest.fixture(scope="session")
def family_paths(tmp_path_factory):
    paths = {}

    def path(name):
        if name not in paths:
            paths[name] = tmp_path_factory.mktemp(name)
            CASES[name][0]().save_pretrained(paths[name])
        return paths[name]

    return path


def load(path):
    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, kwargs, seed=0):
    return pipe(**kwargs, generator=generator(seed)).images


def steps_of(kwargs) -> int:
    return kwargs["num_inference_steps"]


def mixed_router(pipe, steps, seed=3, threshold=0.5):
    router = HarmoniCaRouter.for_layout(harmonica.describe(pipe), steps, generator=generator(seed), threshold=threshold)
    usage = router.cache_usage()
    assert 0.2 < usage < 0.8, usage  # a schedule that really mixes computing and reusing
    return router


# ------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("name, variant", VARIANTS)
def test_all_compute_router_is_exact(family_paths, name, variant):
    kwargs, _ = CASES[name][1][variant]
    path = family_paths(name)
    expected = run(load(path), kwargs)
    router = HarmoniCaRouter.for_layout(harmonica.describe(load(path)), steps_of(kwargs), init="compute")
    pipe = harmonica.HarmoniCaPipeline.from_pretrained(path, router=router)
    assert torch.equal(run(pipe, kwargs), expected)
    assert harmonica.stats(pipe).cache_usage == 0.0


def reference_images(pipe, kwargs, schedule, forwards_per_step):
    """The same schedule applied by patched branch-module forwards: step = forward count // forwards per
    step, one cache per guidance branch (forward count % forwards per step)."""
    transformer = pipe.transformer
    counter = {"n": -1}
    cache = {}
    handle = transformer.register_forward_pre_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
    patched = []
    for block in blocks_of(pipe):
        for slot, module in zip(block.slots, block.modules):
            original = module.forward

            def forward(*args, _original=original, _slot=slot, **kw):
                step, branch = divmod(counter["n"], forwards_per_step)
                if step == 0 or schedule[step][_slot]:
                    cache[branch, _slot] = _original(*args, **kw)
                return cache[branch, _slot]

            module.forward = forward
            patched.append(module)
    try:
        return run(pipe, kwargs)
    finally:
        handle.remove()
        for module in patched:
            del module.forward


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name, variant", VARIANTS)
def test_matches_hand_written_reference_cache(family_paths, name, variant, fused):
    kwargs, forwards = CASES[name][1][variant]
    path = family_paths(name)
    pipe = load(path)
    router = mixed_router(pipe, steps_of(kwargs))
    expected = reference_images(load(path), kwargs, router.schedule(), forwards)
    harmonica.enable(pipe, router, fused=fused)
    got = run(pipe, kwargs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert harmonica.stats(pipe).cache_usage == pytest.approx(router.cache_usage())


@pytest.mark.parametrize("name, variant", VARIANTS)
def test_reused_branches_do_not_run(family_paths, name, variant):
    kwargs, forwards = CASES[name][1][variant]
    pipe = load(family_paths(name))
    steps = steps_of(kwargs)
    router = HarmoniCaRouter.static(harmonica.describe(pipe), steps, compute_every=2)
    harmonica.enable(pipe, router)
    counts = {}
    for block in blocks_of(pipe):
        for slot, module in zip(block.slots, block.modules):
            first = next(m for m in module.modules() if isinstance(m, torch.nn.Linear))
            counts[slot] = 0
            first.register_forward_pre_hook(lambda *_, s=slot: counts.__setitem__(s, counts[s] + 1))
    run(pipe, kwargs)
    computed_steps = len(range(0, steps, 2))
    assert set(counts.values()) == {computed_steps * forwards}
    stats = harmonica.stats(pipe)
    assert stats.forwards == steps * forwards and stats.macs_spent < stats.macs_full


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", list(CASES))
def test_wrong_step_count_and_other_family_router_rejected(family_paths, name, dit_path):
    kwargs, _ = next(iter(CASES[name][1].values()))
    path = family_paths(name)
    pipe = load(path)
    expected = run(load(path), kwargs)
    harmonica.enable(pipe, HarmoniCaRouter.static(harmonica.describe(pipe), steps_of(kwargs) + 1))
    with pytest.raises(RouterError, match=f"made for {steps_of(kwargs) + 1} sampling steps, the pipeline runs"):
        run(pipe, kwargs)
    dit = load(dit_path)
    with pytest.raises(RouterError, match="does not fit"):
        harmonica.enable(pipe, HarmoniCaRouter.static(harmonica.describe(dit), steps_of(kwargs)))
    harmonica.disable(pipe)
    assert torch.equal(run(pipe, kwargs), expected)


# --------------------------------------------------------------------------- router training
@pytest.mark.parametrize("name", list(CASES))
def test_router_training_runs(family_paths, name, tmp_path):
    from harmonica.training.router_training import RouterTrainer, RouterTrainingConfig

    kwargs, _ = next(iter(CASES[name][1].values()))
    pipe = load(family_paths(name))
    config = RouterTrainingConfig(num_steps=steps_of(kwargs), trajectories=2, batch_size=2, lambda_every=3,
                                  lambda_samples=2, output_dir=str(tmp_path), prompts=["a red circle", "a blue star"],
                                  guidance_scale=kwargs.get("true_cfg_scale", kwargs.get("guidance_scale", 1.0)),
                                  target_usage=0.4, init="random", **_sizes(kwargs))
    trainer = RouterTrainer(pipe, config, Accelerator(cpu=True))
    summary = trainer.train()
    assert summary["iterations"] == 2 * (steps_of(kwargs) - 1)
    router = HarmoniCaRouter.from_pretrained(tmp_path / "router")
    assert abs(router.cache_usage() - 0.4) <= 0.05
    harmonica.enable(pipe, router)
    images = run(pipe, kwargs)
    assert torch.isfinite(images).all()


def _sizes(kwargs) -> dict:
    return {k: kwargs[k] for k in ("height", "width", "max_sequence_length") if k in kwargs}

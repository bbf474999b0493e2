"""Every supported family on a tiny model built offline and loaded through ``from_pretrained``:
an all-compute router is bit-identical to the stock pipeline; reused branches do not run; a
hand-written reference cache (patched module forwards, no harmonica code) gives bit-identical images,
branch by branch and through the fused whole-block apply; bad input gets clear errors; the router
training denoiser steps exactly as the pipeline's loop, and router training runs on it. The recipes
hold only settings train_router.py reads."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import one_thread_for_tiny_models
from accelerate import Accelerator
from diffusers import DiffusionPipeline
from tiny_models import (cogvideox_call_kwargs, flux_call_kwargs, hunyuan_video_call_kwargs, ltx_call_kwargs,
                         qwenimage_call_kwargs, sana_call_kwargs, sd3_call_kwargs, tiny_cogvideox_pipeline,
                         tiny_flux_pipeline, tiny_hunyuan_video_pipeline, tiny_ltx_pipeline, tiny_qwenimage_pipeline,
                         tiny_sana_pipeline, tiny_sd3_pipeline, tiny_wan_i2v_pipeline, tiny_wan_pipeline,
                         wan_call_kwargs, wan_i2v_call_kwargs)

import harmonica
from harmonica import HarmoniCaRouter, RouterError
from harmonica.families import family_for, pipeline_transformers, transformer_blocks
from harmonica.training.denoisers import denoiser_for


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


# name -> (builder, {variant: call kwargs}, forwards per step for each variant)
CASES = {
    "flux": (tiny_flux_pipeline, {"true-cfg": (flux_call_kwargs(true_cfg=True), 2),
                                   "no-cfg": (flux_call_kwargs(true_cfg=False), 1)}),
    "flux-dev": (lambda: tiny_flux_pipeline(guidance_embeds=True),
                 {"guidance-embedding": (flux_call_kwargs(true_cfg=False), 1)}),
    "sd3": (tiny_sd3_pipeline, {"cfg": (sd3_call_kwargs(), 1), "no-cfg": (sd3_call_kwargs(guidance_scale=1.0), 1)}),
    "sd35-dual-attention": (lambda: tiny_sd3_pipeline(dual_attention=True), {"cfg": (sd3_call_kwargs(), 1)}),
    "sana": (tiny_sana_pipeline, {"cfg": (sana_call_kwargs(), 1), "no-cfg": (sana_call_kwargs(guidance_scale=1.0), 1)}),
    "wan": (tiny_wan_pipeline, {"cfg": (wan_call_kwargs(), 2), "no-cfg": (wan_call_kwargs(guidance_scale=1.0), 1)}),
    # Wan 2.2 A14B-like: transformer_2 takes over at step 3 of 5 (t = 667 < 0.8 * 1000)
    "wan22-two-experts": (lambda: tiny_wan_pipeline(two_experts=True, boundary_ratio=0.8),
                          {"cfg": (wan_call_kwargs(num_inference_steps=5), 2)}),
    # Wan 2.2 TI2V-5B-like: per-token timesteps (expand_timesteps=True), 48-channel VAE
    "wan22-ti2v": (lambda: tiny_wan_pipeline(ti2v=True), {"no-cfg": (wan_call_kwargs(guidance_scale=1.0), 1)}),
    # 160 tokens: the prompt template's first 34 tokens are dropped, and the tiny byte-level tokenizer spends 162
    # on the template: with fewer, every prompt (and the negative one) embeds the same and true CFG's two
    # contexts cannot be told apart (test_cfg_contexts_keep_their_own_caches)
    "qwenimage": (tiny_qwenimage_pipeline, {"true-cfg": (qwenimage_call_kwargs(max_sequence_length=160), 2),
                                            "no-cfg": (qwenimage_call_kwargs(true_cfg=False), 1)}),
    # Wan 2.1 I2V: the first frame's latents beside the noise, a CLIP image embedding in every attn2
    "wan-i2v": (tiny_wan_i2v_pipeline, {"cfg": (wan_i2v_call_kwargs(), 2),
                                        "no-cfg": (wan_i2v_call_kwargs(guidance_scale=1.0), 1)}),
    # Wan 2.2 TI2V-5B-like image-to-video: per-token timesteps, 0 on the given first frame
    "wan22-ti2v-i2v": (lambda: tiny_wan_i2v_pipeline(ti2v=True),
                       {"cfg": (wan_i2v_call_kwargs(max_sequence_length=8), 2)}),
    "hunyuan-video": (tiny_hunyuan_video_pipeline, {"guidance-embedding": (hunyuan_video_call_kwargs(), 1),
                                                    "true-cfg": (hunyuan_video_call_kwargs(true_cfg=True), 2)}),
    "ltx": (tiny_ltx_pipeline, {"cfg": (ltx_call_kwargs(), 1), "no-cfg": (ltx_call_kwargs(guidance_scale=1.0), 1)}),
    "cogvideox": (tiny_cogvideox_pipeline, {"cfg": (cogvideox_call_kwargs(), 1),
                                            "no-cfg": (cogvideox_call_kwargs(guidance_scale=1.0), 1)}),
}
NEEDS = {"wan-i2v": "ftfy", "wan22-ti2v-i2v": "ftfy"}  # WanImageToVideoPipeline cleans prompts with ftfy (the test extra installs it)
VARIANTS = [(name, variant) for name, (_, variants) in CASES.items() for variant in variants]


one_thread = pytest.fixture(autouse=True, scope="module")(one_thread_for_tiny_models)


@pytest.fixture(scope="session")
def family_paths(tmp_path_factory):
    paths = {}

    def path(name):
        if name in NEEDS:
            pytest.importorskip(NEEDS[name], reason=f"{name} needs {NEEDS[name]}: pip install -e .[test]")
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
    out = pipe(**kwargs, generator=generator(seed))
    return out.frames if hasattr(out, "frames") else out.images  # video pipelines (Wan) return frames


def transformers_of(pipe):
    """(transformer, its blocks) for every transformer harmonica hooks (Wan 2.2 A14B: two experts)."""
    family = family_for(pipe)
    return [(t, transformer_blocks(family, t)) for _, t in pipeline_transformers(pipe, family)]


def steps_of(kwargs) -> int:
    return kwargs["num_inference_steps"]


def mixed_router(pipe, steps, seed=3, usage=0.4):
    """Random scores, thresholded where about ``usage`` of all branch computations are reused."""
    from harmonica.training.objectives import threshold_for_usage

    router = HarmoniCaRouter.for_layout(harmonica.describe(pipe), steps, generator=generator(seed))
    router.threshold = threshold_for_usage(router, usage)[0]
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


def reference_images(pipe, kwargs, schedule, forwards_per_step, fills: set | None = None, shared: bool = False):
    """The same schedule applied by patched branch-module forwards: step = forward count // forwards per
    step, one cache per guidance branch (forward count % forwards per step; ``shared``: one for all, the
    mistake of a cache that ignores the cache context) and per transformer; a transformer computes everything
    at the first step it runs (Wan 2.2: the expert taking over refills); those steps are added to ``fills``."""
    counter = {"n": -1}
    first_step = {}
    cache = {}
    handles, patched = [], []

    def count(expert):
        counter["n"] += 1
        first_step.setdefault(expert, counter["n"] // forwards_per_step)

    for expert, (transformer, blocks) in enumerate(transformers_of(pipe)):
        handles.append(transformer.register_forward_pre_hook(lambda *_, _e=expert: count(_e)))
        for block in blocks:
            for slot, module in zip(block.slots, block.modules):
                original = module.forward

                def forward(*args, _original=original, _slot=slot, _e=expert, **kw):
                    step, branch = divmod(counter["n"], forwards_per_step)
                    branch = 0 if shared else branch
                    if step == first_step[_e] or schedule[step][_slot]:
                        cache[_e, branch, _slot] = _original(*args, **kw)
                    return cache[_e, branch, _slot]

                module.forward = forward
                patched.append(module)
    try:
        return run(pipe, kwargs)
    finally:
        if fills is not None:
            fills.update(first_step.values())
        for handle in handles:
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
    schedule, fills = router.schedule(), set()
    expected = reference_images(load(path), kwargs, schedule, forwards, fills)
    harmonica.enable(pipe, router, fused=fused)
    got = run(pipe, kwargs)
    assert torch.equal(got, expected), (got - expected).abs().max()
    # the router's usage, less what a step at which an expert takes over computes to fill its cache
    reused = sum(not c for step, row in enumerate(schedule) if step not in fills for c in row)
    assert harmonica.stats(pipe).cache_usage == pytest.approx(reused / (len(schedule) * len(schedule[0])))
    assert len(fills) == len(transformers_of(pipe))


SAME_LENGTH_NEGATIVES = {"qwenimage": {"negative_prompt": ["a small square", "a big green square small"]}}


@pytest.mark.parametrize("name, variant", [(n, v) for n, v in VARIANTS if CASES[n][1][v][1] == 2])
def test_cfg_contexts_keep_their_own_caches(family_paths, name, variant):
    """Guidance as two forwards per step (cond, uncond): each keeps its own cache. The tiny model tells the two
    apart: a reference whose contexts share one cache gives other images than the per-context one harmonica
    matches (test_matches_hand_written_reference_cache), so that match proves the isolation."""
    kwargs, forwards = CASES[name][1][variant]
    # the tiny VAEs' decoding can hide a small difference; Qwen-Image cuts the text to the batch's longest prompt:
    # negative prompts as long as the prompts, so that a shared cache would fit both contexts
    kwargs = {**kwargs, "output_type": "latent", **SAME_LENGTH_NEGATIVES.get(name, {})}
    path = family_paths(name)
    pipe = load(path)
    router = mixed_router(pipe, steps_of(kwargs))
    harmonica.enable(pipe, router)
    got = run(pipe, kwargs)
    assert torch.equal(got, reference_images(load(path), kwargs, router.schedule(), forwards))
    assert not torch.equal(got, reference_images(load(path), kwargs, router.schedule(), forwards, shared=True))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_fully_reused_blocks_are_bit_identical_to_the_reference(family_paths, name, fused):
    """Every other step reuses every branch: blocks with a fused apply are then replaced by it (their
    gates recomputed), the others reuse branch by branch; fp32 results equal the reference exactly."""
    from harmonica.cache import SKIP

    kwargs, forwards = next(iter(CASES[name][1].values()))
    path = family_paths(name)
    pipe = load(path)
    router = HarmoniCaRouter.static(harmonica.describe(pipe), steps_of(kwargs), compute_every=2)
    expected = reference_images(load(path), kwargs, router.schedule(), forwards)
    harmonica.enable(pipe, router, fused=fused)
    for plan, (transformer, blocks) in zip(harmonica.controller(pipe).plans, transformers_of(pipe)):
        replaced = {b.index for row in plan.fused if row for run in row if run not in (None, SKIP) for b in run}
        assert replaced == {b.index for b in blocks if b.kind.whole_block or (fused and b.kind.fusable(b.module))}
        if fused and any(kind.fused is not None for kind in family_for(pipe).kinds):
            assert replaced  # the fused apply really runs (SD3: every block but the last, context_pre_only one)
    assert torch.equal(run(pipe, kwargs), expected)


@pytest.mark.parametrize("name, variant", VARIANTS)
def test_reused_branches_do_not_run(family_paths, name, variant):
    kwargs, forwards = CASES[name][1][variant]
    pipe = load(family_paths(name))
    steps = steps_of(kwargs)
    router = HarmoniCaRouter.static(harmonica.describe(pipe), steps, compute_every=2)
    harmonica.enable(pipe, router)
    counts, experts = {}, []
    for expert, (transformer, blocks) in enumerate(transformers_of(pipe)):
        transformer.register_forward_pre_hook(lambda *_, _e=expert: experts.append(_e))
        for block in blocks:
            for slot, module in zip(block.slots, block.modules):
                # the first parameterised leaf (Sana's MLP is convolutions)
                first = next(m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
                counts.setdefault(slot, 0)
                first.register_forward_pre_hook(lambda *_, s=slot: counts.__setitem__(s, counts[s] + 1))
    run(pipe, kwargs)
    per_step = experts[::forwards]
    assert len(per_step) == steps and set(experts) == set(range(len(transformers_of(pipe))))  # every expert ran
    # computed: every other step, and the step at which an expert takes over (it fills its own cache)
    computed = {s for s in range(steps) if s % 2 == 0 or per_step[s] != per_step[s - 1]}
    assert set(counts.values()) == {len(computed) * forwards}
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
                                  target_usage=0.4, init="random", **_sizes(kwargs, tmp_path))
    trainer = RouterTrainer(pipe, config, Accelerator(cpu=True))
    summary = trainer.train()
    # Wan 2.2 A14B: the step at which the second expert takes over fills its cache (as at inference): no update
    assert summary["iterations"] == 2 * (steps_of(kwargs) - len(transformers_of(pipe)))
    router = HarmoniCaRouter.from_pretrained(tmp_path / "router")
    assert abs(router.cache_usage() - 0.4) <= 0.05
    experts = [name for name, _ in pipeline_transformers(pipe, family_for(pipe))][1:]
    assert sorted(router.training_info.get("expert_weights", {})) == experts  # Wan 2.2 A14B: transformer_2's
    with warnings.catch_warnings():  # the weights it was trained on, every expert's own
        warnings.filterwarnings("error", message="this router was trained on other transformer weights")
        harmonica.enable(pipe, router)
    images = run(pipe, kwargs)
    assert torch.isfinite(images).all()


def test_two_expert_training_fills_the_expert_taking_over(family_paths, tmp_path):
    """Wan 2.2 A14B: one router, each expert driven with its own caches; the step at which transformer_2 takes over
    fills them (inference computes everything there too) and trains nothing; the first expert's are dropped."""
    from harmonica.training.router_training import RouterTrainer, RouterTrainingConfig

    kwargs, _ = next(iter(CASES["wan22-two-experts"][1].values()))
    pipe = load(family_paths("wan22-two-experts"))
    config = RouterTrainingConfig(num_steps=steps_of(kwargs), trajectories=1, batch_size=1, output_dir=str(tmp_path),
                                  prompts=["a red circle"], guidance_scale=kwargs["guidance_scale"], target_usage=0.4,
                                  **_sizes(kwargs))
    trainer = RouterTrainer(pipe, config, Accelerator(cpu=True))
    experts = []
    for index, (transformer, _) in enumerate(transformers_of(pipe)):
        transformer.register_forward_pre_hook(lambda *_, _i=index: experts.append((_i, trainer.cache.mode)))
    rows = trainer.sdt_trajectory(0)
    assert [row["step"] for row in rows] == [1, 2, 4]  # transformer_2 from step 3 (t = 667 < 0.8 * 1000)
    # the student's forwards (cond, uncond): expert 0 fills and mixes, expert 1 runs from step 3
    students = [e for e, mode in experts if mode != "off"]
    assert students == [0] * 6 + [1] * 4
    assert sorted(trainer.cache.states) == [(1, "cond"), (1, "uncond")]


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_checkpointing_gives_the_plain_gradients(family_paths, name, tmp_path, monkeypatch):
    """Per-block gradient checkpointing of the student (history 3: forecasts), on every family's blocks and branch
    outputs: every step's router gradients and the caches after the trajectory are the plain backward's."""
    from test_router_training import same_cache
    from test_training_scale import recording_gradients, recording_regions

    from harmonica.training.router_training import RouterTrainer, RouterTrainingConfig

    regions = recording_regions(monkeypatch)
    kwargs, forwards = next(iter(CASES[name][1].values()))
    runs = []
    for checkpointing in (False, True):
        config = RouterTrainingConfig(num_steps=steps_of(kwargs), trajectories=1, batch_size=1, history=3,
                                      output_dir=str(tmp_path / str(checkpointing)), prompts=["a red circle"],
                                      guidance_scale=kwargs.get("true_cfg_scale", kwargs.get("guidance_scale", 1.0)),
                                      target_usage=0.4, init="random", gradient_checkpointing=checkpointing,
                                      **_sizes(kwargs, tmp_path))
        trainer = RouterTrainer(load(family_paths(name)), config, Accelerator(cpu=True))
        grads = recording_gradients(trainer)
        trainer.sdt_trajectory(0)
        runs.append((grads, trainer.cache.snapshot()))
    (plain, plain_cache), (checkpointed, checkpointed_cache) = runs
    experts = transformers_of(load(family_paths(name)))
    mixed = steps_of(kwargs) - len(experts)  # Wan 2.2 A14B: the second expert's first step fills its cache
    assert len(plain) == len(checkpointed) == mixed
    for a, b in zip(plain, checkpointed):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-6 * x.abs().max().item())
    assert same_cache(plain_cache, checkpointed_cache)
    # every block of every student forward was checkpointed, read the cache and was recomputed
    assert len(regions) == mixed * forwards * len(experts[0][1]) and all(r.reads and r.replaying for r in regions)


@pytest.mark.parametrize("name", list(CASES))
def test_denoiser_steps_reproduce_the_pipeline(family_paths, name):
    """Router training's one-step adapter, stepped through a whole schedule, lands on the latents the
    pipeline's own loop gives from the same noise and prompt (guidance, timesteps, expert switch)."""
    import copy

    kwargs, _ = next(iter(CASES[name][1].values()))
    pipe = load(family_paths(name))
    prompt, steps = kwargs["prompt"][0], steps_of(kwargs)
    guidance = kwargs.get("true_cfg_scale", kwargs.get("guidance_scale", 1.0))
    denoiser = denoiser_for(pipe)(pipe, guidance, [prompt], **_sizes(kwargs))
    sched = copy.deepcopy(pipe.scheduler)
    denoiser.set_timesteps(sched, steps)
    noise = denoiser.initial_latents(1, generator(5))
    cond = denoiser.conditions(1, generator(6))
    x = noise
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(denoiser.guided(denoiser.forward(x, t, cond)), t, x).prev_sample
    x = denoiser.final(x, cond)
    call = {**kwargs, "prompt": [prompt], "latents": noise.clone(), "output_type": "latent"}
    if "negative_prompt" in call:
        call["negative_prompt"] = call["negative_prompt"][:1]
    expected = run(pipe, call)
    assert torch.equal(x, expected.to(x.dtype)), (x - expected).abs().max()


@pytest.mark.parametrize("name", ["hunyuan-video", "ltx", "cogvideox", "wan-i2v"])
def test_harness_call_arguments_of_the_video_families(family_paths, name):
    """The evaluation harness's call arguments (registered by family name) run each video pipeline on its prompts
    and sizes; image-to-video has none (the harness draws prompts only) and says so."""
    from harmonica_bench.evaluation.sampling import SamplingSetup

    kwargs, _ = next(iter(CASES[name][1].values()))
    pipe = load(family_paths(name))
    setup = SamplingSetup(num_inference_steps=2, guidance_scale=kwargs["guidance_scale"], batch_size=2,
                          prompts=["a red circle", "a blue star"], height=kwargs["height"], width=kwargs["width"],
                          max_sequence_length=kwargs["max_sequence_length"])
    if name == "wan-i2v":
        with pytest.raises(ValueError, match="no call arguments for the 'wan-i2v' family"):
            setup.call_kwargs(pipe, [0, 1])
        return
    call = setup.call_kwargs(pipe, [0, 1], {"num_frames": kwargs["num_frames"]})
    assert call["prompt"] == ["a red circle", "a blue star"] and "negative_prompt" not in call
    frames = pipe(**call).frames
    assert frames.shape[:2] == (2, kwargs["num_frames"]) and frames.shape[-2:] == (kwargs["height"], kwargs["width"])


def test_cogvideox_dpm_scheduler_serves_inference_and_training_refuses_it(family_paths, tmp_path):
    """CogVideoX-5B samples with CogVideoXDPMScheduler (a two-step solver): the cache follows its loop (an
    all-compute router is exact, a static one reuses every other step); router training, which steps a scheduler
    as step(output, t, latents), refuses it and names the way out."""
    from diffusers import CogVideoXDPMScheduler

    from harmonica.training.router_training import RouterTrainer, RouterTrainingConfig

    kwargs, _ = CASES["cogvideox"][1]["cfg"]
    path = family_paths("cogvideox")
    pipe = load(path)
    pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    expected = run(pipe, kwargs)
    harmonica.enable(pipe, HarmoniCaRouter.for_layout(harmonica.describe(pipe), steps_of(kwargs), init="compute"))
    assert torch.equal(run(pipe, kwargs), expected)
    harmonica.disable(pipe)
    harmonica.enable(pipe, HarmoniCaRouter.static(harmonica.describe(pipe), steps_of(kwargs), compute_every=2))
    run(pipe, kwargs)
    assert harmonica.stats(pipe).cache_usage == 0.5
    config = RouterTrainingConfig(num_steps=steps_of(kwargs), output_dir=str(tmp_path), prompts=["a red circle"],
                                  scheduler="CogVideoXDPMScheduler", **_sizes(kwargs))
    with pytest.raises(ValueError, match="train with --scheduler CogVideoXDDIMScheduler"):
        RouterTrainer(load(path), config, Accelerator(cpu=True))


def _sizes(kwargs, folder: Path | None = None) -> dict:
    """The call's sizes as router training options; an image-to-video call's image as ``images`` (a file in
    ``folder`` for a training config, else the image itself for a denoiser)."""
    sizes = {k: kwargs[k] for k in ("height", "width", "max_sequence_length", "num_frames") if k in kwargs}
    if "image" in kwargs:
        if folder is not None:
            kwargs["image"].save(folder / "first-frame.png")
        sizes["images"] = [str(folder / "first-frame.png") if folder is not None else kwargs["image"]]
    return sizes


# --------------------------------------------------------------------------------- recipes
RECIPE_KEYS = {"pipeline", "torch_dtype", "prompts_file", "prompts", "cpu"}  # read by train/train_router.py itself


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "pipelines" / "recipes").glob("*.json")),
                         ids=lambda p: p.stem)
def test_recipes_hold_only_settings_train_router_reads(recipe):
    from dataclasses import fields

    from harmonica.training.router_training import RouterTrainingConfig

    settings = json.loads(recipe.read_text())
    names = {f.name for f in fields(RouterTrainingConfig)} - {"prompts"}
    assert set(settings) <= names | RECIPE_KEYS, set(settings) - names - RECIPE_KEYS
    assert settings["pipeline"] and settings.get("torch_dtype", "float32") in ("float32", "float16", "bfloat16")
    RouterTrainingConfig(**{k: v for k, v in settings.items() if k in names}).check()
    if settings.get("prompts_file", "shapes") != "shapes":  # 'shapes' names the embedded Flux captions, not a file
        assert (recipe.parent / settings["prompts_file"]).is_file()  # relative to the recipe

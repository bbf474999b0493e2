"""The noise-level router: one router for every step count, scheduler it was trained for, and speed."""

import warnings

import pytest
import torch
from conftest import generator, one_thread_for_tiny_models
from diffusers import DDIMScheduler, DiTPipeline, DPMSolverMultistepScheduler, EulerDiscreteScheduler

import harmonica
from harmonica import HarmoniCaRouter, RouterError
from harmonica.router import NoiseLevelRouter, newton_coefficients, noise_levels, taylor_coefficients


one_thread = pytest.fixture(autouse=True, scope="module")(one_thread_for_tiny_models)


def images(pipe, steps, labels=(1, 2), seed=0):
    return pipe(list(labels), guidance_scale=1.5, num_inference_steps=steps, generator=generator(seed),
                output_type="pt").images


def static_noise_router(pipe, every=2, history=2, **kwargs) -> NoiseLevelRouter:
    """A noise-level router made from a static step router at 20 DDIM steps (FORA's every-other-step)."""
    step = HarmoniCaRouter.static(harmonica.describe(pipe), 20, compute_every=every, history=history,
                                  threshold=0.5)
    pipe.scheduler.set_timesteps(20)
    step.timesteps = [float(t) for t in pipe.scheduler.timesteps]
    return NoiseLevelRouter.from_step_router(step, **kwargs)


# ------------------------------------------------------------------------------ the forecast
def test_newton_forecast_is_lagrange_with_unit_gains_and_reuse_with_zero_gains():
    points = [0.5, 0.55, 0.7]  # uneven spacing
    weights = newton_coefficients(0.4, points, [1.0, 1.0])
    poly = lambda s: 3 * s**2 - 2 * s + 1  # a quadratic is extrapolated exactly
    assert sum(w * poly(p) for w, p in zip(weights, points)) == pytest.approx(poly(0.4))
    assert newton_coefficients(0.4, points, [0.0, 0.0]) == [1.0, 0.0, 0.0]
    gains = torch.tensor([0.5, 0.25], requires_grad=True)  # differentiable in the gains (router training)
    sum(newton_coefficients(0.4, points, gains)).backward()
    assert gains.grad is not None


def test_even_spacing_gives_the_step_routers_taylor_coefficients(dit_path):
    """At evenly spaced timesteps the forecast in the noise level is TaylorSeer's in step units."""
    pipe = DiTPipeline.from_pretrained(dit_path)
    router = static_noise_router(pipe, every=3, history=3, taylor_order=2)
    pipe.scheduler.set_timesteps(10)
    resolution = router.resolve([float(t) for t in pipe.scheduler.timesteps])
    expected = taylor_coefficients(resolution.schedule, 3, 2)
    for got_step, want_step in zip(resolution.coefficients, expected):
        for got, want in zip(got_step, want_step):
            assert got == pytest.approx(want, abs=1e-9)
    assert any(len([c for c in row if c]) == 3 for step in resolution.coefficients for row in step)


def test_noise_levels_are_t_over_T_and_flow_matching_sigmas():
    assert noise_levels([999, 500, 0], 1000) == [0.999, 0.5, 0.0]
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(8)
    levels = noise_levels(scheduler.timesteps.tolist(), scheduler.config.num_train_timesteps)
    assert levels == pytest.approx(scheduler.sigmas[:-1].tolist(), abs=1e-6)


# ------------------------------------------------------------------------------ every step count, one speed
@pytest.mark.parametrize("steps", [12, 20, 31])
def test_speedup_is_met_within_two_percent_at_every_step_count(dit_path, steps):
    pipe = DiTPipeline.from_pretrained(dit_path)
    pipe.set_progress_bar_config(disable=True)
    stock = images(pipe, steps)
    harmonica.enable(pipe, static_noise_router(pipe), speedup=2.0)
    first = images(pipe, steps)  # a new input shape: the schedule is resolved after the first forward
    reached = harmonica.stats(pipe).macs_speedup
    second = images(pipe, steps)  # the shape is known: resolved at the call's start
    assert reached == pytest.approx(2.0, rel=0.02) and harmonica.stats(pipe).macs_speedup == reached
    assert torch.equal(first, second)
    assert 0 < (first - stock).abs().max() < 0.5 and harmonica.stats(pipe).cache_usage > 0.3


def test_one_router_serves_every_trained_scheduler_and_refuses_others(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    pipe.set_progress_bar_config(disable=True)
    router = static_noise_router(pipe, schedulers=["DDIMScheduler", "DPMSolverMultistepScheduler"])
    harmonica.enable(pipe, router, speedup=1.5)
    images(pipe, 10)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # swapped after enable
    images(pipe, 14)
    assert harmonica.stats(pipe).macs_speedup == pytest.approx(1.5, rel=0.02)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(RouterError, match="DDIMScheduler, DPMSolverMultistepScheduler scheduler.*EulerDiscrete"):
        images(pipe, 10)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    images(pipe, 10)  # the refused call left nothing behind


def test_step_count_outside_the_trained_range_warns_naming_it(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    pipe.set_progress_bar_config(disable=True)
    harmonica.enable(pipe, static_noise_router(pipe, step_range=(10, 30)))
    with pytest.warns(UserWarning, match="trained on 10 to 30 steps and the call runs 6"):
        images(pipe, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images(pipe, 12)


def test_unreachable_speedup_names_the_range_and_the_pipeline_still_works(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    pipe.set_progress_bar_config(disable=True)
    router = static_noise_router(pipe)
    harmonica.enable(pipe, router, speedup=50.0)
    with pytest.raises(RouterError, match=r"speedup must be from 1 to [\d.]+ at 8 steps"):
        images(pipe, 8)
    harmonica.enable(pipe, router, speedup=2.0)
    images(pipe, 8)
    assert harmonica.stats(pipe).macs_speedup == pytest.approx(2.0, rel=0.05)
    with pytest.raises(ValueError, match="speedup must be a number >= 1"):
        harmonica.enable(pipe, router, speedup=0.5)
    with pytest.raises(ValueError, match="a threshold or a speedup, not both"):
        harmonica.enable(pipe, router, speedup=2.0, threshold=0.5)
    assert harmonica.controller(pipe).speedup == 2.0  # refused enables changed nothing
    step_router = HarmoniCaRouter.static(harmonica.describe(pipe), 8)
    with pytest.raises(RouterError, match="speedup target needs a noise-level router"):
        harmonica.enable(pipe, step_router, speedup=2.0)


def test_threshold_rule_follows_the_interpolated_scores(dit_path):
    """Without a speedup, the branches computed are those scored above the threshold at the call's levels:
    the static every-other-step schedule at 20 steps comes back at 20 steps."""
    pipe = DiTPipeline.from_pretrained(dit_path)
    router = static_noise_router(pipe)
    pipe.scheduler.set_timesteps(20)
    schedule = torch.tensor(router.resolve([float(t) for t in pipe.scheduler.timesteps]).schedule)
    assert schedule[::2].all() and not schedule[1::2].any()


# ------------------------------------------------------------------------------ files
def test_saved_noise_level_router_loads_through_every_entry_point(dit_path, tmp_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    pipe.set_progress_bar_config(disable=True)
    router = static_noise_router(pipe)
    router.save_pretrained(tmp_path / "nl")
    loaded = HarmoniCaRouter.from_pretrained(tmp_path / "nl")  # takes every kind
    assert isinstance(loaded, NoiseLevelRouter) and torch.equal(loaded.logits, router.logits)
    assert loaded.schedulers == ["DDIMScheduler"] and loaded.step_range == [2, 1000]
    harmonica.enable(pipe, tmp_path / "nl", speedup=2.0)
    images(pipe, 9)
    assert harmonica.stats(pipe).macs_speedup == pytest.approx(2.0, rel=0.05)
    HarmoniCaRouter.static(harmonica.describe(pipe), 4).save_pretrained(tmp_path / "step")
    with pytest.raises(RouterError, match="is a 'step' router, not a 'noise-level' one"):
        NoiseLevelRouter.from_pretrained(tmp_path / "step")


def test_step_router_refuses_a_scheduler_swapped_after_enable(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    pipe.set_progress_bar_config(disable=True)
    harmonica.enable(pipe, HarmoniCaRouter.static(harmonica.describe(pipe), 6))
    images(pipe, 6)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(RouterError, match="made for the scheduler DDIMScheduler, this pipeline.s scheduler is a DPMSolverMultistep"):
        images(pipe, 6)


# ------------------------------------------------------------------------------ training over a distribution
def noise_trainer(dit_path, out, **overrides):
    from accelerate import Accelerator

    from harmonica.training.noise_level import NoiseLevelTrainer
    from harmonica.training.router_training import RouterTrainingConfig

    pipe = DiTPipeline.from_pretrained(dit_path)
    pipe.set_progress_bar_config(disable=True)
    settings = dict(num_steps=8, step_counts=[5, 8, 12], schedulers=["DDIMScheduler", "DPMSolverMultistepScheduler"],
                    objective="sdt", trajectories=4, batch_size=2, checkpoint_every=2, output_dir=str(out), history=3,
                    init="static:2", forecast_init="taylor:1", target_usage=0.4, seed=0)
    settings.update(overrides)
    return NoiseLevelTrainer(pipe, RouterTrainingConfig(**settings), Accelerator(cpu=True))


def test_training_draws_step_counts_and_schedulers_and_saves_one_router(dit_path, tmp_path):
    import json

    summary = noise_trainer(dit_path, tmp_path).train()
    rows = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    drawn = {(r["num_steps"], r["scheduler"]) for r in rows}
    assert len({n for n, _ in drawn}) >= 2 and len({s for _, s in drawn}) == 2
    assert summary["moved_from_init"]["mean_abs_logit_change"] > 0 and summary["cache_usage"] == pytest.approx(0.4,
                                                                                                              abs=0.05)
    router = HarmoniCaRouter.from_pretrained(tmp_path / "router")
    assert isinstance(router, NoiseLevelRouter) and router.step_range == [5, 12]
    assert router.schedulers == ["DDIMScheduler", "DPMSolverMultistepScheduler"]


def test_the_student_rebuilds_as_resolve_does(dit_path, tmp_path):
    """The trainer's coefficients at every step, following its writes, are those ``resolve`` gives inference for
    the same schedule: the forecast is trained as it runs."""
    trainer = noise_trainer(dit_path, tmp_path)
    with torch.no_grad():
        trainer.router.gains.uniform_(0.2, 1.2)  # gains other than Lagrange's, different per slot and level
    trainer.pipe.scheduler = DPMSolverMultistepScheduler.from_config(trainer.pipe.scheduler.config)
    trainer.steps = 11
    timesteps = [float(t) for t in trainer._timesteps()]
    resolution = trainer.router.resolve(timesteps, threshold=0.5)
    for step in range(1, 11):
        scores, coefficients = trainer._step_scores(step)
        want = torch.tensor(resolution.coefficients[step], dtype=coefficients.dtype)
        rebuilt = ~torch.tensor(resolution.schedule[step])
        torch.testing.assert_close(coefficients.detach()[rebuilt], want[rebuilt], rtol=1e-5, atol=1e-6)
        trainer._written(step, resolution.schedule[step])


def test_noise_level_training_settings_are_checked_before_anything_runs(dit_path, tmp_path):
    with pytest.raises(ValueError, match="trains with objective 'sdt'"):
        noise_trainer(dit_path, tmp_path, objective="harmonica")
    with pytest.raises(ValueError, match="must name a diffusers scheduler class.*'NoSuchScheduler'"):
        noise_trainer(dit_path, tmp_path, schedulers=["NoSuchScheduler"])
    with pytest.raises(ValueError, match="HeunDiscreteScheduler visits some timesteps twice"):
        noise_trainer(dit_path, tmp_path, schedulers=["DDIMScheduler", "HeunDiscreteScheduler"])
    assert not (tmp_path / "run_config.json").exists()


@pytest.mark.parametrize("family", ["wan22", "flux"])
def test_noise_level_router_on_flow_matching_families(family):
    """Wan 2.2 (the step from the pipeline's cache context, two experts) and Flux (true CFG): the call's
    timesteps are found, the schedule resolved and the speed met on tiny models (coarse: few branches)."""
    import tiny_models as tm

    build, kwargs = {
        "wan22": (lambda: tm.tiny_wan_pipeline(two_experts=True, boundary_ratio=0.8), tm.wan_call_kwargs(num_inference_steps=6)),
        "flux": (tm.tiny_flux_pipeline, tm.flux_call_kwargs(true_cfg=True, num_inference_steps=6)),
    }[family]
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    step = HarmoniCaRouter.static(harmonica.describe(pipe), 8, compute_every=2, history=2)
    pipe.scheduler.set_timesteps(8)
    step.timesteps = [float(t) for t in pipe.scheduler.timesteps]
    router = NoiseLevelRouter.from_step_router(step, num_train_timesteps=pipe.scheduler.config.num_train_timesteps)
    harmonica.enable(pipe, router, speedup=1.5)
    pipe(**kwargs, generator=generator(0))
    stats = harmonica.stats(pipe)
    assert stats.macs_speedup == pytest.approx(1.5, rel=0.05) and stats.reused > 0

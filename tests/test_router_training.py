"""Router training (SDT + IEPO, and the SDT / LTC ablations) on a tiny DiT built locally."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from diffusers import DiTPipeline

import harmonica
from harmonica.pipeline import dtype_kwargs
from harmonica.training.objectives import image_error_proxy, normalise, threshold_for_usage
from harmonica.training.router_training import RouterTrainer, RouterTrainingConfig
from harmonica.training.run_folder import check_same_run

REPO = Path(__file__).resolve().parent.parent
STEPS = 5


def make_trainer(dit_path, out, **overrides):
    pipe = DiTPipeline.from_pretrained(dit_path)
    pipe.set_progress_bar_config(disable=True)
    settings = dict(num_steps=STEPS, trajectories=3, batch_size=2, lambda_every=4, lambda_samples=2,
                    checkpoint_every=1, output_dir=str(out), beta=1e-4, seed=0)
    settings.update(overrides)
    return RouterTrainer(pipe, RouterTrainingConfig(**settings), Accelerator(cpu=True))


class Recorder:
    """Wraps a trainer's denoiser to record every transformer call."""

    def __init__(self, trainer):
        self.calls = []
        self.trainer = trainer
        denoiser = trainer.denoiser
        original = denoiser.forward

        def forward(x, t, cond):
            mode = trainer.cache.mode
            role = "teacher" if mode == "off" else mode
            out = original(x, t, cond)
            self.calls.append({"role": role, "t": int(t), "x": x.detach().clone(), "out": out.detach().clone(),
                               "grad": out.requires_grad})
            return out

        denoiser.forward = forward


def same_cache(a: dict, b: dict) -> bool:
    """Two ``DrivenCache.snapshot()``s hold the same entries with equal histories."""
    return a.keys() == b.keys() and all(
        a[key].keys() == b[key].keys() and all(len(a[key][e]) == len(b[key][e])
                                               and all(torch.equal(x, y) for x, y in zip(a[key][e], b[key][e]))
                                               for e in a[key]) for key in a)


def test_sdt_rollout_order_and_student_trajectory(dit_path, tmp_path):
    trainer = make_trainer(dit_path, tmp_path)
    rec = Recorder(trainer)
    trainer.sdt_trajectory(0)
    timesteps = [int(t) for t in trainer.pipe.scheduler.timesteps]
    roles = [(c["role"], c["t"]) for c in rec.calls]
    expected = [("fill", timesteps[0])]
    for t in timesteps[1:]:
        expected += [("teacher", t), ("mix", t)]
    assert roles == expected
    # teacher and student see the same latent: the student's own, stepped from its previous output
    sched = trainer.pipe.scheduler
    sched.set_timesteps(STEPS)
    x = rec.calls[0]["x"]
    x = sched.step(trainer.denoiser.guided(rec.calls[0]["out"]), timesteps[0], x).prev_sample
    for k, t in enumerate(timesteps[1:]):
        teacher, student = rec.calls[1 + 2 * k], rec.calls[2 + 2 * k]
        assert torch.equal(teacher["x"], x) and torch.equal(student["x"], x)
        assert student["grad"] and not teacher["grad"]
        x = sched.step(trainer.denoiser.guided(student["out"]), t, x).prev_sample


def test_teacher_is_isolated_and_base_model_frozen(dit_path, tmp_path):
    trainer = make_trainer(dit_path, tmp_path)
    before = {k: v.clone() for k, v in trainer.pipe.transformer.state_dict().items()}
    teacher_writes = []
    original_teacher = trainer._teacher

    def teacher(x, t, cond):
        kept = trainer.cache.snapshot()
        out = original_teacher(x, t, cond)
        teacher_writes.append(not same_cache(trainer.cache.snapshot(), kept))
        return out

    trainer._teacher = teacher
    trainer.sdt_trajectory(0)
    assert teacher_writes and not any(teacher_writes)
    tr = trainer.pipe.transformer
    assert not tr.training
    assert all(not p.requires_grad and p.grad is None for p in tr.parameters())
    after = tr.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.router.logits.grad is not None  # the router did learn from it


def test_lambda_refresh_leaves_rng_cache_and_scheduler_untouched(dit_path, tmp_path):
    trainer = make_trainer(dit_path, tmp_path)
    with torch.no_grad():  # a router that caches something, so lambda is informative
        trainer.router.logits.copy_(torch.randn(trainer.router.logits.shape, generator=torch.Generator().manual_seed(1)) * 3)
    trainer.sdt_trajectory(0)  # leaves a filled cache behind
    states = trainer.cache.states
    kept = trainer.cache.snapshot()
    timesteps = trainer.pipe.scheduler.timesteps.clone()
    rng = torch.get_rng_state()
    trainer.refresh_lambda()
    assert torch.equal(torch.get_rng_state(), rng)
    assert trainer.cache.states is states and kept and trainer.cache.mode == "off"
    assert same_cache(trainer.cache.snapshot(), kept)
    assert torch.equal(trainer.pipe.scheduler.timesteps, timesteps)
    lam = trainer.state.lam
    assert lam[0] == 0 and torch.isclose(lam[1:].mean(), torch.tensor(1.0)) and (lam[1:] > 0).all()
    assert not torch.allclose(lam[1:], torch.ones(STEPS - 1))  # steps differ in how much caching costs


def test_lambda_normalisation():
    lam = normalise(torch.tensor([0.0, 0.0, 2.0, 6.0, 0.0]), floor=0.05)
    assert lam[0] == 0 and torch.isclose(lam[1:].mean(), torch.tensor(1.0))
    assert lam[1] > 0 and lam[1] == lam[4] and lam[3] == 3 * lam[2]
    assert torch.equal(normalise(torch.zeros(4)), torch.tensor([0.0, 1.0, 1.0, 1.0]))


def test_memory_does_not_grow_with_steps(dit_path, tmp_path):
    """No graph survives an optimizer step: every latent passed on is detached."""
    trainer = make_trainer(dit_path, tmp_path)
    rec = Recorder(trainer)
    trainer.sdt_trajectory(0)
    assert all(not c["x"].requires_grad for c in rec.calls)
    assert not any(pool.storage.requires_grad for state in trainer.cache.states.values()
                   for pool in state.pools.values())


def test_resume_gives_the_same_router(dit_path, tmp_path):
    full = make_trainer(dit_path, tmp_path / "full", trajectories=4, checkpoint_every=2)
    full.train()
    interrupted = make_trainer(dit_path, tmp_path / "cut", trajectories=4, checkpoint_every=2)
    original = interrupted.sdt_trajectory

    def dies_at_third(trajectory):
        if trajectory == 2:
            raise KeyboardInterrupt
        return original(trajectory)

    interrupted.sdt_trajectory = dies_at_third
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    resumed = make_trainer(dit_path, tmp_path / "cut", trajectories=4, checkpoint_every=2)
    resumed.train()
    assert torch.equal(resumed.router.logits, full.router.logits)
    assert resumed.state.refreshes == full.state.refreshes >= 2
    log = [json.loads(line) for line in (tmp_path / "cut" / "training_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == list(range(1, 4 * (STEPS - 1) + 1))
    saved = harmonica.HarmoniCaRouter.from_pretrained(tmp_path / "cut" / "router")
    assert torch.equal(saved.logits, full.router.logits)


def test_resume_skips_a_damaged_checkpoint(dit_path, tmp_path):
    """A truncated file in the newest checkpoint: warned about by name, set aside, and the run resumes from
    the previous checkpoint to the same router as an uninterrupted run."""
    full = make_trainer(dit_path, tmp_path / "full", trajectories=3)
    full.train()
    cut = make_trainer(dit_path, tmp_path / "cut", trajectories=3)
    original = cut.sdt_trajectory

    def dies_at_third(trajectory):
        if trajectory == 2:
            raise KeyboardInterrupt
        return original(trajectory)

    cut.sdt_trajectory = dies_at_third
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    newest = tmp_path / "cut" / "checkpoints" / "checkpoint-2"
    damaged = "custom_checkpoint_2.pkl"  # the training state (tests/test_checkpoints.py covers every file)
    data = (newest / damaged).read_bytes()
    (newest / damaged).write_bytes(data[: len(data) // 3])
    resumed = make_trainer(dit_path, tmp_path / "cut", trajectories=3)
    with pytest.warns(UserWarning, match=rf"checkpoint-2 is damaged \({damaged}: truncated"):
        resumed.train()
    assert torch.equal(resumed.router.logits, full.router.logits)
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-2.broken" / damaged).read_bytes() == data[: len(data) // 3]
    log = [json.loads(line) for line in (tmp_path / "cut" / "training_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == list(range(1, 3 * (STEPS - 1) + 1))


def test_resume_with_other_settings_is_refused(dit_path, tmp_path):
    make_trainer(dit_path, tmp_path, trajectories=1).train()
    with pytest.raises(ValueError, match="trajectories=1 there, 2 now"):
        make_trainer(dit_path, tmp_path, trajectories=2).train()
    make_trainer(dit_path, tmp_path, trajectories=1, checkpoint_every=5).train()  # harmless change


def test_resume_on_retrained_weights_is_refused(dit_path, tmp_path):
    """Same settings, same model path, other transformer weights: not the same run."""
    make_trainer(dit_path, tmp_path / "run", trajectories=1).train()
    retrained = tmp_path / "retrained"
    pipe = DiTPipeline.from_pretrained(dit_path)
    with torch.no_grad():
        pipe.transformer.proj_out_2.weight.add_(0.01)
    pipe.save_pretrained(retrained)
    with pytest.raises(ValueError, match="transformer_weights"):
        make_trainer(retrained, tmp_path / "run", trajectories=1).train()


def test_router_warns_when_enabled_on_other_weights(dit_path, tmp_path):
    make_trainer(dit_path, tmp_path, trajectories=1).train()
    router = harmonica.HarmoniCaRouter.from_pretrained(tmp_path / "router")
    assert router.training_info["transformer_weights"]["format"] == harmonica.router.WEIGHTS_SUMMARY_FORMAT
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # the weights it was trained on, also cast: silent
        pipe = DiTPipeline.from_pretrained(dit_path, **dtype_kwargs(dtype))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            harmonica.enable(pipe, router)
    fine_tuned = DiTPipeline.from_pretrained(dit_path)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in fine_tuned.transformer.parameters():  # "fine-tuned": N(0, 1e-3) on every weight
            param.add_(torch.randn(param.shape, generator=g) * 1e-3)
    with pytest.warns(UserWarning, match="trained on other transformer weights"):
        harmonica.enable(fine_tuned, router)
    with torch.no_grad():
        for param in pipe.transformer.parameters():  # "retrained": weights 10% larger
            param.mul_(1.1)
    with pytest.warns(UserWarning, match="trained on other transformer weights"):
        harmonica.enable(pipe, router)


def test_resume_in_another_dtype_is_the_same_run(dit_path, tmp_path):
    """The run folder's record of the weights is compared like the router's: a cast is the same weights."""
    make_trainer(dit_path, tmp_path, trajectories=1).train()
    pipe = DiTPipeline.from_pretrained(dit_path, **dtype_kwargs(torch.bfloat16))
    trainer = RouterTrainer(pipe, RouterTrainingConfig(num_steps=STEPS, trajectories=1, batch_size=2, lambda_every=4,
                                                       lambda_samples=2, checkpoint_every=1, output_dir=str(tmp_path),
                                                       beta=1e-4, seed=0), Accelerator(cpu=True))
    check_same_run(trainer.output, trainer.config, trainer.router, pipe.transformer, trainer.weights_summary,
                   trainer.accelerator)  # no error


@pytest.mark.parametrize("objective", ["sdt", "ltc"])
def test_ablation_objectives_train(dit_path, tmp_path, objective):
    trainer = make_trainer(dit_path, tmp_path, objective=objective, trajectories=2)
    rec = Recorder(trainer)
    summary = trainer.train()
    assert summary["iterations"] == 2 * (STEPS - 1)
    assert torch.equal(trainer.state.lam[1:], torch.ones(STEPS - 1))  # lambda = 1 without IEPO
    mixed_steps = [c["t"] for c in rec.calls if c["role"] == "mix"]
    timesteps = [int(t) for t in trainer.pipe.scheduler.timesteps]
    if objective == "ltc":  # random step order, input from the teacher's own trajectory
        per_trajectory = [mixed_steps[k * (STEPS - 1):(k + 1) * (STEPS - 1)] for k in range(2)]
        assert all(sorted(order, reverse=True) == timesteps[1:] for order in per_trajectory)
        assert any(order != timesteps[1:] for order in per_trajectory)  # not the sampling order
        fills = [c for c in rec.calls if c["role"] == "fill"]
        assert len(fills) == 2 * (STEPS - 1)
    else:
        assert mixed_steps[: STEPS - 1] == timesteps[1:]


def test_target_usage_holds_through_training_and_at_the_end(dit_path, tmp_path):
    trainer = make_trainer(dit_path, tmp_path, trajectories=2, target_usage=0.3)
    summary = trainer.train()
    assert abs(summary["cache_usage"] - 0.3) <= 0.02
    router = harmonica.HarmoniCaRouter.from_pretrained(tmp_path / "router")
    assert abs(router.cache_usage() - 0.3) <= 0.02 and router.threshold == summary["threshold"]
    log = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert all(abs(r["usage"] - 0.3) <= 0.02 for r in log)  # trained at the target, not only calibrated


def test_threshold_for_usage_hits_every_reachable_target():
    from harmonica import HarmoniCaRouter, RouterLayout

    layout = RouterLayout.uniform(2, ("attn1", "ff"), "DiTPipeline", "DiTTransformer2DModel", "DDIMScheduler")
    router = HarmoniCaRouter.for_layout(layout, 6, generator=torch.Generator().manual_seed(0))
    for target in (0.0, 0.2, 0.5, 0.8):  # at most 20 of 24 branch computations can be reused
        tau, usage = threshold_for_usage(router, target)
        router.threshold = tau
        assert abs(router.cache_usage() - usage) < 1e-6 and abs(usage - target) <= 1 / 24 / 2 + 1e-9
    assert router.compute_mask(tau)[0].all()  # the first step computes whatever the target


@pytest.mark.parametrize("init, expected", [("static:2", "fora"), ("uniform", "zeros")])
def test_init_options(dit_path, tmp_path, init, expected):
    trainer = make_trainer(dit_path, tmp_path, init=init)
    logits = trainer.router.logits.detach()
    if expected == "zeros":
        assert torch.equal(logits[1:], torch.zeros_like(logits[1:]))
    else:
        mask = trainer.router.compute_mask(0.5)
        assert mask[::2].all() and not mask[1::2].any()
    with pytest.raises(ValueError, match="static:N"):
        make_trainer(dit_path, tmp_path, init="static:0")


def test_stake_lambda_is_informative_where_the_paper_lambda_vanishes(dit_path, tmp_path):
    """The paper's lambda is 0 at every step the router computes fully; the stake variant is not."""
    trainer = make_trainer(dit_path, tmp_path, init="static:2")
    g = torch.Generator().manual_seed(3)
    noise = trainer.denoiser.initial_latents(2, g)
    cond = trainer.denoiser.conditions(2, g)
    args = (trainer.denoiser, trainer.cache, trainer.router, 0.5, noise, cond, trainer.pipe.scheduler)
    paper = image_error_proxy(*args, variant="paper")
    stake = image_error_proxy(*args, variant="stake")
    assert (paper[2::2] == 0).all() and (paper[1::2] > 0).all()
    assert (stake[1:] > 0).all()
    assert torch.allclose(stake[1::2], paper[1::2])  # where the router reuses all, both measure the same


def test_two_process_run_keeps_routers_identical(dit_path, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO / "train" / "train_router.py"), "--cpu", "--pipeline", str(dit_path), "--num_steps", str(STEPS),
           "--trajectories", "2", "--batch_size", "2", "--lambda_every", "3", "--lambda_samples", "2",
           "--output_dir", str(tmp_path / "ddp")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["max_logit_difference_between_processes"] == 0
    assert summary["iterations"] == 2 * (STEPS - 1)


def test_forecast_router_trains_scores_and_coefficients(dit_path, tmp_path):
    """history 3: the coefficients start at the Taylor forecast of the initial schedule, receive
    gradients through the student's forecast and move; the summary says how far."""
    trainer = make_trainer(dit_path, tmp_path, history=3, forecast_init="taylor", init="static:2", target_usage=0.4,
                           coefficient_lr=1e-2, trajectories=2)
    start = trainer.router.coefficients.detach().clone()
    assert (start[..., 1] != 0).any()  # Taylor, not reuse: a second coefficient somewhere
    summary = trainer.train()
    moved = summary["moved_from_init"]
    assert moved["decisions"] == (STEPS - 1) * trainer.router.num_slots
    assert moved["mean_abs_coefficient_change"] > 0 and moved["mean_abs_logit_change"] > 0
    saved = harmonica.HarmoniCaRouter.from_pretrained(tmp_path / "router")
    assert saved.history == 3 and torch.equal(saved.coefficients, trainer.router.coefficients)
    assert not torch.equal(saved.coefficients, start)


def test_a_fill_starts_the_cache_afresh(dit_path, tmp_path):
    """A trajectory's first step fills the student's cache from nothing, as a pipeline call's first step does: with
    history 3 no output of the trajectory before is kept, which a forecast at step 1 would combine (and whose
    shapes may differ: Qwen-Image cuts prompts to the batch's longest)."""
    trainer = make_trainer(dit_path, tmp_path, history=3, init="static:2", target_usage=0.4, trajectories=2)
    trainer.sdt_trajectory(0)
    assert any(len(h) > 1 for state in trainer.cache.snapshot().values() for h in state.values())
    timesteps = trainer._timesteps()
    x, cond = trainer._trajectory_inputs(1)
    trainer._fill(x, timesteps[0], 0, cond)
    snapshot = trainer.cache.snapshot()
    assert snapshot and all(len(h) == 1 for state in snapshot.values() for h in state.values())


def test_reuse_router_keeps_its_coefficients(dit_path, tmp_path):
    trainer = make_trainer(dit_path, tmp_path, trajectories=1)
    trainer.train()
    assert trainer.router.history == 1 and torch.equal(trainer.router.coefficients, torch.ones_like(trainer.router.coefficients))


def test_taylorseer_schedule_init_and_ties_at_the_target():
    """static:N:W computes the first W steps then every N-th; a target usage that falls inside a group
    of equal scores takes the side nearer the target instead of reusing the whole group."""
    from harmonica import HarmoniCaRouter, RouterLayout
    from harmonica.router import static_steps

    assert static_steps(20, 2, 4) == [0, 1, 2, 3, 5, 7, 9, 11, 13, 15, 17, 19]
    assert static_steps(20, 3) == static_steps(20, 3, 1) == [0, 3, 6, 9, 12, 15, 18]
    layout = RouterLayout.uniform(4, ("attn1", "ff"), "DiTPipeline", "DiTTransformer2DModel", "DDIMScheduler")
    router = HarmoniCaRouter.for_layout(layout, 20, init="static:2:4")
    assert router.cache_usage(0.5) == pytest.approx(0.40)
    router = HarmoniCaRouter.for_layout(layout, 20, init="static:2")
    tau, usage = threshold_for_usage(router, 0.55)  # between 50% (reuse group only) and 95% (both groups)
    assert usage == pytest.approx(0.5) and router.cache_usage(tau) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="static:N:W"):
        HarmoniCaRouter.for_layout(layout, 20, init="static:2:x")


def test_fine_tune_starts_from_a_router(dit_path, tmp_path):
    """init_router: the training starts from that router's scores and coefficients (not --init), trains on; one
    that does not fit the pipeline or the settings is refused, naming each difference, before anything is written."""
    base = make_trainer(dit_path, tmp_path / "base", history=3, init="static:2", target_usage=0.4, trajectories=1)
    base.train()
    start = harmonica.HarmoniCaRouter.from_pretrained(tmp_path / "base" / "router")
    tuned = make_trainer(dit_path, tmp_path / "tuned", history=3, init="uniform", target_usage=0.4, trajectories=1,
                         init_router=str(tmp_path / "base" / "router"))
    assert torch.equal(tuned.router.logits.detach(), start.logits) and torch.equal(tuned.initial["logits"], start.logits)
    assert torch.equal(tuned.router.coefficients.detach(), start.coefficients)
    summary = tuned.train()
    assert summary["moved_from_init"]["mean_abs_logit_change"] > 0
    with pytest.raises(ValueError, match=r"cannot start this training: it has 5 sampling steps, the training "
                                         r"num_steps is 6; it has 3 computed outputs per forecast, the training "
                                         r"history is 1"):
        make_trainer(dit_path, tmp_path / "other", num_steps=6, init_router=str(tmp_path / "base" / "router"))
    assert not (tmp_path / "other").exists()
    with pytest.raises(ValueError, match="noise-level router"):
        make_trainer(dit_path, tmp_path / "other", objective="sdt", step_counts=[4, 6],
                     init_router=str(tmp_path / "base" / "router"))

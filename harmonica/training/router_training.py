"""Router training: Step-Wise Denoising Training (SDT) with the image-error-proxy objective (IEPO).

Data-free: every trajectory starts from Gaussian noise and random class labels (or prompts).

SDT, per trajectory:
  1. step 0 computes everything without gradients and fills the cache;
  2. at every later step t, in order: the teacher (the same frozen model, no cache read or write)
     and the student (router-mixed: score * fresh + (1 - score) * cached; the cache is
     overwritten, detached, where score > threshold) both run on the student's latent;
     loss_t = lambda_t * MSE(student, teacher) + beta * sum(scores of step t); one optimizer step;
  3. the next latent is the scheduler step on the student's output, detached (no backprop through
     time: memory does not grow with the number of steps).
IEPO: lambda is refreshed every ``lambda_every`` iterations (at the next trajectory boundary) by
gradient-free sampling with fixed noise and labels (see ``objectives``); ``objective="sdt"`` keeps
lambda = 1. ``objective="ltc"`` is the Learning-to-Cache ablation: lambda = 1, steps visited in
random order, the student's input and a clean cache come from a full-computation teacher trajectory.

The student's cache is the inference cache's own hooks and state, with every forward's step and mode told
by the trainer (``harmonica.cache.drive``): a branch the student rebuilds is what inference rebuilds.

Multi-process (accelerate): each process draws its own trajectories; gradients, losses and the
lambda errors are all-reduced, so every process holds the same router. Checkpoints are taken at
trajectory boundaries through accelerate's state (router, optimizer, RNG, training state), and
every random draw is a pure function of (seed, trajectory, process), so a resumed run ends with the
same router as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..cache import controller as harmonica_controller
from ..cache import describe
from ..cache.drive import DrivenCache
from ..families import family_for, pipeline_transformers
from ..router import HarmoniCaRouter, NoiseLevelRouter, weights_summary
from .checkpoints import resume, save_checkpoint
from .config import OBJECTIVES, RouterTrainingConfig
from .denoisers import denoiser_for
from .objectives import image_error_proxy, normalise, threshold_for_usage
from .run_folder import (TrainState, check_same_run, draw_generator, peak_memory_mb, step_router_movement,
                         truncate_log)

__all__ = ["OBJECTIVES", "RouterTrainer", "RouterTrainingConfig"]

def starting_router(config: RouterTrainingConfig, layout) -> HarmoniCaRouter:
    """The router a fine-tune starts from (``config.init_router``), checked against the pipeline and the settings."""
    router = HarmoniCaRouter.from_pretrained(config.init_router)
    if isinstance(router, NoiseLevelRouter):
        raise ValueError(f"init_router {config.init_router} is a noise-level router; fine-tuning starts from a "
                         "step-indexed one")
    problems = router.layout.mismatches(layout)
    for name, unit in (("num_steps", "sampling steps"), ("history", "computed outputs per forecast")):
        if getattr(router, name) != getattr(config, name):
            problems.append(f"it has {getattr(router, name)} {unit}, the training {name} is {getattr(config, name)}")
    if problems:
        raise ValueError(f"init_router {config.init_router} cannot start this training: " + "; ".join(problems))
    return router


class RouterTrainer:
    """Trains a ``HarmoniCaRouter`` for ``pipe`` (a supported pipeline, already on its device)."""

    def __init__(self, pipe, config: RouterTrainingConfig, accelerator, router: HarmoniCaRouter | None = None):
        config.check()
        self.config = config
        self.accelerator = accelerator
        self.pipe = pipe
        if config.scheduler:
            import diffusers

            klass = getattr(diffusers, config.scheduler)
            pipe.scheduler = klass.from_config(pipe.scheduler.config)
        if harmonica_controller(pipe) is not None:
            raise ValueError("harmonica is enabled on this pipeline; router training attaches the cache hooks itself: "
                             "harmonica.disable(pipe) first")
        family = family_for(pipe)
        denoiser = denoiser_for(pipe)  # raises when the family has none registered
        # the base model (Wan 2.2 A14B: both experts) is frozen, in eval mode, and never receives gradients
        transformers = pipeline_transformers(pipe, family)
        for _, transformer in transformers:
            transformer.eval().requires_grad_(False)
        # the weights the router is trained for: recorded in the run folder and in the saved router (a second
        # expert's under its component name)
        self.transformer = transformers[0][1]
        self.weights_summary = weights_summary(self.transformer)
        self.experts = {name: (t, weights_summary(t)) for name, t in transformers[1:]}
        layout = describe(pipe, config.granularity)
        options = {k: getattr(config, k) for k in ("height", "width", "max_sequence_length", "num_frames")
                   if getattr(config, k) is not None}
        if config.images:
            options["images"] = config.images
        try:
            self.denoiser = denoiser(pipe, config.guidance_scale, config.prompts, **options)
        except TypeError as err:
            raise ValueError(f"{family.name} router training does not take {', '.join(options)} ({err})") from err
        if router is None and config.init_router:
            router = starting_router(config, layout)
        if router is None:
            router = HarmoniCaRouter.for_layout(
                layout, config.num_steps, init=config.init, generator=draw_generator(config.seed, 7),
                threshold=config.threshold, history=config.history,
            )
            if config.history > 1:
                start = config.threshold if config.target_usage is None else \
                    threshold_for_usage(router, config.target_usage)[0]
                router.init_forecast(config.forecast_init, start)
        self.router = router.to(accelerator.device)
        self.router.threshold = config.threshold
        self.threshold = config.threshold
        self.initial = self._initial_state()
        self.cache = DrivenCache(pipe, self.router)
        if config.gradient_checkpointing:
            self.cache.checkpoint_blocks()  # refused before any hook is attached
        self.cache.attach()
        groups = [{"params": [self.router.logits], "lr": config.lr}]
        forecast = self.router.gains if isinstance(self.router, NoiseLevelRouter) else self.router.coefficients
        if router.history > 1:
            groups.append({"params": [forecast], "lr": config.coefficient_lr})
        else:
            forecast.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        self.state = TrainState(max([config.num_steps, *config.step_counts]), first_refresh=config.lambda_every)
        accelerator.register_for_checkpointing(self.router, self.optimizer, self.state)
        self.output = Path(config.output_dir)
        self.log_path = self.output / "training_log.jsonl"

    def _initial_state(self) -> dict:
        """What ``movement`` compares the trained router with."""
        router = self.router
        return {"logits": router.logits.detach().clone(), "coefficients": router.coefficients.detach().clone(),
                "schedule": router.compute_mask(self._set_threshold()).clone()}

    # ------------------------------------------------------------------ building blocks
    def _trajectory_inputs(self, trajectory: int, process: int | None = None):
        """The latents and conditions this process (or ``process``) draws for ``trajectory``."""
        process = self.accelerator.process_index if process is None else process
        g = draw_generator(self.config.seed, trajectory, process, 1)
        x = self.denoiser.initial_latents(self.config.batch_size, g)
        return x, self.denoiser.conditions(self.config.batch_size, g)

    def _lambda_inputs(self, process: int | None = None, processes: int | None = None):
        """This process's (or ``process``'s of ``processes``) share of the fixed samples lambda is measured on:
        the same at every refresh."""
        cfg, acc = self.config, self.accelerator
        per_process = max(1, math.ceil(cfg.lambda_samples / (processes or acc.num_processes)))
        g = draw_generator(cfg.seed, 10_000_019, acc.process_index if process is None else process)
        return self.denoiser.initial_latents(per_process, g), self.denoiser.conditions(per_process, g)

    def _set_threshold(self) -> float:
        cfg = self.config
        if cfg.target_usage is not None:
            self.threshold = threshold_for_usage(self.router, cfg.target_usage)[0]
        return self.threshold

    def _fill(self, x, t, step: int, cond):
        """A full-computation forward that (re)fills the student's cache."""
        with torch.no_grad(), self.cache.running("fill", step):
            return self.denoiser.forward(x, t, cond)

    def _step_scores(self, step: int):
        """The router's scores of ``step`` (differentiable) and the coefficients that rebuild each branch."""
        return self.router.scores()[step], self.router.coefficients[step]

    def _student(self, x, t, step: int, cond):
        """The router-mixed forward: score * fresh + (1 - score) * cached per branch."""
        scores, coefficients = self._step_scores(step)
        self._scores = scores
        write = (scores.detach() > self._set_threshold()).tolist()
        self._written(step, write)
        with self.cache.running("mix", step, scores=scores, write=write, coefficients=coefficients):
            return self.denoiser.forward(x, t, cond)

    def _written(self, step: int, write: list[bool]) -> None:
        """Which branches the student's step ``step`` keeps in the cache (the forecasts' history)."""

    def _teacher(self, x, t, cond):
        with torch.no_grad():  # the training hooks are "off" outside running(): the plain model
            return self.denoiser.forward(x, t, cond)

    def _optimize(self, step: int, student, teacher) -> dict:
        lam = float(self.state.lam[step])
        mse = torch.nn.functional.mse_loss(student.float(), teacher.float())
        penalty = self._scores.sum()
        loss = lam * mse + self.config.beta * penalty
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        if self.accelerator.num_processes > 1:  # every parameter, so that every process holds the same router
            for param in self.router.parameters():
                if param.grad is not None:
                    param.grad = self.accelerator.reduce(param.grad, reduction="mean")
        self.optimizer.step()
        self.router.clamp_()
        threshold = self._set_threshold()
        usage = self._usage(threshold)
        self.state.iteration += 1
        mse_all = self.accelerator.reduce(mse.detach().reshape(1), reduction="mean").item()
        return {"iteration": self.state.iteration, "step": step, "mse": mse_all, "lambda": lam,
                "usage": usage, "threshold": threshold}

    # ---------------------------------------------------------------------- trajectories
    def _timesteps(self) -> list:
        sched = self.pipe.scheduler
        self.denoiser.set_timesteps(sched, self.config.num_steps)
        return list(sched.timesteps)

    def sdt_trajectory(self, trajectory: int) -> list[dict]:
        sched = self.pipe.scheduler
        timesteps = self._timesteps()
        x, cond = self._trajectory_inputs(trajectory)
        with torch.no_grad():  # step 0: full computation fills the cache
            raw = self._fill(x, timesteps[0], 0, cond)
            x = sched.step(self.denoiser.guided(raw), timesteps[0], x).prev_sample
        rows = []
        for i, t in enumerate(timesteps[1:], start=1):
            teacher = self._teacher(x, t, cond)
            student = self._student(x, t, i, cond)
            if not self._took_over(i):
                rows.append(self._optimize(i, student, teacher))
            with torch.no_grad():
                x = sched.step(self.denoiser.guided(student.detach()), t, x).prev_sample
        return rows

    def _took_over(self, step: int) -> bool:
        """Whether the student's forward at ``step`` filled an expert's cache instead of mixing (Wan 2.2 A14B: the
        expert taking over from the other computes everything, at inference too): no optimizer step there."""
        return self.cache.took_over

    def ltc_trajectory(self, trajectory: int) -> list[dict]:
        """Learning-to-Cache: teacher trajectory, clean cache from a full pass, random step order."""
        sched = self.pipe.scheduler
        timesteps = self._timesteps()
        x, cond = self._trajectory_inputs(trajectory)
        xs, outs = [], []
        with torch.no_grad():
            for t in timesteps:
                xs.append(x)
                raw = self.denoiser.forward(x, t, cond)
                outs.append(raw)
                x = sched.step(self.denoiser.guided(raw), t, x).prev_sample
        g = draw_generator(self.config.seed, trajectory, self.accelerator.process_index, 2)
        order = (torch.randperm(len(timesteps) - 1, generator=g) + 1).tolist()
        rows = []
        for i in order:
            self._fill(xs[i - 1], timesteps[i - 1], i - 1, cond)  # a full pass at the previous step: a clean cache
            student = self._student(xs[i], timesteps[i], i, cond)
            if not self._took_over(i):
                rows.append(self._optimize(i, student, outs[i]))
        return rows

    def refresh_lambda(self) -> None:
        cfg = self.config
        acc = self.accelerator
        noise, cond = self._lambda_inputs()
        raw = image_error_proxy(self.denoiser, self.cache, self.router, self._set_threshold(), noise, cond,
                                self.pipe.scheduler, variant=cfg.lambda_variant)
        raw = acc.reduce(raw.to(acc.device), reduction="sum").cpu()
        self.state.lam = normalise(raw, cfg.lambda_floor)
        self.state.refreshes += 1
        self.state.next_refresh = self.state.iteration + cfg.lambda_every

    # ----------------------------------------------------------------------------- run
    def train(self) -> dict:
        cfg, acc = self.config, self.accelerator
        self.output.mkdir(parents=True, exist_ok=True)
        check_same_run(self.output, cfg, self.router, self.transformer, self.weights_summary, acc, self.experts)
        start = resume(acc, self.output / "checkpoints")
        if acc.is_main_process:
            truncate_log(self.log_path, self.state.iteration)
        from tqdm.auto import tqdm

        counts = cfg.step_counts or [cfg.num_steps]  # a noise-level router's trajectories draw their step count
        per_traj = round(sum(counts) / len(counts)) - 1
        bar = tqdm(total=cfg.trajectories * per_traj, initial=self.state.iteration, desc=f"router ({cfg.objective})",
                   disable=not acc.is_main_process)
        t0 = time.perf_counter()
        for trajectory in range(start, cfg.trajectories):
            if cfg.objective == "harmonica" and self.state.iteration >= self.state.next_refresh:
                self.refresh_lambda()
            run = self.ltc_trajectory if cfg.objective == "ltc" else self.sdt_trajectory
            rows = run(trajectory)
            self.state.trajectory = trajectory + 1
            bar.update(len(rows))
            last = rows[-1]
            bar.set_postfix(mse=f"{sum(r['mse'] for r in rows) / len(rows):.2e}", usage=f"{last['usage']:.1%}",
                            lam=f"{float(self.state.lam[1:].max()):.2f}", tau=f"{last['threshold']:.3f}")
            if acc.is_main_process:
                with open(self.log_path, "a") as f:
                    for r in rows:
                        f.write(json.dumps({"trajectory": trajectory, **r}) + "\n")
            if (trajectory + 1) % cfg.checkpoint_every == 0 or trajectory + 1 == cfg.trajectories:
                save_checkpoint(acc, self.output / "checkpoints", trajectory + 1)
        bar.close()
        return self.finish(time.perf_counter() - t0)

    def finish(self, seconds: float) -> dict:
        cfg, acc = self.config, self.accelerator
        router = self.router
        # every process must hold the same router (gradients are all-reduced): check, don't assume
        gathered = acc.gather(torch.cat([p.detach().reshape(-1) for p in router.parameters()]).reshape(1, -1))
        rank_spread = (gathered - gathered[:1]).abs().max().item()
        if rank_spread != 0:
            raise RuntimeError(f"router parameters differ between processes by {rank_spread}; gradients were not synced")
        threshold, usage = self._settle()
        router.training_info = {
            "objective": cfg.objective,
            "config": {k: v for k, v in asdict(self.config).items() if k != "prompts"},
            "iterations": self.state.iteration,
            "lambda": [round(float(v), 4) for v in self.state.lam],
            "transformer_weights": self.weights_summary,
            **({"expert_weights": {name: summary for name, (_, summary) in self.experts.items()}}
               if self.experts else {}),
            "moved": self.movement(threshold),
        }
        summary = {
            "objective": cfg.objective,
            "trajectories": cfg.trajectories,
            "iterations": self.state.iteration,
            "processes": acc.num_processes,
            "max_logit_difference_between_processes": rank_spread,
            "train_seconds_this_run": round(seconds, 1),
            "threshold": threshold,
            "cache_usage": usage,
            "target_usage": cfg.target_usage,
            "peak_memory_mb": round(peak_memory_mb(acc.device), 1),
            "lambda": router.training_info["lambda"],
            "moved_from_init": router.training_info["moved"],
        }
        if acc.is_main_process:
            router.save_pretrained(self.output / "router")
            (self.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        acc.wait_for_everyone()
        return summary

    def _usage(self, threshold: float) -> float:
        return self.router.cache_usage(threshold)

    def _settle(self) -> tuple[float, float]:
        """The trained router's threshold (at the target usage, or the fixed one) and its usage; records the
        timesteps it was trained on."""
        cfg, router = self.config, self.router
        threshold, usage = cfg.threshold, router.cache_usage(cfg.threshold)
        if cfg.target_usage is not None:
            threshold, usage = threshold_for_usage(router, cfg.target_usage)
        router.threshold = threshold
        router.timesteps = [float(t) for t in self._timesteps()]
        return threshold, usage

    def movement(self, threshold: float) -> dict:
        return step_router_movement(self.router, self.initial, threshold)

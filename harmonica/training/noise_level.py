"""Training a noise-level router (``harmonica.router.NoiseLevelRouter``) over a distribution of settings.

Step-Wise Denoising Training as ``RouterTrainer`` runs it, with one difference: every trajectory draws its
step count from ``step_counts`` and its scheduler from ``schedulers`` (a pure function of seed and
trajectory), and the student's scores and forecast coefficients at each step are the router's values at that
step's noise level. The threshold follows the target usage over that trajectory's steps, and a branch's
forecast is the gained Newton forecast through the noise levels where the student kept it, exactly as
``NoiseLevelRouter.resolve`` builds it at inference. One run gives the router for every setting drawn.

The objective is SDT (lambda = 1): IEPO's lambda is a weight per step index, which has no meaning across
step counts.
"""

from __future__ import annotations

import random

import torch

from ..cache import describe
from ..router import HarmoniCaRouter, NoiseLevelRouter, newton_coefficients, noise_levels
from ..router.noise_level import interpolate
from .router_training import RouterTrainer
from .run_folder import draw_generator


def initial_noise_router(pipe, config, denoiser_set_timesteps) -> NoiseLevelRouter:
    """The starting router: ``config.init``'s schedule at the reference step count ``config.num_steps`` on the
    pipeline's own scheduler, placed on the noise axis, with Newton forecasts of the ``forecast_init`` order."""
    layout = describe(pipe, config.granularity)
    step = HarmoniCaRouter.for_layout(layout, config.num_steps, init=config.init,
                                      generator=draw_generator(config.seed, 7), threshold=config.threshold,
                                      history=config.history)
    denoiser_set_timesteps(pipe.scheduler, config.num_steps)
    step.timesteps = [float(t) for t in pipe.scheduler.timesteps]
    kind, _, order = config.forecast_init.partition(":")
    taylor = 0 if kind == "reuse" else min(int(order) if order else config.history - 1, config.history - 1)
    schedulers = config.schedulers or [type(pipe.scheduler).__name__]
    return NoiseLevelRouter.from_step_router(step, pipe.scheduler.config.num_train_timesteps, config.grid_size,
                                             schedulers, (min(config.step_counts), max(config.step_counts)), taylor)


def check_single_evaluation(base, names, steps: int) -> None:
    """Refuse a scheduler that visits a timestep twice (Heun, DPM-Solver single-step): a step is found by its
    timestep, at inference as in training."""
    import diffusers

    for name in names or [type(base).__name__]:
        scheduler = getattr(diffusers, name).from_config(base.config)
        scheduler.set_timesteps(steps)
        values = [float(t) for t in scheduler.timesteps]
        if len(set(values)) != len(values):
            raise ValueError(f"{name} visits some timesteps twice, so a step cannot be told from its timestep; train "
                             "with single-evaluation schedulers (DDIM, DPM-Solver++ multistep, Euler, flow-matching "
                             "Euler, ...)")


class NoiseLevelTrainer(RouterTrainer):
    """``RouterTrainer`` for a ``NoiseLevelRouter`` (see the module docstring)."""

    def __init__(self, pipe, config, accelerator, router: NoiseLevelRouter | None = None):
        config.check()
        if not config.step_counts:
            raise ValueError("a noise-level router trains over step_counts: give at least one")
        from .denoisers import denoiser_for

        self.base_scheduler = pipe.scheduler
        check_single_evaluation(pipe.scheduler, config.schedulers, max(config.step_counts))
        if router is None:
            set_timesteps = denoiser_for(pipe)(pipe, config.guidance_scale, config.prompts).set_timesteps
            router = initial_noise_router(pipe, config, set_timesteps)
        self.steps = config.num_steps  # this trajectory's step count (drawn per trajectory)
        self.levels: list[float] = []
        self.history: list[list[float]] = []
        super().__init__(pipe, config, accelerator, router)

    def _initial_state(self) -> dict:
        return {"logits": self.router.logits.detach().clone(), "gains": self.router.gains.detach().clone()}

    # ---------------------------------------------------------------- the router's values at a step
    def _set_threshold(self) -> float:
        """The threshold at which this trajectory's steps reuse the target fraction (or the fixed one)."""
        if self.config.target_usage is None or not self.levels:
            return self.threshold
        with torch.no_grad():
            scores = self.router.scores_at(self.levels)[1:].flatten().sort().values
        k = min(max(int(round(self.config.target_usage * (scores.numel() + self.router.num_slots))), 0),
                scores.numel())
        low = scores[k - 1].item() if k > 0 else 0.0
        high = scores[k].item() if k < scores.numel() else 1.0
        self.threshold = min(max((low + high) / 2, 1e-6), 1 - 1e-6)
        return self.threshold

    def _step_scores(self, step: int):
        level = self.levels[step]
        scores = torch.sigmoid(interpolate(self.router.logits, [level])[0])
        gains = interpolate(self.router.gains, [level])[0]  # [slot, history - 1]
        rows = []
        for slot, points in enumerate(self.history):
            weights = newton_coefficients(level, points, gains[slot]) if points else [1.0]
            row = [torch.as_tensor(w, dtype=scores.dtype) for w in weights]
            rows.append(torch.stack(row + [scores.new_zeros(())] * (self.router.history - len(row))))
        return scores, torch.stack(rows)

    def _written(self, step: int, write: list[bool]) -> None:
        keep = self.router.history
        self.history = [[self.levels[step]] + points[:keep - 1] if w else points
                        for w, points in zip(write, self.history)]

    def _took_over(self, step: int) -> bool:
        if not super()._took_over(step):
            return False
        self.history = [[self.levels[step]] for _ in range(self.router.num_slots)]  # the expert's cache starts here
        return True

    # ---------------------------------------------------------------- one trajectory's setting
    def _draw_setting(self, trajectory: int) -> None:
        draw = random.Random(hash((self.config.seed, trajectory, self.accelerator.process_index, 3)))
        steps = draw.choice(self.config.step_counts)
        names = self.router.schedulers
        name = draw.choice(names)
        if name == type(self.base_scheduler).__name__:
            self.pipe.scheduler = self.base_scheduler
        else:
            import diffusers

            self.pipe.scheduler = getattr(diffusers, name).from_config(self.base_scheduler.config)
        self.steps = steps

    def _timesteps(self) -> list:
        sched = self.pipe.scheduler
        self.denoiser.set_timesteps(sched, self.steps)
        timesteps = list(sched.timesteps)
        self.levels = noise_levels([float(t) for t in timesteps], self.router.num_train_timesteps)
        self.history = [[self.levels[0]] for _ in range(self.router.num_slots)]  # step 0 fills every branch
        return timesteps

    def sdt_trajectory(self, trajectory: int) -> list[dict]:
        self._draw_setting(trajectory)
        rows = super().sdt_trajectory(trajectory)
        for row in rows:
            row["num_steps"], row["scheduler"] = self.steps, type(self.pipe.scheduler).__name__
        return rows

    # ---------------------------------------------------------------- the end
    @torch.no_grad()
    def _usage(self, threshold: float) -> float:
        """Cache usage of the trajectory's steps at ``threshold`` (step 0 computes)."""
        return 1 - (self.router.scores_at(self.levels) > threshold).float().mean().item()

    def _settle(self) -> tuple[float, float]:
        """The threshold at the target usage at the reference step count on the pipeline's own scheduler (the
        fixed one without a target), and the usage there."""
        self.pipe.scheduler = self.base_scheduler
        self.steps = self.config.num_steps
        self._timesteps()
        threshold = self.router.threshold = self._set_threshold()
        return threshold, self._usage(threshold)

    @torch.no_grad()
    def movement(self, threshold: float) -> dict:
        initial = self.initial
        return {"mean_abs_logit_change": round((self.router.logits - initial["logits"]).abs().mean().item(), 4),
                "mean_abs_gain_change": round((self.router.gains - initial["gains"]).abs().mean().item(), 4)
                if self.router.gains.numel() else 0.0}

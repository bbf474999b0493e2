"""Objectives of router training: the image-error proxy (IEPO) weights, the cache-use penalty
controller and the final threshold calibration.

Which lambda is implemented: the paper's. ``lambda_t = ||x0 - x0^(t)||^2`` where ``x0`` is sampled
with the current router's hard decisions and ``x0^(t)`` with the same decisions except that step
``t`` computes everything. It answers "how much does the final image change because of what the
router caches at step t", which is what the loss at step t is about; the marginal variant of the
public reference code answers a question that depends on the order steps are switched on. The
weights are normalised to mean 1 over steps 1..T-1 (so that beta keeps its meaning when the image
scale changes) and floored at ``floor`` times the mean: a step where the current router caches
nothing has lambda 0, yet caching there would change the image, so its MSE term must not vanish.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def sample_final_latents(denoiser, controller, noise, cond, schedule, scheduler) -> torch.Tensor:
    """Gradient-free sampling with a fixed compute schedule ([step][slot] booleans); leaves the
    caller's cache state, the global RNG and ``scheduler`` untouched (a copy steps)."""
    import copy

    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(len(schedule))
    x = noise.clone()
    # The step hook looks timesteps up in pipe.scheduler; point it at our copy inside the block.
    pipe = controller._pipe()
    original = pipe.scheduler
    pipe.scheduler = sched
    try:
        with controller.isolated(schedule):
            for t in sched.timesteps:
                raw = denoiser.forward(x, t, cond)
                x = sched.step(denoiser.guided(raw), t, x).prev_sample
    finally:
        pipe.scheduler = original
    return x


def image_error_proxy(denoiser, controller, router, threshold, noise, cond, scheduler) -> torch.Tensor:
    """Raw per-step squared final-latent errors ``||x0 - x0^(t)||^2`` (summed over this process's share
    of the fixed samples; entry 0 is 0 since the first step always computes). The caller all-reduces
    them across processes, then normalises (``normalise``)."""
    mask = router.compute_mask(threshold)
    schedule = [row.flatten().tolist() for row in mask]
    base = sample_final_latents(denoiser, controller, noise, cond, schedule, scheduler)
    raw = torch.zeros(router.num_steps, dtype=torch.float64)
    for t in range(1, router.num_steps):
        if all(schedule[t]):  # nothing cached at t: switching caching off there changes nothing
            continue
        modified = [list(row) for row in schedule]
        modified[t] = [True] * len(modified[t])
        x_t = sample_final_latents(denoiser, controller, noise, cond, modified, scheduler)
        raw[t] = (base.double() - x_t.double()).pow(2).sum()
    return raw


def normalise(raw: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """Mean 1 over steps 1..T-1, floored at ``floor``; all ones when every error is zero."""
    lam = raw.clone().double()
    rest = lam[1:]
    if rest.numel() == 0:
        return torch.ones_like(lam).float()
    mean = rest.mean()
    if mean <= 0:
        rest = torch.ones_like(rest)
    else:
        rest = rest / mean
        rest = torch.clamp(rest, min=floor)
        rest = rest / rest.mean()
    lam[0] = 0.0
    lam[1:] = rest
    return lam.float()


class BetaController:
    """Steers the cache-use penalty beta toward a target cache usage (fraction of branch
    computations reused at the inference threshold), multiplicatively, once per iteration."""

    def __init__(self, beta: float, target: float | None, rate: float = 0.0005, bounds=(1e-9, 1e3),
                 max_step: float = 0.02):
        self.beta = float(beta)
        self.target = target
        self.rate = rate
        self.bounds = bounds
        self.max_step = max_step  # at most this change of log(beta) per iteration: the logits (Adam,
        # lr ~1e-2) take hundreds of iterations to move, so a faster controller would overshoot

    def update(self, usage: float) -> float:
        if self.target is not None:
            # log(beta) moves by `rate` per percentage point of usage below (above) the target
            step = self.rate * 100 * (self.target - usage)
            self.beta *= math.exp(min(max(step, -self.max_step), self.max_step))
            self.beta = min(max(self.beta, self.bounds[0]), self.bounds[1])
        return self.beta

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])


def calibrate_threshold(router, target: float, tolerance: float = 0.02) -> tuple[float, float]:
    """The threshold whose cache usage is closest to ``target`` (kept as is when already within
    ``tolerance``). Returns (threshold, usage at that threshold)."""
    current = router.cache_usage()
    if abs(current - target) <= tolerance:
        return router.threshold, current
    scores = router.scores().detach()[1:].flatten().sort().values  # step 0 always computes
    total = router.scores().numel()
    best = (router.threshold, current)
    # candidate thresholds: midpoints between consecutive distinct scores, kept inside (0, 1)
    values = torch.unique(scores)
    candidates = [(values[0].item() / 2)] + [((a + b) / 2).item() for a, b in zip(values[:-1], values[1:])]
    candidates.append((values[-1].item() + 1) / 2)
    for tau in candidates:
        if not 0 < tau < 1:
            continue
        usage = (scores <= tau).sum().item() / total
        if abs(usage - target) < abs(best[1] - target):
            best = (tau, usage)
    return best

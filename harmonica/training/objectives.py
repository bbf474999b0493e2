"""Objectives of router training: the image-error proxy (IEPO) weights and the threshold that
meets a cache-usage target.

Two lambda variants, both measured by gradient-free sampling of fixed noise and labels with the
current router's hard decisions at every step but t (``image_error_proxy``):

* ``"stake"`` (the default): ``lambda_t = ||x0^(t: compute all) - x0^(t: reuse all)||^2``, how much
  the final image depends on whether step t computes or reuses. It is what is at stake at step t,
  whatever the router currently does there.
* ``"paper"``: ``lambda_t = ||x0 - x0^(t)||^2``, the change caused by what the current router caches
  at step t (``x0^(t)``: step t computes everything). It is zero at every step where the router
  computes everything, so SDT is then free to move caching into exactly those steps until the next
  refresh. Measured on the embedded model (README, router ablation table, ``eval/fid.py``): trained
  the same way from FORA's schedule to 50% cache usage, the paper variant ends at FD 3.91 / PSNR
  35.0 dB, the stake variant at FD 3.81 / PSNR 37.4 dB (FORA itself: 3.70 / 35.9 dB).

The reference code's marginal variant (step t switched on given all noisier steps on) is not
implemented: it depends on the order steps are switched on. Weights are normalised to mean 1 over
steps 1..T-1 (beta keeps its meaning when the image scale changes) and floored at ``floor`` times
the mean, so no step's MSE term vanishes.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def sample_final_latents(denoiser, cache, noise, cond, schedule, scheduler, coefficients=None) -> torch.Tensor:
    """Gradient-free sampling with a fixed compute schedule ([step][slot] booleans) and forecast
    ``coefficients`` ([step, slot, history], None: reuse) through the training hooks (``cache``);
    leaves the caller's caches, the global RNG and ``scheduler`` untouched (a copy steps)."""
    import copy

    sched = copy.deepcopy(scheduler)
    denoiser.set_timesteps(sched, len(schedule))
    x = noise.clone()
    with cache.isolated():
        for step, t in enumerate(sched.timesteps):
            step_coefficients = None if coefficients is None else coefficients[step]
            with cache.running("hard", step, compute=schedule[step], coefficients=step_coefficients):
                raw = denoiser.forward(x, t, cond)
            x = sched.step(denoiser.guided(raw), t, x).prev_sample
    return denoiser.final(x, cond)


LAMBDA_VARIANTS = ("stake", "paper")


def image_error_proxy(denoiser, cache, router, threshold, noise, cond, scheduler,
                      variant: str = "stake") -> torch.Tensor:
    """Raw per-step squared final-latent errors of ``variant`` (see the module docstring), summed
    over this process's share of the fixed samples; entry 0 is 0 since the first step always
    computes. The caller all-reduces them across processes, then normalises (``normalise``)."""
    if variant not in LAMBDA_VARIANTS:
        raise ValueError(f"lambda variant must be one of {LAMBDA_VARIANTS}, got {variant!r}")
    schedule = router.schedule(threshold)

    def final(t: int | None = None, compute: bool = True) -> torch.Tensor:
        steps = [list(row) for row in schedule]
        if t is not None:
            steps[t] = [compute] * len(steps[t])
        return sample_final_latents(denoiser, cache, noise, cond, steps, scheduler,
                                    router.coefficients.detach()).double()

    base = final() if variant == "paper" else None
    raw = torch.zeros(router.num_steps, dtype=torch.float64)
    for t in range(1, router.num_steps):
        if variant == "stake":
            raw[t] = (final(t, compute=True) - final(t, compute=False)).pow(2).sum()
        elif not all(schedule[t]):  # paper: nothing cached at t means x0^(t) == x0, lambda 0
            raw[t] = (base - final(t, compute=True)).pow(2).sum()
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


def threshold_for_usage(router, target: float) -> tuple[float, float]:
    """The threshold at which ``router`` reuses a ``target`` fraction of all branch computations
    (step 0 always computes): midway between the scores on either side of that rank. When that rank
    falls inside a group of equal scores (a static initialisation), the whole group either computes
    or is reused: the side whose usage is nearer the target. Returns (threshold, usage at it)."""
    scores = router.scores().detach()[1:].flatten().sort().values
    total = router.scores().numel()
    k = min(max(int(round(target * total)), 0), scores.numel())
    if 0 < k < scores.numel() and scores[k - 1] == scores[k]:
        tied = scores[k]
        below, above = int((scores < tied).sum()), int((scores <= tied).sum())  # ranks just outside the tie
        k = below if abs(below - target * total) <= abs(above - target * total) else above
    if k == 0:
        tau = scores[0].item() / 2
    elif k == scores.numel():
        tau = (scores[-1].item() + 1) / 2
    else:
        tau = (scores[k - 1].item() + scores[k].item()) / 2
    tau = min(max(tau, 1e-6), 1 - 1e-6)
    return tau, (scores <= tau).sum().item() / total

"""``NoiseLevelRouter``: one router for every step count, sampler and speed.

A step-indexed router (``HarmoniCaRouter``) holds a score per (step, branch) and serves exactly the step
count and timesteps it was made for. This one holds its scores and forecast gains as functions of the
*noise level* ``s = t / T``: the scheduler's timestep over its ``num_train_timesteps``. That coordinate is
the one every diffusers scheduler exposes cleanly: for DDPM-type schedulers (DDIM, DPM-Solver++, Euler on
a DiT) it is where the step sits on the training timestep axis; for flow matching (Flux, SD3, Wan:
``timesteps = sigmas * T``) it is sigma itself, shifts included. Values live on a fixed grid of ``s`` in
[0, 1] and are linearly interpolated at a call's actual timesteps.

At the start of a call the whole schedule is resolved once (``resolve``): the scores at the call's noise
levels, which branches compute (``score > threshold``, or the highest scores until the call's transformer
MACs meet a requested ``speedup``), and the coefficients that rebuild the others. A rebuild is a Newton
forecast in ``s`` through the branch's last computed outputs, ``h_0 + g_1 (s - s_0) f[s_0, s_1] +
g_2 (s - s_0)(s - s_1) f[s_0, s_1, s_2] + ...`` with learned gains ``g_k(s)`` (all 1: Lagrange extrapolation
in the real time coordinate, TaylorSeer's finite differences wherever the steps are evenly spaced; all 0:
reuse). So a step count that spaces its steps differently still forecasts by how far apart they are.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .files import RouterFiles
from .layout import RouterError, RouterLayout
from .schedule import LOGIT_BOUND, MAX_HISTORY, check_threshold
from .weights import warn_if_other_weights

GRID_SIZE = 21


def noise_levels(timesteps: Sequence[float], num_train_timesteps: int) -> list[float]:
    """``s = t / T`` of a call's timesteps, clipped to [0, 1]."""
    return [min(max(float(t) / num_train_timesteps, 0.0), 1.0) for t in timesteps]


def interpolate(table: torch.Tensor, levels: Sequence[float]) -> torch.Tensor:
    """Linear interpolation of ``table[grid, ...]`` (grid over [0, 1]) at ``levels``; differentiable."""
    grid = table.shape[0] - 1
    x = torch.tensor([min(max(s, 0.0), 1.0) * grid for s in levels], dtype=torch.float64)
    lo = x.floor().clamp(max=max(grid - 1, 0)).long()
    w = (x - lo).to(table.dtype).view(-1, *([1] * (table.dim() - 1)))
    hi = (lo + 1).clamp(max=grid)
    return table[lo] * (1 - w) + table[hi] * w


def newton_coefficients(target: float, points: Sequence[float], gains) -> list:
    """Weights ``c_j`` of the gained Newton forecast at ``target`` through ``points`` (most recent first):
    ``sum_j c_j h_j``. ``gains[k - 1]`` scales the k-th order term (floats or 0-d tensors: the weights are
    then tensors, differentiable in the gains)."""
    m = len(points)
    weights = [1.0] + [0.0] * (m - 1)
    span = 1.0  # prod_{l < k} (target - s_l)
    for k in range(1, m):
        span = span * (target - points[k - 1])
        for j in range(k + 1):
            denominator = 1.0
            for l in range(k + 1):
                if l != j:
                    denominator *= points[j] - points[l]
            weights[j] = weights[j] + gains[k - 1] * span / denominator
    return weights


@dataclass
class Resolution:
    """One call's schedule: ``schedule[step][slot]`` (compute?) and ``coefficients[step][slot]`` (weights over
    the branch's last computed outputs, most recent first), and the MACs speedup it reaches (None without
    MACs)."""

    schedule: list[list[bool]]
    coefficients: list[list[list[float]]]
    macs_speedup: float | None = None


class NoiseLevelRouter(
    nn.Module,
    RouterFiles,
    PyTorchModelHubMixin,
    library_name="harmonica",
    tags=["harmonica", "feature-cache", "diffusion-transformer", "noise-level-router"],
    repo_url="https://github.com/harmonica-cache/harmonica",
):
    """Scores and forecast gains over the noise level (see the module docstring).

    Args:
        blocks, pipeline_class, transformer_class: as ``HarmoniCaRouter`` (the layout it serves).
        schedulers: the scheduler classes it serves (a call with another one is refused).
        step_range: ``[fewest, most]`` steps it was trained on; a call outside warns.
        grid_size: grid points over ``s`` in [0, 1].
        num_train_timesteps: ``T`` of ``s = t / T`` (the scheduler config's ``num_train_timesteps``).
        threshold: default ``score > threshold`` rule, when no speedup is asked.
        history: outputs a forecast combines (1: reuse).
    """

    kind = "noise-level"
    CONFIG_KEYS = ("kind", "blocks", "pipeline_class", "transformer_class", "schedulers", "step_range", "grid_size",
                   "num_train_timesteps", "threshold", "history", "units", "training")

    def __init__(self, blocks: Sequence, pipeline_class: str = "", transformer_class: str = "",
                 schedulers: Sequence[str] = (), step_range: Sequence[int] = (2, 1000), grid_size: int = GRID_SIZE,
                 num_train_timesteps: int = 1000, threshold: float = 0.5, history: int = 1,
                 training: dict | None = None, units: Sequence | None = None):
        super().__init__()
        self.layout = RouterLayout.from_groups(blocks, units, pipeline_class=pipeline_class,
                                               transformer_class=transformer_class,
                                               scheduler_class=(list(schedulers) or [""])[0])
        if int(grid_size) < 2 or self.layout.num_slots < 1:
            raise RouterError(f"a noise-level router needs a grid of at least 2 points and one branch; got "
                              f"grid_size={grid_size}, blocks={self.layout.groups}")
        if not isinstance(history, numbers.Integral) or not 1 <= int(history) <= MAX_HISTORY:
            raise RouterError(f"history must be an integer from 1 to {MAX_HISTORY}, got {history!r}")
        lo, hi = (int(v) for v in step_range)
        if not 2 <= lo <= hi:
            raise RouterError(f"step_range must be [fewest, most] with 2 <= fewest <= most, got {list(step_range)}")
        self.schedulers = [str(s) for s in schedulers]
        self.step_range = [lo, hi]
        self.grid_size = int(grid_size)
        self.num_train_timesteps = int(num_train_timesteps)
        self.threshold = check_threshold(threshold)
        self.history = int(history)
        self.training_info = dict(training or {})
        self.logits = nn.Parameter(torch.zeros(self.grid_size, self.layout.num_slots))
        self.gains = nn.Parameter(torch.ones(self.grid_size, self.layout.num_slots, self.history - 1))

    # ------------------------------------------------------------------ what it serves
    @property
    def config_dict(self) -> dict:
        return dict(kind=self.kind, blocks=self.layout.groups, pipeline_class=self.pipeline_class,
                    transformer_class=self.transformer_class, schedulers=self.schedulers,
                    step_range=self.step_range, grid_size=self.grid_size,
                    num_train_timesteps=self.num_train_timesteps, threshold=self.threshold, history=self.history,
                    training=self.training_info, **({"units": [list(u) for u in self.layout.units]}
                                                    if self.layout.units else {}))

    def check_compatible(self, layout: RouterLayout, num_steps: int | None = None) -> None:
        """Raise RouterError naming every difference in blocks, pipeline or transformer class (any step count
        and any of ``schedulers`` is served: ``check_call`` checks a call)."""
        problems = self.layout.mismatches(layout, scheduler=False)
        if problems:
            raise RouterError("this router does not fit the pipeline: " + "; ".join(problems) + ".")

    def check_call(self, scheduler, num_steps: int) -> str | None:
        """Refuse a scheduler class the router was not trained for; return a warning for a step count outside
        the trained range (None inside it)."""
        name = type(scheduler).__name__
        if self.schedulers and name not in self.schedulers:
            raise RouterError(f"this router was trained for the {', '.join(self.schedulers)} scheduler(s), the "
                              f"pipeline runs {name}: set one of those (Scheduler.from_config(pipe.scheduler."
                              "config)) or train the router with this one")
        lo, hi = self.step_range
        if not lo <= num_steps <= hi:
            return (f"this router was trained on {lo} to {hi} steps and the call runs {num_steps}: its schedule is "
                    "interpolated there, not trained")
        return None

    # ------------------------------------------------------------------ one call's schedule
    def scores_at(self, levels: Sequence[float]) -> torch.Tensor:
        """Sigmoid scores ``[len(levels), num_slots]``, the first step fixed at 1 (it fills the cache)."""
        scores = torch.sigmoid(interpolate(self.logits, levels))
        return torch.cat([torch.ones_like(scores[:1]), scores[1:]])

    @torch.no_grad()
    def resolve(self, timesteps: Sequence[float], threshold: float | None = None, speedup: float | None = None,
                slot_macs: Sequence[int] | None = None, other_macs: int = 0) -> Resolution:
        """The schedule of a call with these timesteps: computed where ``score > threshold``, or, with
        ``speedup``, the highest scores until the call's MACs (``slot_macs`` per branch, ``other_macs`` per
        forward outside the branches) are at most ``1 / speedup`` of full computation's."""
        levels = noise_levels(timesteps, self.num_train_timesteps)
        scores = self.scores_at(levels)
        if speedup is None:
            compute = scores > (self.threshold if threshold is None else check_threshold(threshold))
        else:
            compute = self.compute_for_speedup(scores, speedup, slot_macs, other_macs)
        schedule = compute.tolist()
        gains = interpolate(self.gains.double(), levels).tolist()
        coefficients = []
        last = [[] for _ in range(self.num_slots)]  # computed noise levels per slot, most recent first
        for step, row in enumerate(schedule):
            coefficients.append([])
            for slot, computed in enumerate(row):
                if step == 0 or computed:
                    coefficients[-1].append([1.0] + [0.0] * (self.history - 1))
                    last[slot] = [levels[step]] + last[slot][:self.history - 1]
                    continue
                weights = newton_coefficients(levels[step], last[slot], gains[step][slot])
                coefficients[-1].append([float(w) for w in weights] + [0.0] * (self.history - len(weights)))
        reached = None
        if slot_macs is not None:
            full = len(schedule) * (other_macs + sum(slot_macs))
            spent = len(schedule) * other_macs + sum(m for row in schedule for m, c in zip(slot_macs, row) if c)
            reached = full / spent
        return Resolution(schedule, coefficients, reached)

    @staticmethod
    def compute_for_speedup(scores: torch.Tensor, speedup: float, slot_macs, other_macs: int) -> torch.Tensor:
        """The highest-scoring branch computations (step 0: all) while the MACs stay within ``1 / speedup``."""
        if slot_macs is None:
            raise RouterError("a speedup target needs the branches' MACs (harmonica measures them on the call's "
                              "first forward)")
        steps = scores.shape[0]
        full = steps * (other_macs + sum(slot_macs))
        floor = steps * other_macs + sum(slot_macs)  # everything but the first step rebuilt
        most = full / floor
        if not (isinstance(speedup, numbers.Real) and math.isfinite(speedup) and 1 <= speedup <= most):
            raise RouterError(f"speedup must be from 1 to {most:.2f} at {steps} steps for this model (every branch "
                              f"rebuilt after the first step), got {speedup!r}")
        budget = full / speedup - floor
        compute = torch.zeros_like(scores, dtype=torch.bool)
        compute[0] = True
        order = torch.argsort(scores[1:].flatten(), descending=True, stable=True).tolist()
        for index in order:
            step, slot = divmod(index, scores.shape[1])
            cost = slot_macs[slot]
            if cost > budget:
                continue
            compute[step + 1, slot] = True
            budget -= cost
        return compute

    # ------------------------------------------------------------------ checks
    @torch.no_grad()
    def clamp_(self) -> "NoiseLevelRouter":
        self.logits.clamp_(-LOGIT_BOUND, LOGIT_BOUND)
        return self

    def validate(self) -> "NoiseLevelRouter":
        shapes = {"logits": (self.grid_size, self.num_slots),
                  "gains": (self.grid_size, self.num_slots, self.history - 1)}
        for name, shape in shapes.items():
            values = getattr(self, name)
            if tuple(values.shape) != shape:
                raise RouterError(f"router {name} have shape {tuple(values.shape)} but its config says {shape}: the "
                                  "weights and config.json do not belong together")
            if not torch.isfinite(values).all():
                raise RouterError(f"router {name} contain NaN or inf; the router file is corrupt or its training "
                                  "diverged: retrain it or load another router")
        check_threshold(self.threshold)
        return self

    def check_weights(self, transformer: nn.Module, component: str | None = None) -> None:
        warn_if_other_weights(self.training_info, transformer, component)

    def extra_repr(self) -> str:
        lo, hi = self.step_range
        return (f"noise levels on {self.grid_size} points, {lo}-{hi} steps, schedulers {self.schedulers or 'any'}, "
                f"blocks=[{self.layout.describe_blocks()}], history={self.history}, threshold={self.threshold}")

    # ------------------------------------------------------------------ from a step-indexed router
    @classmethod
    def from_step_router(cls, router, num_train_timesteps: int = 1000, grid_size: int = GRID_SIZE,
                         schedulers: Sequence[str] | None = None, step_range: Sequence[int] = (2, 1000),
                         taylor_order: int = 1) -> "NoiseLevelRouter":
        """A noise-level router whose scores are a step router's, placed at the noise levels of the timesteps
        it was trained on and interpolated over the grid (constant beyond its first and last steps), with
        Newton forecasts of ``taylor_order`` (gains 1 up to that order, 0 above)."""
        if router.timesteps is None:
            raise RouterError("the step router records no timesteps, so its steps cannot be placed on the noise "
                              "axis; train or save it with harmonica >= 0.1 (it records them)")
        made = cls(router.layout.groups, router.pipeline_class, router.transformer_class,
                   schedulers=list(schedulers) if schedulers is not None else [router.scheduler_class],
                   step_range=step_range, grid_size=grid_size, num_train_timesteps=num_train_timesteps,
                   threshold=router.threshold, history=router.history, units=router.layout.units,
                   training={"from_step_router": {"num_steps": router.num_steps, **router.training_info}})
        levels = noise_levels(router.timesteps[1:], num_train_timesteps)  # step 0 always computes
        logits = router.logits.detach()[1:]
        order = sorted(range(len(levels)), key=levels.__getitem__)
        xs, ys = [levels[i] for i in order], logits[order]
        with torch.no_grad():
            for g in range(grid_size):
                s = g / (grid_size - 1)
                j = next((k for k, x in enumerate(xs) if x >= s), len(xs))
                if j == 0 or j == len(xs):
                    made.logits[g] = ys[min(j, len(xs) - 1)]
                else:
                    w = (s - xs[j - 1]) / (xs[j] - xs[j - 1]) if xs[j] > xs[j - 1] else 1.0
                    made.logits[g] = ys[j - 1] * (1 - w) + ys[j] * w
            made.gains.zero_()
            made.gains[..., :taylor_order] = 1.0
        return made

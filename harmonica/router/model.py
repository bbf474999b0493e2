"""``HarmoniCaRouter``: the learned schedule as a torch module, saved and loaded through huggingface_hub."""

from __future__ import annotations

import numbers
from typing import Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .files import CONFIG_KEYS, RouterFiles
from .layout import RouterError, RouterLayout
from .schedule import (DEFAULT_THRESHOLD, LOGIT_BOUND, MAX_HISTORY, STATIC_INIT_LOGIT, check_threshold, parse_init,
                       static_steps, taylor_coefficients)
from .weights import warn_if_other_weights

TIMESTEP_TOLERANCE = 1e-3  # relative; a router's recorded timesteps vs a call's


class HarmoniCaRouter(
    nn.Module,
    RouterFiles,
    PyTorchModelHubMixin,
    library_name="harmonica",
    tags=["harmonica", "feature-cache", "diffusion-transformer"],
    repo_url="https://github.com/harmonica-cache/harmonica",
):
    """Learnable compute/reuse schedule for a diffusion transformer.

    Args:
        num_steps: number of sampling steps the router was made for (``num_inference_steps``).
        blocks: the layout's blocks in run-length form, ``[[block list, count, [branches]], ...]``
            (``RouterLayout.groups``), e.g. ``[["transformer_blocks", 28, ["attn1", "ff"]]]`` for
            DiT-XL/2 or double and single blocks for Flux.
        pipeline_class, transformer_class, scheduler_class: class names of the pipeline it serves.
        threshold: default inference threshold (``score > threshold`` computes).
        timesteps: the scheduler's timesteps it was trained on (checked against each call).
        history: how many of a branch's last computed outputs a forecast combines (1: reuse).
        units: the cache's units, ``[[first block, last block], ...]`` (``RouterLayout.units``); None: branches.
        training: free-form record of how the router was made (objective, command, ...).
    """

    CONFIG_KEYS = CONFIG_KEYS

    def __init__(
        self,
        num_steps: int,
        blocks: Sequence,
        pipeline_class: str = "",
        transformer_class: str = "",
        scheduler_class: str = "",
        threshold: float = DEFAULT_THRESHOLD,
        timesteps: Sequence[float] | None = None,
        history: int = 1,
        training: dict | None = None,
        units: Sequence | None = None,
    ):
        super().__init__()
        layout = RouterLayout.from_groups(blocks, units, pipeline_class=pipeline_class,
                                          transformer_class=transformer_class, scheduler_class=scheduler_class)
        if int(num_steps) < 1 or layout.num_slots < 1:
            raise RouterError(f"a router needs at least one step and one branch; got num_steps={num_steps}, "
                              f"blocks={layout.groups}")
        self.num_steps = int(num_steps)
        self.layout = layout
        self.threshold = check_threshold(threshold)
        self.timesteps = None if timesteps is None else [float(t) for t in timesteps]
        if self.timesteps is not None and len(self.timesteps) != self.num_steps:
            raise RouterError(f"the router records {len(self.timesteps)} timesteps for {self.num_steps} steps")
        if not isinstance(history, numbers.Integral) or not 1 <= int(history) <= MAX_HISTORY:
            raise RouterError(f"history must be an integer from 1 to {MAX_HISTORY}, got {history!r}")
        self.history = int(history)
        self.training_info = dict(training or {})
        self.logits = nn.Parameter(torch.zeros(self.num_steps, layout.num_slots))
        coefficients = torch.zeros(self.num_steps, layout.num_slots, self.history)
        coefficients[..., 0] = 1.0  # reuse
        self.coefficients = nn.Parameter(coefficients)

    # ----------------------------------------------------------------- construction helpers
    @classmethod
    def for_layout(
        cls,
        layout: RouterLayout,
        num_steps: int,
        init: str = "random",
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> "HarmoniCaRouter":
        """A router for ``layout``; ``init`` is ``"random"`` (randn logits), ``"compute"`` (all
        branches computed), ``"reuse"`` (everything after the first step reused), ``"uniform"`` (all
        logits 0: every branch alike), ``"static:N"`` (FORA's compute-every-N schedule with logits
        +/-2, a soft start for training; ``static`` makes the hard schedule) or ``"static:N:W"`` (the
        first W steps computed, then every N-th: TaylorSeer's schedule)."""
        kind, every, warmup = parse_init(init)
        router = cls(
            num_steps=num_steps,
            blocks=layout.groups,
            pipeline_class=layout.pipeline_class,
            transformer_class=layout.transformer_class,
            scheduler_class=layout.scheduler_class,
            units=layout.units,
            **kwargs,
        )
        with torch.no_grad():
            if kind == "random":
                router.logits.copy_(torch.randn(router.logits.shape, generator=generator))
            elif kind == "compute":
                router.logits.fill_(LOGIT_BOUND)
            elif kind == "reuse":
                router.logits.fill_(-LOGIT_BOUND)
            elif kind == "static":
                router.logits.fill_(-STATIC_INIT_LOGIT)
                router.logits[static_steps(router.num_steps, every, warmup)] = STATIC_INIT_LOGIT
            # "uniform": the constructor's zeros
            router.logits.clamp_(-LOGIT_BOUND, LOGIT_BOUND)
        return router

    @classmethod
    def static(cls, layout: RouterLayout, num_steps: int, compute_every: int = 2, **kwargs) -> "HarmoniCaRouter":
        """A fixed schedule that computes every branch at every ``compute_every``-th step and reuses
        the cache in between (FORA-style static reuse)."""
        if int(compute_every) < 1:
            raise RouterError(f"compute_every must be >= 1, got {compute_every}")
        router = cls.for_layout(layout, num_steps, init="reuse", **kwargs)
        with torch.no_grad():
            router.logits[:: int(compute_every)] = LOGIT_BOUND
        router.training_info.setdefault("kind", f"static, compute every {int(compute_every)} steps")
        return router

    def scores(self) -> torch.Tensor:
        """Sigmoid scores ``[num_steps, num_slots]``; the first step is fixed at 1."""
        s = torch.sigmoid(self.logits)
        first = torch.zeros_like(s, dtype=torch.bool)
        first[0] = True
        return torch.where(first, torch.ones_like(s), s)

    @torch.no_grad()
    def compute_mask(self, threshold: float | None = None) -> torch.Tensor:
        """Boolean ``[num_steps, num_slots]``: True where the branch is computed."""
        threshold = self.threshold if threshold is None else check_threshold(threshold)
        return self.scores() > threshold

    def schedule(self, threshold: float | None = None) -> list[list[bool]]:
        """``compute_mask`` as nested lists ``[step][slot]`` (what the cache hooks read)."""
        return self.compute_mask(threshold).tolist()

    def cache_usage(self, threshold: float | None = None) -> float:
        """Fraction of branch computations the schedule skips (reuses from the cache)."""
        mask = self.compute_mask(threshold)
        return 1.0 - mask.float().mean().item()

    @torch.no_grad()
    def forecast_table(self) -> list[list[tuple[float, ...]]]:
        """Coefficients as nested lists ``[step][slot] -> (c_0, ..., c_{history-1})`` (what the hooks read)."""
        return [[tuple(row) for row in step] for step in self.coefficients.detach().double().tolist()]

    @torch.no_grad()
    def init_forecast(self, kind: str = "taylor", threshold: float | None = None) -> "HarmoniCaRouter":
        """Set the coefficients: ``"reuse"`` (the last computed output as it is) or ``"taylor"`` /
        ``"taylor:N"`` (polynomial extrapolation of order N, at most ``history - 1``, through the steps
        where the branch was last computed under the schedule at ``threshold``; TaylorSeer's
        finite-difference forecast for a static schedule)."""
        name, _, order = str(kind).partition(":")
        if name == "reuse" and not order:
            table = torch.zeros_like(self.coefficients)
            table[..., 0] = 1.0
        elif name == "taylor" and (not order or order.isdigit()):
            order = self.history - 1 if not order else min(int(order), self.history - 1)
            table = torch.tensor(taylor_coefficients(self.schedule(threshold), self.history, order),
                                 dtype=self.coefficients.dtype)
        else:
            raise RouterError(f"forecast init must be 'reuse', 'taylor' or 'taylor:N', got {kind!r}")
        self.coefficients.copy_(table)
        return self

    @torch.no_grad()
    def clamp_(self) -> "HarmoniCaRouter":
        self.logits.clamp_(-LOGIT_BOUND, LOGIT_BOUND)
        return self

    def forward(self) -> torch.Tensor:  # nn.Module API: the router's output is its score table
        return self.scores()

    def extra_repr(self) -> str:
        return (
            f"num_steps={self.num_steps}, blocks=[{self.layout.describe_blocks()}], "
            f"threshold={self.threshold}, pipeline={self.pipeline_class or '?'}"
        )

    # ----------------------------------------------------------------------- validation
    def validate(self) -> "HarmoniCaRouter":
        expected = (self.num_steps, self.num_slots)
        if tuple(self.logits.shape) != expected:
            raise RouterError(
                f"router logits have shape {tuple(self.logits.shape)} but its config says {expected} "
                "(steps, branch slots): the weights and config.json do not belong together"
            )
        if tuple(self.coefficients.shape) != expected + (self.history,):
            raise RouterError(
                f"router coefficients have shape {tuple(self.coefficients.shape)} but its config says "
                f"{expected + (self.history,)} (steps, branch slots, history)"
            )
        for name, values in (("logits", self.logits), ("coefficients", self.coefficients)):
            if not torch.isfinite(values).all():
                bad = (~torch.isfinite(values)).nonzero()[:5].tolist()
                names = self.layout.slot_names
                where = ", ".join(f"step {b[0]} {names[b[1]]}" for b in bad)
                raise RouterError(
                    f"router {name} contain NaN or inf (first at {where}); the router file is corrupt or its "
                    "training diverged: retrain it or load another router"
                )
        check_threshold(self.threshold)
        return self

    def check_compatible(self, layout: RouterLayout, num_steps: int | None = None) -> None:
        """Raise RouterError naming every difference between this router and a pipeline."""
        problems = self.layout.mismatches(layout)
        if num_steps is not None and num_steps != self.num_steps:
            problems.append(
                f"it was made for {self.num_steps} sampling steps, the pipeline runs {num_steps} "
                f"(call the pipeline with num_inference_steps={self.num_steps} or train a router for {num_steps})"
            )
        if problems:
            raise RouterError("this router does not fit the pipeline: " + "; ".join(problems) + ".")

    def check_timesteps(self, timesteps: Sequence[float]) -> None:
        """Raise when a call's timesteps are not the ones the router was trained on (another
        ``timestep_spacing``, shift or resolution-dependent shift makes another schedule)."""
        if self.timesteps is None:
            return
        got = [float(t) for t in timesteps]
        if len(got) != len(self.timesteps):
            return  # the step count check names this
        for i, (a, b) in enumerate(zip(self.timesteps, got)):
            if abs(a - b) > TIMESTEP_TOLERANCE * max(1.0, abs(a)):
                raise RouterError(
                    f"this router was trained on the timesteps {_short(self.timesteps)}, this call runs "
                    f"{_short(got)} (first difference at step {i}: {a:g} vs {b:g}). The scheduler is configured "
                    "differently (timestep_spacing, shift, or a resolution-dependent shift): use the scheduler "
                    "settings the router was trained with, or train a router for these."
                )

    def check_weights(self, transformer: nn.Module, component: str | None = None) -> None:
        """Warn when the router was trained on other weights of the same architecture (see
        ``weights.warn_if_other_weights``)."""
        warn_if_other_weights(self.training_info, transformer, component)


def _short(values: Sequence[float], n: int = 4) -> str:
    text = ", ".join(f"{v:g}" for v in values[:n])
    return f"[{text}, ...]" if len(values) > n else f"[{text}]"

"""The settings of one router training run: ``RouterTrainingConfig``, a dataclass whose fields carry their help
text (what ``train/train_router.py --help`` shows) and whose ``check()`` refuses a value of the wrong type or out of
range before anything is loaded or written."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..router import MAX_HISTORY, check_threshold, parse_init, units_for
from .objectives import LAMBDA_VARIANTS

OBJECTIVES = ("harmonica", "sdt", "ltc")


def _setting(default, help: str, **extra):
    """A RouterTrainingConfig field with its help text (shown by train/train_router.py --help)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class RouterTrainingConfig:
    """Settings of one router training run (recipes in pipelines/recipes/*.json set these).

    Every field's help text (``metadata["help"]``) is what ``train/train_router.py --help`` shows.
    ``check()`` refuses values of the wrong type or out of range.
    """

    num_steps: int = _setting(20, "sampling steps the router is trained for (its num_inference_steps)")
    objective: str = _setting("harmonica", "harmonica (SDT + IEPO), sdt (SDT, lambda = 1) or ltc (Learning-to-Cache)",
                              choices=OBJECTIVES)
    trajectories: int = _setting(200, "sampling trajectories in all (each gives num_steps - 1 optimizer steps)")
    batch_size: int = _setting(16, "trajectories per batch and process (the CFG batch is twice this)")
    lr: float = _setting(1e-2, "AdamW learning rate on the router logits (clamped to [-5, 5] after each update)")
    weight_decay: float = _setting(0.0, "AdamW weight decay on the router logits")
    beta: float = _setting(1e-4, "weight of the cache-use penalty (sum of the scores of the step)")
    target_usage: float | None = _setting(
        None, "cache usage (fraction of branch computations reused) the router is trained at and ends with: the "
        "threshold follows the score at that rank at every iteration, so training builds and reads the cache as "
        "inference at the target will; beta only pushes unneeded scores down. Unset: the fixed --threshold, and "
        "beta alone sets the speed (as in the paper)")
    threshold: float = _setting(0.1, "inference threshold in (0, 1) without a target usage (the cache is "
                                "overwritten in training where score > threshold)")
    guidance_scale: float = _setting(1.5, "classifier-free guidance of the training trajectories (<= 1: none)")
    lambda_every: int = _setting(500, "iterations between IEPO lambda refreshes (C)")
    lambda_samples: int = _setting(8, "fixed samples (over all processes) used to measure lambda")
    lambda_floor: float = _setting(0.05, "lambda's floor, as a fraction of its mean, in [0, 1]")
    init: str = _setting("random", "starting logits: random (randn, as the paper), uniform (all 0), compute (every "
                         "branch computed), reuse (everything after the first step reused), static:N (FORA's "
                         "compute-every-N schedule, logits +2 / -2) or static:N:W (the first W steps computed, then "
                         "every N-th: TaylorSeer's schedule with its warm-up)")
    lambda_variant: str = _setting("stake", "IEPO lambda: stake or paper (see harmonica/training/objectives.py)",
                                   choices=LAMBDA_VARIANTS)
    history: int = _setting(1, "a skipped branch is forecast from its last HISTORY computed outputs with learned "
                            f"coefficients (trained together with the scores), 1 to {MAX_HISTORY}; 1: plain reuse")
    forecast_init: str = _setting("taylor", "the coefficients' start with --history > 1: taylor (polynomial "
                                  "extrapolation through the steps where the branch is computed under the initial "
                                  "schedule, TaylorSeer's forecast), taylor:N (order N) or reuse")
    granularity: str = _setting("branch", "what the cache keeps and the router decides on: branch (every branch of "
                                "every block), block (each block's residual), span:N (runs of N blocks), body:F,B "
                                "(one residual of the blocks between F front and B back blocks, which always run): "
                                "coarser units hold less memory")
    init_router: str | None = _setting(None, "fine-tune: start from this router (folder or hub id), its scores and "
                                       "forecast coefficients, instead of --init and --forecast_init; it must fit "
                                       "the pipeline, --num_steps and --history")
    coefficient_lr: float = _setting(1e-3, "AdamW learning rate of the forecast coefficients")
    seed: int = _setting(0, "seed of every random draw (trajectories, labels, lambda samples), >= 0")
    checkpoint_every: int = _setting(10, "trajectories between checkpoints (accelerate state)")
    output_dir: str = _setting("runs/router", "run folder: checkpoints, training_log.jsonl, summary.json, router/")
    scheduler: str | None = _setting(None, "diffusers scheduler class to train with, e.g. DPMSolverMultistepScheduler "
                                     "(unset: the pipeline's own)")
    height: int | None = _setting(None, "image height of the training trajectories, for text-to-image families "
                                  "that take it (unset: the pipeline's own)")
    width: int | None = _setting(None, "image width of the training trajectories (unset: the pipeline's own)")
    max_sequence_length: int | None = _setting(None, "prompt length in tokens, for text-to-image families that "
                                               "take it (unset: the pipeline's own)")
    num_frames: int | None = _setting(None, "video length of the training trajectories, for video families (Wan) "
                                      "(unset: the pipeline's own)")
    prompts: list[str] = _setting([], "text-to-image families: prompts the trajectories draw from")
    images: list[str] = _setting([], "image-to-video families (WanImageToVideoPipeline): image files the "
                                 "trajectories draw their first frames from")
    step_counts: list[int] = _setting([], "a noise-level router (one for every step count and sampler): the step "
                                      "counts the trajectories draw from, e.g. 10 20 30 50 (objective sdt); empty: a "
                                      "step-indexed router for num_steps (then the noise-level router's reference "
                                      "step count: its init schedule and threshold are set there)")
    schedulers: list[str] = _setting([], "a noise-level router: diffusers scheduler classes the trajectories draw "
                                     "from (empty: the pipeline's own)")
    grid_size: int = _setting(21, "a noise-level router: grid points over the noise level t / T in [0, 1]")
    gradient_checkpointing: bool = _setting(False, "recompute each transformer block of the student's forward in "
                                            "the backward (the router's mix included) instead of keeping its "
                                            "activations: less memory, about one more forward of time; the same "
                                            "gradients")

    def check(self) -> None:
        """Raise ValueError naming the first setting of the wrong type or out of range."""
        from ..cli import type_problems

        problems = type_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.num_steps < 2:
            raise ValueError(f"num_steps must be >= 2 (the first step always computes), got {self.num_steps}")
        check_threshold(self.threshold)
        if self.target_usage is not None and not 0 <= self.target_usage < 1:
            raise ValueError(f"target_usage must be in [0, 1), got {self.target_usage}")
        if not 1 <= self.history <= MAX_HISTORY:
            raise ValueError(f"history must be from 1 to {MAX_HISTORY}, got {self.history}")
        if self.objective == "ltc" and self.history != 1:
            raise ValueError("the LTC objective trains reuse only (history 1)")
        if self.lambda_variant not in LAMBDA_VARIANTS:
            raise ValueError(f"lambda_variant must be one of {LAMBDA_VARIANTS}, got {self.lambda_variant!r}")
        parse_init(self.init)
        units_for(self.granularity, 10**6)  # the form (the block count is checked against the pipeline)
        for name in ("trajectories", "batch_size", "lambda_every", "lambda_samples", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("weight_decay", "beta", "guidance_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.coefficient_lr) and self.coefficient_lr > 0):
            raise ValueError(f"coefficient_lr must be a finite number > 0, got {self.coefficient_lr}")
        kind, _, order = self.forecast_init.partition(":")
        if not (kind == "reuse" and not order or kind == "taylor" and (not order or order.isdigit())):
            raise ValueError(f"forecast_init must be 'reuse', 'taylor' or 'taylor:N', got {self.forecast_init!r}")
        for name in ("height", "width", "max_sequence_length", "num_frames"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 when given, got {getattr(self, name)}")
        missing = [path for path in self.images if not Path(path).is_file()]
        if missing:
            raise ValueError(f"images: no such file {', '.join(missing)}")
        if not 0 <= self.lambda_floor <= 1:
            raise ValueError(f"lambda_floor must be in [0, 1], got {self.lambda_floor}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not self.output_dir.strip():
            raise ValueError("output_dir must not be empty")
        if self.step_counts:
            if self.init_router:
                raise ValueError("init_router fine-tunes a step-indexed router; a noise-level router (step_counts) "
                                 "starts from --init")
            if self.objective != "sdt":
                raise ValueError("a noise-level router (step_counts) trains with objective 'sdt' (IEPO's lambda is "
                                 f"per step index), got {self.objective!r}")
            if any(not isinstance(n, int) or n < 2 for n in self.step_counts):
                raise ValueError(f"step_counts must be integers >= 2, got {self.step_counts}")
        if self.grid_size < 2:
            raise ValueError(f"grid_size must be >= 2, got {self.grid_size}")
        for name in self.schedulers + ([self.scheduler] if self.scheduler is not None else []):
            import diffusers

            klass = getattr(diffusers, name, None)
            if not (isinstance(klass, type) and issubclass(klass, diffusers.SchedulerMixin)):
                raise ValueError(f"scheduler must name a diffusers scheduler class (e.g. DDIMScheduler, "
                                 f"DPMSolverMultistepScheduler), got {name!r}")

"""The learned router: per (sampling step, block, branch), a compute/skip logit and forecast coefficients.

A branch is computed at step ``s`` when ``sigmoid(logit[s, slot]) > threshold``; otherwise its output is
rebuilt from the cache as ``sum_k coefficients[s, slot, k] * h_k`` over its last ``history`` computed
outputs ``h_0`` (most recent), ``h_1``, ... (only those computed so far count). ``history = 1`` with
coefficient 1 is plain reuse (every router saved before forecasts loads as such); a static schedule
with Taylor coefficients (``init_forecast("taylor")``: polynomial extrapolation through the steps
where the branch was computed) is a TaylorSeer-style forecast. Scores and coefficients do not depend
on the input, so a whole sampling schedule is known before sampling starts and routing costs nothing
at inference. The first step always computes everything: it fills the cache, so its logits are not
used.

Routers are saved as ``model.safetensors`` + ``config.json`` through huggingface_hub's
``PyTorchModelHubMixin`` (``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``). The config
records what the router was trained for, and ``check_compatible`` compares it with a pipeline.
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

LOGIT_BOUND = 5.0
DEFAULT_THRESHOLD = 0.1


class RouterError(ValueError):
    """A router that cannot be used as asked (unreadable file, bad values, wrong pipeline)."""


@dataclass(frozen=True)
class RouterLayout:
    """What a router must match in a pipeline: its blocks (over every block list, each with its own
    branches) and the sampling setup's classes.

    ``blocks[i] = (block list name, branch names)``. Router slots run block by block, branch by
    branch: slot ``s`` of block ``i`` is ``first_slot(i) + k`` for its ``k``-th branch.
    """

    blocks: tuple[tuple[str, tuple[str, ...]], ...]
    pipeline_class: str = ""
    transformer_class: str = ""
    scheduler_class: str = ""

    @classmethod
    def uniform(cls, num_blocks: int, branches: Sequence[str], pipeline_class: str = "", transformer_class: str = "",
                scheduler_class: str = "", list_name: str = "transformer_blocks") -> "RouterLayout":
        """``num_blocks`` blocks of one list, all with the same ``branches`` (DiT, PixArt)."""
        return cls(((list_name, tuple(branches)),) * int(num_blocks), pipeline_class, transformer_class,
                   scheduler_class)

    @classmethod
    def from_groups(cls, groups, **classes) -> "RouterLayout":
        """From the run-length form saved in router configs: ``[[list name, count, [branches]], ...]``."""
        try:
            blocks = tuple((str(name), tuple(str(b) for b in branches))
                           for name, count, branches in groups for _ in range(int(count)))
        except (TypeError, ValueError) as err:
            raise RouterError(f"a router layout must be [[block list, count, [branches]], ...], got {groups!r}") from err
        return cls(blocks, **classes)

    @property
    def groups(self) -> list[list]:
        """Run-length form: consecutive blocks of one list with the same branches."""
        out: list[list] = []
        for name, branches in self.blocks:
            if out and out[-1][0] == name and tuple(out[-1][2]) == branches:
                out[-1][1] += 1
            else:
                out.append([name, 1, list(branches)])
        return out

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_slots(self) -> int:
        return sum(len(branches) for _, branches in self.blocks)

    @property
    def slot_names(self) -> list[str]:
        """``"<list>.<index in list>.<branch>"`` for every slot, in slot order."""
        names, seen = [], {}
        for name, branches in self.blocks:
            i = seen[name] = seen.get(name, -1) + 1
            names.extend(f"{name}.{i}.{b}" for b in branches)
        return names

    @property
    def branches(self) -> tuple[str, ...]:
        """The branch names shared by every block (raises for layouts that differ between blocks)."""
        layouts = {branches for _, branches in self.blocks}
        if len(layouts) != 1:
            raise RouterError(f"the blocks of this layout have different branches: {sorted(layouts)}")
        return layouts.pop()

    def slot(self, block: int, branch: str) -> int:
        """The slot of ``branch`` in block ``block`` (counted over all block lists)."""
        if not 0 <= block < self.num_blocks:
            raise IndexError(f"block {block} is outside a layout of {self.num_blocks} blocks")
        names = self.blocks[block][1]
        if branch not in names:
            raise KeyError(f"block {block} has no branch {branch!r} (it has {list(names)})")
        return sum(len(b) for _, b in self.blocks[:block]) + names.index(branch)

    def describe_blocks(self) -> str:
        return ", ".join(f"{count} x {name} {branches}" for name, count, branches in self.groups)


WEIGHTS_TOLERANCE = 1e-3  # relative, for old records (weights_signature); a cast to fp16 / bf16 moves it far less
TIMESTEP_TOLERANCE = 1e-3  # relative; a router's recorded timesteps vs a call's
STATIC_INIT_LOGIT = 2.0
MAX_HISTORY = 4  # init "static:N": scores 0.88 / 0.12, far enough from 0.5 yet free to move
INIT_KINDS = ("random", "compute", "reuse", "uniform")


def parse_init(init: str) -> tuple[str, int, int]:
    """``(kind, N, W)`` of a router ``init`` string: one of INIT_KINDS (N = W = 0), ``"static:N"``
    (compute every N-th step) or ``"static:N:W"`` (the first W steps, then every N-th, TaylorSeer's
    schedule with its warm-up)."""
    kind, *numbers = str(init).split(":")
    if kind in INIT_KINDS and not numbers:
        return kind, 0, 0
    if kind == "static" and 1 <= len(numbers) <= 2 and all(n.isdigit() for n in numbers) and int(numbers[0]) >= 1:
        return kind, int(numbers[0]), int(numbers[1]) if len(numbers) == 2 else 0
    raise RouterError(f"init must be one of {', '.join(map(repr, INIT_KINDS))}, 'static:N' or 'static:N:W' (N >= 1, "
                      f"W >= 0), got {init!r}")


def static_steps(num_steps: int, every: int, warmup: int = 0) -> list[int]:
    """The steps a static schedule computes: the first ``warmup`` steps, then every ``every``-th
    (counted from the end of the warm-up; step 0 always)."""
    cadence_start = warmup - 1 if warmup else 0  # the last warm-up step starts the cadence
    return sorted({0} | set(range(min(warmup, num_steps))) | set(range(cadence_start, num_steps, every)))


def check_threshold(threshold: float) -> float:
    real = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
    if not real or math.isnan(float(threshold)) or not (0.0 < float(threshold) < 1.0):
        raise RouterError(
            f"threshold must be a number strictly between 0 and 1 (a branch is computed when its score "
            f"exceeds it), got {threshold!r}. The reference value for DiT is {DEFAULT_THRESHOLD}."
        )
    return float(threshold)


@torch.no_grad()
def weights_signature(module: nn.Module) -> float:
    """Mean absolute value of every floating-point weight of ``module``, summed in float64.

    What routers trained before ``weights_summary`` recorded (their weights are still compared with it). It
    survives a cast to fp16 / bf16 (within ``WEIGHTS_TOLERANCE``) and moves when the model is retrained, but
    not under a fine-tune: N(0, 1e-3) noise on every weight moves it by 5% of the tolerance.
    """
    total, count = 0.0, 0
    for t in module.state_dict().values():
        if torch.is_tensor(t) and t.is_floating_point():
            total += t.abs().sum(dtype=torch.float64).item()
            count += t.numel()
    return total / max(count, 1)


# A summary of the transformer weights a router was trained on (its config's training.transformer_weights):
# per floating-point tensor, [mean, mean |w|, std, p_1, p_2, p_3] with p_k = sum_i s_ki w_i / sqrt(n) for fixed
# pseudo-random signs s_ki = +/-1. A cast to fp16 / bf16 moves each element by at most its rounding error
# (relative 2^-8 for bf16), so mean and mean |w| move by at most that times mean |w|, std by at most that
# times the tensor's rms, and p_k by about that times the rms (rounding errors summed with random signs),
# while N(0, sigma) noise on every weight moves p_k by about sigma. Tensors are compared one by one (see
# weights_distance); eval/weights_check.py measures both on a pipeline.
WEIGHTS_SUMMARY_FORMAT = "harmonica-weights-2"
BF16_ROUNDING = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits); fp16's is 2^-11
FP16_SMALLEST = 2.0**-24  # fp16 subnormal spacing: the absolute rounding error of tiny weights
WEIGHTS_SUMMARY_TOLERANCE = 4.0  # a statistic may move by this many bf16 rounding errors before weights differ
_PROJECTIONS = 3
_SUMMARY_DIGITS = 8


def _projection_signs(n: int, device) -> torch.Tensor:
    """``[_PROJECTIONS, n]`` of +/-1 from an integer hash of the element index: the same on every device."""
    h = (torch.arange(n, device=device, dtype=torch.int64) * 0x9E3779B1 + 0x7F4A7C15) & 0xFFFFFFFF
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    bits = torch.stack([(h >> (3 * k + 1)) & 1 for k in range(_PROJECTIONS)])
    return (bits * 2 - 1).float()


@torch.no_grad()
def weights_summary(module: nn.Module) -> dict:
    """Per-tensor statistics of ``module``'s floating-point weights (see WEIGHTS_SUMMARY_FORMAT above), JSON-ready:
    ``{"format", "tensors": digest of the tensor names and shapes, "stats": [[mean, mean |w|, std, p1, p2, p3], ...]}``
    in ``state_dict`` order, computed in float32 on the weights' device."""
    import hashlib

    names, stats, signs = [], [], None
    for name, t in module.state_dict().items():
        if not (torch.is_tensor(t) and t.is_floating_point()) or t.numel() == 0:
            continue
        w = t.detach().reshape(-1).float()  # float32 sums are far more precise than the tolerance needs
        n = w.numel()
        if signs is None or signs.shape[1] < n or signs.device != w.device:  # element i's signs do not depend on n
            signs = _projection_signs(max(n, 1 << 16), w.device)
        mean = w.mean()
        row = torch.cat([torch.stack([mean, w.abs().mean(), (w - mean).square().mean().sqrt()]),
                         (signs[:, :n] @ w) / math.sqrt(n)])
        names.append(f"{name}:{tuple(t.shape)}")
        stats.append([float(f"{v:.{_SUMMARY_DIGITS}g}") for v in row.tolist()])
    digest = hashlib.sha1(";".join(names).encode()).hexdigest()[:16]
    return {"format": WEIGHTS_SUMMARY_FORMAT, "tensors": digest, "stats": stats}


def _tensor_names(module: nn.Module) -> list[str]:
    return [k for k, t in module.state_dict().items() if torch.is_tensor(t) and t.is_floating_point() and t.numel()]


def weights_distance(recorded, module: nn.Module, summary: dict | None = None) -> tuple[float, str]:
    """How far ``module``'s weights are from those ``recorded`` (a router's ``training.transformer_weights``),
    in units of the tolerance: above 1 they are other weights (retrained or fine-tuned), at most 1 the same
    weights, possibly cast to fp16 / bf16. Returns ``(distance, what moved most)``.

    ``recorded`` is a ``weights_summary`` (compared tensor by tensor: the largest move of a statistic, in
    bf16 rounding errors of that tensor, over WEIGHTS_SUMMARY_TOLERANCE) or, for routers saved before it, the
    float ``weights_signature`` (mean |w|, compared the old way, relative tolerance WEIGHTS_TOLERANCE).
    ``summary`` is ``weights_summary(module)`` when already computed.
    """
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        now = weights_signature(module)
        distance = abs(now - recorded) / (WEIGHTS_TOLERANCE * max(abs(recorded), 1e-30))
        return distance, f"mean |w| {recorded:.6g} there, {now:.6g} here"
    if recorded is None:
        return math.inf, "no record of the weights"
    if not (isinstance(recorded, dict) and recorded.get("format") == WEIGHTS_SUMMARY_FORMAT):
        return 0.0, "a record of the weights in a format this version does not read"
    summary = weights_summary(module) if summary is None else summary
    if summary["tensors"] != recorded["tensors"] or len(summary["stats"]) != len(recorded["stats"]):
        return math.inf, "the transformer's tensors have other names or shapes"
    worst, where = 0.0, ""
    for i, (old, new) in enumerate(zip(recorded["stats"], summary["stats"])):
        mean, mean_abs, std = old[:3]
        # bounds of what rounding every element by at most BF16_ROUNDING (relative) does to each statistic:
        # mean and mean |w| move by at most BF16_ROUNDING * mean |w|, std by at most BF16_ROUNDING * rms, and
        # a projection by about BF16_ROUNDING * rms (a sum of rounding errors with random signs)
        rms_unit = BF16_ROUNDING * math.hypot(mean, std) + FP16_SMALLEST
        abs_unit = BF16_ROUNDING * mean_abs + FP16_SMALLEST
        moves = {"mean": abs(new[0] - mean) / abs_unit, "mean |w|": abs(new[1] - mean_abs) / abs_unit,
                 "std": abs(new[2] - std) / rms_unit}
        for k in range(_PROJECTIONS):
            moves[f"projection {k + 1}"] = abs(new[3 + k] - old[3 + k]) / rms_unit
        stat, move = max(moves.items(), key=lambda kv: kv[1] if kv[1] == kv[1] else math.inf)
        if not move <= worst:  # NaN / inf (overflow in fp16) counts as the worst
            worst, where = move, (i, stat, move)
    if not where:
        return 0.0, "no tensor moved"
    i, stat, move = where
    names = _tensor_names(module)
    name = names[i] if i < len(names) else f"tensor {i}"
    return worst / WEIGHTS_SUMMARY_TOLERANCE, (f"{name}: {stat} moved by {move:.3g} bf16 rounding errors of the "
                                               f"tensor, the tolerance for a cast is {WEIGHTS_SUMMARY_TOLERANCE:g}")


class HarmoniCaRouter(
    nn.Module,
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
        training: free-form record of how the router was made (objective, command, ...).
        num_blocks, branches: the layout of routers saved before block lists existed (one list of
            ``num_blocks`` blocks, each with ``branches``); give ``blocks`` instead.
    """

    def __init__(
        self,
        num_steps: int,
        blocks: Sequence | None = None,
        pipeline_class: str = "",
        transformer_class: str = "",
        scheduler_class: str = "",
        threshold: float = DEFAULT_THRESHOLD,
        timesteps: Sequence[float] | None = None,
        history: int = 1,
        training: dict | None = None,
        num_blocks: int | None = None,
        branches: Sequence[str] | None = None,
    ):
        super().__init__()
        classes = dict(pipeline_class=pipeline_class, transformer_class=transformer_class,
                       scheduler_class=scheduler_class)
        if blocks is not None and (num_blocks is not None or branches is not None):
            raise RouterError("give the router layout either as blocks or as num_blocks + branches, not both")
        if blocks is None:
            if num_blocks is None or not branches or int(num_blocks) < 1:
                raise RouterError(
                    f"a router needs at least one block and branch; got num_blocks={num_blocks}, branches={branches}"
                )
            layout = RouterLayout.uniform(int(num_blocks), branches, **classes)
        else:
            layout = RouterLayout.from_groups(blocks, **classes)
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
        self._register_load_state_dict_pre_hook(self._upgrade_saved_state)

    def _upgrade_saved_state(self, state_dict, prefix, *args):
        """Routers saved before block lists held logits [steps, blocks, branches] (the same slots,
        flattened); routers saved before forecasts hold no coefficients (reuse: history 1, coefficient 1)."""
        key = prefix + "logits"
        if key in state_dict and state_dict[key].dim() == 3:
            state_dict[key] = state_dict[key].flatten(1)
        if prefix + "coefficients" not in state_dict and key in state_dict and self.history == 1:
            state_dict[prefix + "coefficients"] = torch.ones(*state_dict[key].shape, 1)

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

    # ----------------------------------------------------------------------- properties
    @property
    def num_blocks(self) -> int:
        return self.layout.num_blocks

    @property
    def num_slots(self) -> int:
        return self.layout.num_slots

    @property
    def pipeline_class(self) -> str:
        return self.layout.pipeline_class

    @property
    def transformer_class(self) -> str:
        return self.layout.transformer_class

    @property
    def scheduler_class(self) -> str:
        return self.layout.scheduler_class

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
        problems = []
        mine = self.layout
        if mine.num_blocks != layout.num_blocks:
            problems.append(f"it has {mine.num_blocks} blocks, the transformer has {layout.num_blocks}")
        if {b for _, b in mine.blocks} != {b for _, b in layout.blocks} or (
                mine.num_blocks == layout.num_blocks and mine.blocks != layout.blocks):
            problems.append(f"its blocks and branches are [{mine.describe_blocks()}], the transformer's are "
                            f"[{layout.describe_blocks()}]")
        for what, ours, theirs in (
            ("pipeline", mine.pipeline_class, layout.pipeline_class),
            ("transformer", mine.transformer_class, layout.transformer_class),
            ("scheduler", mine.scheduler_class, layout.scheduler_class),
        ):
            if ours and theirs and ours != theirs:
                problems.append(f"it was made for a {ours} {what}, this one is a {theirs}")
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

    def check_weights(self, transformer: nn.Module) -> None:
        """Warn when the router was trained on other weights of the same architecture (a retrained or
        fine-tuned model): it still runs, but its schedule was not learned for these weights. The same
        weights cast to fp16 / bf16 do not warn (see ``weights_distance``)."""
        trained_on = self.training_info.get("transformer_weights")
        if trained_on is None:
            return
        distance, what = weights_distance(trained_on, transformer)
        if not distance <= 1:
            warnings.warn(
                f"this router was trained on other transformer weights ({what}): its cache schedule may not fit "
                "this model and images may degrade; retrain the router for these weights (train/train_router.py)",
                stacklevel=3,
            )

    # ------------------------------------------------------------------------------ I/O
    @property
    def config_dict(self) -> dict:
        config = dict(
            num_steps=self.num_steps,
            blocks=self.layout.groups,
            pipeline_class=self.pipeline_class,
            transformer_class=self.transformer_class,
            scheduler_class=self.scheduler_class,
            threshold=self.threshold,
            training=self.training_info,
        )
        if self.timesteps is not None:
            config["timesteps"] = self.timesteps
        if self.history != 1:
            config["history"] = self.history
        return config

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Write ``model.safetensors`` and ``config.json`` (see huggingface_hub's ModelHubMixin)."""
        self.validate()
        kwargs.setdefault("config", self.config_dict)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def push_to_hub(self, repo_id: str, *args, **kwargs):
        self.validate()
        kwargs.setdefault("config", self.config_dict)
        return super().push_to_hub(repo_id, *args, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, config: dict | None = None, **kwargs):
        check_config(config, model_id)
        return super()._from_pretrained(model_id=model_id, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "HarmoniCaRouter":
        """Load a router folder or hub repo (safetensors only) and check its config and values."""
        from safetensors import SafetensorError

        kwargs.setdefault("strict", True)  # a weight missing from the file is an error, not a default
        try:
            router = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RouterError(
                f"cannot read the router at {pretrained_model_name_or_path}: {err}. The file is truncated or "
                "not a harmonica router; save it again with HarmoniCaRouter.save_pretrained."
            ) from err
        except TypeError as err:  # config.json lacks fields
            raise RouterError(
                f"the config.json of the router at {pretrained_model_name_or_path} is not a harmonica router "
                f"config ({err})"
            ) from err
        except RuntimeError as err:  # safetensors content does not match the config's shape
            raise RouterError(
                f"the weights of the router at {pretrained_model_name_or_path} do not match its config.json: {err}"
            ) from err
        return router.validate()


CONFIG_KEYS = ("num_steps", "blocks", "num_blocks", "branches", "pipeline_class", "transformer_class",
               "scheduler_class", "threshold", "timesteps", "history", "training")
CLASS_KEYS = ("pipeline_class", "transformer_class", "scheduler_class")


def check_config(config: dict | None, where) -> None:
    """Refuse a router config.json with unknown keys or without the classes it was made for (an empty
    class name would switch that compatibility check off)."""
    if config is None:
        raise RouterError(f"the router at {where} has no config.json")
    if not isinstance(config, dict):
        raise RouterError(f"the config.json of the router at {where} is not a JSON object")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise RouterError(
            f"the config.json of the router at {where} has unknown keys {unknown} (known: {', '.join(CONFIG_KEYS)}); "
            "it was not written by this version of harmonica or was edited by hand"
        )
    empty = [k for k in CLASS_KEYS if not isinstance(config.get(k), str) or not config.get(k)]
    if empty:
        raise RouterError(
            f"the config.json of the router at {where} does not name the {', '.join(empty)} it was made for; "
            "a router file must record them (HarmoniCaRouter.for_layout(harmonica.describe(pipe), ...) does)"
        )


def _short(values: Sequence[float], n: int = 4) -> str:
    text = ", ".join(f"{v:g}" for v in values[:n])
    return f"[{text}, ...]" if len(values) > n else f"[{text}]"


def computed_before(schedule: Sequence[Sequence[bool]], step: int, slot: int, limit: int) -> list[int]:
    """The last ``limit`` steps before ``step`` where ``slot`` was computed, most recent first (the
    first step always computes)."""
    found = []
    for s in range(step - 1, -1, -1):
        if s == 0 or schedule[s][slot]:
            found.append(s)
            if len(found) == limit:
                break
    return found


def taylor_coefficients(schedule: Sequence[Sequence[bool]], history: int, order: int) -> list:
    """``[step][slot][k]``: Lagrange extrapolation weights through the last ``order + 1`` computed steps
    (fewer where fewer were computed so far), the forecast of a polynomial in the step index; reuse at
    order 0. Computed steps get reuse weights (they are not used there)."""
    table = []
    for step, row in enumerate(schedule):
        table.append([])
        for slot, computed in enumerate(row):
            weights = [0.0] * history
            points = [] if step == 0 or computed else computed_before(schedule, step, slot, order + 1)
            if not points:
                weights[0] = 1.0
            for k, p in enumerate(points):
                w = 1.0
                for j, q in enumerate(points):
                    if j != k:
                        w *= (step - q) / (p - q)
                weights[k] = w
            table[-1].append(weights)
    return table

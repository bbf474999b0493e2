"""The feature cache: diffusers ModelHooks that compute or reuse each branch as the router decides.

Two kinds of hook, both on diffusers' own hook machinery (``diffusers.hooks.HookRegistry``):

* ``StepHook`` on the transformer reads the timestep the pipeline passes, finds its index in the
  pipeline scheduler's ``timesteps`` (the denoising loop's own position, not a call counter) and
  sets the step's compute/reuse decisions. A call's first forward (step 0, or any step not after
  the previous one) starts a new cache: features never outlive the pipeline call that made them.
* ``BranchHook`` on every branch module (``attn1`` / ``attn2`` / ``ff`` of a block) either runs the
  module and stores its output, or returns the stored output without running the module. The block's
  own code then applies the current step's adaLN gate and the residual add, so what is cached is the
  un-gated branch output.

``enable(pipe, router)`` attaches both and ``disable(pipe)`` removes them, leaving every module as
it was. ``stats(pipe)`` tells what the last call computed, reused and spent in multiply-accumulates.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .blocks import block_branches, branch_modules, count_macs
from .router import HarmoniCaRouter, RouterError, RouterLayout, check_threshold

logger = logging.getLogger(__name__)

STEP_HOOK = "harmonica_step"
BRANCH_HOOK = "harmonica_branch"


@dataclass
class CacheStats:
    """What one pipeline call did. ``cache_usage`` is the fraction of branch computations reused."""

    num_steps: int = 0
    branch_calls: int = 0
    reused: int = 0
    macs_full: int = 0
    macs_spent: int = 0
    reused_per_step: list[int] = field(default_factory=list)

    @property
    def cache_usage(self) -> float:
        return self.reused / self.branch_calls if self.branch_calls else 0.0

    @property
    def macs_speedup(self) -> float:
        """Full-computation MACs divided by the MACs spent (the theoretical speedup of the transformer)."""
        return self.macs_full / self.macs_spent if self.macs_spent else 1.0

    def __str__(self) -> str:
        return (
            f"{self.num_steps} steps, cache usage {self.cache_usage:.1%} ({self.reused}/{self.branch_calls} branch "
            f"computations reused), transformer MACs {self.macs_spent / 1e9:.3f}G of {self.macs_full / 1e9:.3f}G "
            f"({self.macs_speedup:.2f}x)"
        )


class CacheState:
    """Everything harmonica keeps during one pipeline call, shared by all hooks of a transformer."""

    def __init__(self, num_blocks: int, num_branches: int):
        self.num_blocks = num_blocks
        self.num_branches = num_branches
        self.num_slots = num_blocks * num_branches
        self.active = True
        self.reset()

    def reset(self) -> None:
        self.features: list[torch.Tensor | None] = [None] * self.num_slots
        self.step: int | None = None  # step index of the forward in progress / last finished
        self.compute_now: list[bool] = [True] * self.num_slots
        self.counting_macs: list[int] | None = None  # set while MACs of a new input shape are measured
        self.stats = CacheStats()
        # Router training (harmonica.training) drives the forwards itself:
        self.forced: str | None = None  # "fill": compute everything; "mix": router-mixed student forward
        self.mix: torch.Tensor | None = None  # per-slot scores of the current mixed forward (carry gradients)
        self.write: list[bool] | None = None  # per-slot: overwrite the cache in the current mixed forward


class BranchHook(ModelHook):
    """Compute a branch and keep its output, or return the kept output without running the branch."""

    def __init__(self, state: CacheState, slot: int, name: str):
        super().__init__()
        self.state = state
        self.slot = slot
        self.name = name

    def new_forward(self, module, *args, **kwargs):
        state = self.state
        if not state.active:
            return self.fn_ref.original_forward(*args, **kwargs)
        if state.mix is not None:
            return self._mixed(*args, **kwargs)
        if state.compute_now[self.slot]:
            if state.counting_macs is not None:
                out, macs = count_macs(lambda: self.fn_ref.original_forward(*args, **kwargs))
                state.counting_macs[self.slot] = macs
            else:
                out = self.fn_ref.original_forward(*args, **kwargs)
            state.features[self.slot] = out
            return out
        cached = state.features[self.slot]
        hidden = args[0] if args else kwargs.get("hidden_states")
        if cached is None or (hidden is not None and cached.shape[:-1] != hidden.shape[:-1]):
            raise RuntimeError(
                f"harmonica: no usable cached output for {self.name} at step {state.step} "
                f"(cached {None if cached is None else tuple(cached.shape)}, input "
                f"{None if hidden is None else tuple(hidden.shape)}). Cached features belong to one pipeline "
                "call; call the transformer through the pipeline's denoising loop."
            )
        return cached

    def _mixed(self, *args, **kwargs):
        """Training forward: score * fresh + (1 - score) * cached; the cache keeps the fresh (detached)
        output where the score is above the threshold, as inference would have computed it there."""
        state = self.state
        fresh = self.fn_ref.original_forward(*args, **kwargs)
        cached = state.features[self.slot]
        if cached is None or cached.shape != fresh.shape:
            raise RuntimeError(f"harmonica: router-mixed forward of {self.name} without a filled cache")
        score = state.mix[self.slot].to(fresh.dtype)
        out = score * fresh + (1 - score) * cached
        if state.write[self.slot]:
            state.features[self.slot] = fresh.detach()
        return out


class StepHook(ModelHook):
    """Maps the pipeline's timestep to its step index and sets that step's decisions."""

    def __init__(self, controller: "HarmoniCa"):
        super().__init__()
        self.controller = controller
        self._timestep_pos: int | None = None

    def initialize_hook(self, module):
        params = list(inspect.signature(module.forward).parameters)
        self._timestep_pos = params.index("timestep") if "timestep" in params else None
        return module

    def _timestep(self, args, kwargs):
        if "timestep" in kwargs:
            return kwargs["timestep"]
        if self._timestep_pos is not None and len(args) > self._timestep_pos:
            return args[self._timestep_pos]
        raise RuntimeError("harmonica: the transformer was called without a timestep")

    def new_forward(self, module, *args, **kwargs):
        ctl = self.controller
        state = ctl.state
        if not state.active:
            return self.fn_ref.original_forward(*args, **kwargs)
        step, num_steps = ctl.step_index(self._timestep(args, kwargs))
        if state.forced is not None:
            return self._forced_forward(step, args, kwargs)
        new_call = state.step is None or step <= state.step
        if new_call:
            ctl.begin_call(num_steps)
        state.step = step
        if new_call:  # the first forward of a call fills the cache
            state.compute_now = [True] * state.num_slots
        else:
            state.compute_now = ctl.schedule[step]
        key = ctl.shape_key(args, kwargs)
        if new_call and key not in ctl.macs_table:
            state.counting_macs = [0] * state.num_slots
            try:
                out, total = count_macs(lambda: self.fn_ref.original_forward(*args, **kwargs))
                ctl.macs_table[key] = (total, state.counting_macs)
            finally:
                state.counting_macs = None
        else:
            out = self.fn_ref.original_forward(*args, **kwargs)
        ctl.account_step(key, state.compute_now)
        if step == num_steps - 1:
            ctl.end_call()
        return out

    def _forced_forward(self, step: int, args, kwargs):
        """A forward whose mode the router trainer chose ("fill" or "mix"); no statistics are kept."""
        ctl, state = self.controller, self.controller.state
        state.step = step
        state.compute_now = [True] * state.num_slots
        if state.forced == "mix":
            if step == 0:
                raise RuntimeError("harmonica: the first step always computes everything; fill it, don't mix it")
            scores = ctl.router.scores()[step].reshape(-1)
            state.mix = scores
            state.write = (scores.detach() > ctl.threshold).tolist()
        elif state.forced != "fill":
            raise ValueError(f"unknown forced mode {state.forced!r}")
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            state.mix = None
            state.write = None


class HarmoniCa:
    """The harmonica controller attached to a pipeline as ``pipe.harmonica``."""

    def __init__(self, pipe, router: HarmoniCaRouter, threshold: float | None):
        self.router = router.validate()
        self.threshold = router.threshold if threshold is None else check_threshold(threshold)
        self._pipe = weakref.ref(pipe)
        self.transformer = pipe.transformer
        self.layout = describe(pipe)
        router.check_compatible(self.layout)
        mask = router.compute_mask(self.threshold)
        self.schedule = [row.flatten().tolist() for row in mask]  # [step][block * branches + branch]
        self.state = CacheState(router.num_blocks, len(router.branches))
        self.macs_table: dict[tuple, tuple[int, list[int]]] = {}
        self.last_stats: CacheStats | None = None
        self._timesteps_id = None
        self._timestep_index: dict[float, int] = {}
        self._restore: list[tuple[torch.nn.Module, bool, bool]] = []

    # ------------------------------------------------------------------ hooks in and out
    def attach(self) -> None:
        modules = [self.transformer] + [m for row in branch_modules(self.transformer) for m in row]
        for m in modules:
            self._restore.append((m, "_diffusers_hook" in m.__dict__, "forward" in m.__dict__))
        names = self.router.branches
        for b, row in enumerate(branch_modules(self.transformer)):
            for k, module in enumerate(row):
                registry = HookRegistry.check_if_exists_or_initialize(module)
                hook = BranchHook(self.state, b * len(names) + k, f"block {b} {names[k]}")
                registry.register_hook(hook, BRANCH_HOOK)
        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        registry.register_hook(StepHook(self), STEP_HOOK)
        registry.invalidate_child_registries_cache()

    def detach(self) -> None:
        self.state.reset()
        for module, had_registry, had_forward in self._restore:
            registry = module.__dict__.get("_diffusers_hook")
            if registry is None:
                continue
            for name in (STEP_HOOK, BRANCH_HOOK):
                registry.remove_hook(name, recurse=False)
            if not registry.hooks:  # nothing else hooked here: restore the module's own attributes
                if not had_registry:
                    del module._diffusers_hook
                if not had_forward and "forward" in module.__dict__:
                    del module.forward
        self._restore.clear()

    # ------------------------------------------------------------------- per-step logic
    def step_index(self, timestep) -> tuple[int, int]:
        pipe = self._pipe()
        scheduler = pipe.scheduler
        timesteps = scheduler.timesteps
        if timesteps is None:
            raise RuntimeError("harmonica: the scheduler has no timesteps; call the transformer through the pipeline")
        if id(timesteps) != self._timesteps_id:
            values = [float(t) for t in timesteps.flatten().tolist()]
            if len(set(values)) != len(values):
                raise RouterError(
                    f"{type(scheduler).__name__} visits some timesteps twice, so a step cannot be told from its "
                    "timestep; use a single-evaluation scheduler (DDIM, DPM-Solver++, Euler, ...)"
                )
            self._timestep_index = {v: i for i, v in enumerate(values)}
            self._timesteps_id = id(timesteps)
        t = timestep.flatten()[0].item() if torch.is_tensor(timestep) else timestep
        index = self._timestep_index.get(float(t))
        if index is None:
            raise RuntimeError(
                f"harmonica: timestep {t} is not one of the scheduler's current timesteps; harmonica follows the "
                "pipeline's denoising loop (use `with harmonica.paused(pipe):` to call the transformer directly)"
            )
        return index, len(self._timestep_index)

    @contextmanager
    def isolated(self, schedule: list[list[bool]] | None = None):
        """Run pipeline calls (e.g. gradient-free sampling during training) without touching the cache
        state of the caller: features, step, statistics and schedule are restored afterwards.
        ``schedule`` ([step][slot] compute flags) replaces the router's schedule inside the block."""
        saved_state = self.state.__dict__.copy()
        saved_features = list(self.state.features)
        saved_schedule, saved_last = self.schedule, self.last_stats
        self.state.reset()
        self.state.active = True
        if schedule is not None:
            self.schedule = schedule
        try:
            yield self
        finally:
            self.state.__dict__.update(saved_state)
            self.state.features = saved_features
            self.schedule, self.last_stats = saved_schedule, saved_last

    def begin_call(self, num_steps: int) -> None:
        pipe = self._pipe()
        layout = describe(pipe)
        self.router.check_compatible(layout, num_steps)
        self.state.reset()

    def shape_key(self, args, kwargs) -> tuple:
        hidden = args[0] if args else kwargs.get("hidden_states")
        enc = kwargs.get("encoder_hidden_states")
        if enc is None and len(args) > 1 and torch.is_tensor(args[1]) and args[1].dim() == 3:
            enc = args[1]
        return tuple(hidden.shape), None if enc is None else tuple(enc.shape)

    def account_step(self, key, compute_now: list[bool]) -> None:
        total, per_slot = self.macs_table.get(key, (0, [0] * self.state.num_slots))
        reused = [s for s, c in enumerate(compute_now) if not c]
        st = self.state.stats
        st.num_steps += 1
        st.branch_calls += len(compute_now)
        st.reused += len(reused)
        st.reused_per_step.append(len(reused))
        st.macs_full += total
        st.macs_spent += total - sum(per_slot[s] for s in reused)

    def end_call(self) -> None:
        self.last_stats = self.state.stats
        self.state.reset()  # frees the cached features; the next call starts clean


# ------------------------------------------------------------------------------ public API
def describe(pipe) -> RouterLayout:
    """The layout a router must have to serve ``pipe`` (raises if the pipeline is not supported)."""
    from .pipeline import check_supported

    check_supported(pipe)
    transformer = pipe.transformer
    return RouterLayout(
        num_blocks=len(transformer.transformer_blocks),
        branches=block_branches(transformer),
        pipeline_class=type(pipe).__name__,
        transformer_class=type(transformer).__name__,
        scheduler_class=type(pipe.scheduler).__name__,
    )


def enable(pipe, router: HarmoniCaRouter, threshold: float | None = None):
    """Attach ``router`` to ``pipe`` (replacing a router already attached). Returns ``pipe``.

    Every check runs before anything is attached: on error the pipeline is left as it was.
    """
    if not isinstance(router, HarmoniCaRouter):
        raise TypeError(f"router must be a HarmoniCaRouter, got {type(router).__name__}")
    controller = HarmoniCa(pipe, router, threshold)
    disable(pipe)
    controller.attach()
    pipe.harmonica = controller
    return pipe


def disable(pipe):
    """Remove harmonica from ``pipe``: every module is left exactly as before ``enable``."""
    controller = pipe.__dict__.get("harmonica")
    if controller is not None:
        controller.detach()
        del pipe.harmonica
    return pipe


def stats(pipe) -> CacheStats | None:
    """Statistics of the last completed pipeline call (None before the first)."""
    controller = pipe.__dict__.get("harmonica")
    if controller is None:
        raise RuntimeError("harmonica is not enabled on this pipeline")
    return controller.last_stats


@contextmanager
def paused(pipe):
    """Run the transformer without harmonica (no cache reads or writes) inside the block."""
    controller = pipe.__dict__.get("harmonica")
    if controller is None:
        yield pipe
        return
    previous = controller.state.active
    controller.state.active = False
    try:
        yield pipe
    finally:
        controller.state.active = previous

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
* ``BlockHook`` on every block (when ``fused``, the default): a run of consecutive blocks whose
  branches are all reused at a step is replaced by one ``hidden + sum(gate * cached)``
  (``harmonica.kernels.gather_apply``: one fused Triton kernel on CUDA, the torch reference
  elsewhere); the gates are computed as the blocks compute them (``blocks.BlockSpec.gates``).

Cached outputs live in one ``CachePool`` per call, holding only the branches the schedule reuses.

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

from .blocks import block_branches, branch_modules, count_macs, fusable, spec_for, transformer_blocks
from .kernels import CachePool, gather_apply
from .router import HarmoniCaRouter, RouterLayout, check_threshold
from .steps import StepLocator

logger = logging.getLogger(__name__)

STEP_HOOK = "harmonica_step"
BRANCH_HOOK = "harmonica_branch"
BLOCK_HOOK = "harmonica_block"
SKIP = "skip"  # block plan entry: this block is covered by the fused run started before it


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
        self.pool: CachePool | None = None  # allocated at the first store of a call, freed at its end
        self.slot_map: list[int | None] = list(range(self.num_slots))  # branch slot -> pool slot (None: not kept)
        self.plan: list | None = None  # per block, for the forward in progress: None, SKIP or a fused run
        self.step: int | None = None  # step index of the forward in progress / last finished
        self.compute_now: list[bool] = [True] * self.num_slots
        self.counting_macs: list[int] | None = None  # set while MACs of a new input shape are measured
        self.stats = CacheStats()
        # Router training (harmonica.training) drives the forwards itself:
        self.forced: str | None = None  # "fill": compute everything; "mix": router-mixed student forward
        self.mix: torch.Tensor | None = None  # per-slot scores of the current mixed forward (carry gradients)
        self.write: list[bool] | None = None  # per-slot: overwrite the cache in the current mixed forward

    def keep_only(self, slots) -> None:
        """Store only these branch slots (the ones a schedule reuses)."""
        keep = sorted(set(slots))
        self.slot_map = [None] * self.num_slots
        for j, slot in enumerate(keep):
            self.slot_map[slot] = j

    def store(self, slot: int, tensor: torch.Tensor) -> None:
        j = self.slot_map[slot]
        if j is None:
            return
        pool = self.pool
        if pool is None or pool.shape != tuple(tensor.shape) or pool.dtype != tensor.dtype or pool.device != tensor.device:
            if pool is not None and any(pool.is_written(i) for i in range(pool.num_slots)) and self.forced is None:
                raise RuntimeError(
                    f"harmonica: a branch output of shape {tuple(tensor.shape)} in a call whose cache holds "
                    f"{pool.shape}; cached features belong to one pipeline call"
                )
            size = 1 + max(i for i in self.slot_map if i is not None)
            self.pool = pool = CachePool(size, tensor.shape, tensor.dtype, tensor.device)
        pool.write(j, tensor)

    def load(self, slot: int) -> torch.Tensor | None:
        j = self.slot_map[slot]
        if j is None or self.pool is None or not self.pool.is_written(j):
            return None
        return self.pool.read(j)


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
            state.store(self.slot, out)
            return out
        cached = state.load(self.slot)
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
        cached = state.load(self.slot)
        if cached is None or cached.shape != fresh.shape:
            raise RuntimeError(f"harmonica: router-mixed forward of {self.name} without a filled cache")
        cached = cached.clone()  # autograd keeps it for the score's gradient; the pool slot may be rewritten
        score = state.mix[self.slot].to(fresh.dtype)
        out = score * fresh + (1 - score) * cached
        if state.write[self.slot]:
            state.store(self.slot, fresh.detach())
        return out


class BlockHook(ModelHook):
    """Replaces a run of fully reused blocks by one fused gather-apply of their cached branches."""

    def __init__(self, state: CacheState, index: int):
        super().__init__()
        self.state = state
        self.index = index
        self._params: list[str] = []

    def initialize_hook(self, module):
        self._params = list(inspect.signature(module.forward).parameters)
        return module

    def new_forward(self, module, *args, **kwargs):
        state = self.state
        entry = None if state.plan is None else state.plan[self.index]
        if entry is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        call = dict(zip(self._params, args))
        call.update(kwargs)
        hidden = call["hidden_states"]
        if entry is SKIP:
            return hidden
        blocks, slots = entry
        gates = []
        for block in blocks:
            gates.extend(spec_for(block).gates(block, hidden, call))
        indices = [state.slot_map[s] for s in slots]
        return gather_apply(hidden, state.pool, indices, gates, inplace=False)


class StepHook(ModelHook):
    """Maps the pipeline's timestep to its step index and sets that step's decisions."""

    def __init__(self, controller: "HarmoniCa"):
        super().__init__()
        self.controller = controller

    def new_forward(self, module, *args, **kwargs):
        ctl = self.controller
        state = ctl.state
        if not state.active:
            return self.fn_ref.original_forward(*args, **kwargs)
        step, num_steps = ctl.locate(args, kwargs)
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
            state.plan = ctl.plans[step]
        key = ctl.shape_key(args, kwargs)
        try:
            if new_call and key not in ctl.macs_table:
                state.counting_macs = [0] * state.num_slots
                out, total = count_macs(lambda: self.fn_ref.original_forward(*args, **kwargs))
                ctl.macs_table[key] = (total, state.counting_macs)
            else:
                out = self.fn_ref.original_forward(*args, **kwargs)
        finally:
            state.counting_macs = None
            state.plan = None
        ctl.account_step(key, state.compute_now)
        if step == num_steps - 1:
            ctl.end_call()
        return out

    def _forced_forward(self, step: int, args, kwargs):
        """A forward whose mode the router trainer chose ("fill" or "mix"); no statistics are kept."""
        ctl, state = self.controller, self.controller.state
        state.step = step
        state.compute_now = [True] * state.num_slots
        state.slot_map = list(range(state.num_slots))  # training may read any branch
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

    def __init__(self, pipe, router: HarmoniCaRouter, threshold: float | None, fused: bool = True):
        self.router = router.validate()
        self.fused = bool(fused)
        self.threshold = router.threshold if threshold is None else check_threshold(threshold)
        self._pipe = weakref.ref(pipe)
        self.transformer = pipe.transformer
        self.layout = describe(pipe)
        router.check_compatible(self.layout)
        router.check_weights(pipe.transformer)
        mask = router.compute_mask(self.threshold)
        self.set_schedule([row.flatten().tolist() for row in mask])  # [step][block * branches + branch]
        self.state = CacheState(router.num_blocks, len(router.branches))
        self.macs_table: dict[tuple, tuple[int, list[int]]] = {}
        self.last_stats: CacheStats | None = None
        self.locate = StepLocator(pipe, self.transformer, hint=" (use `with harmonica.paused(pipe):` to call the "
                                  "transformer directly)")
        self._restore: list[tuple[torch.nn.Module, bool, bool]] = []

    def set_schedule(self, schedule: list[list[bool]]) -> None:
        """Install a [step][slot] compute schedule and derive the fused block plans and kept slots."""
        self.schedule = schedule
        k = len(self.router.branches)
        blocks = transformer_blocks(self.transformer)
        can_fuse = [self.fused and fusable(b) for b in blocks]
        self.reused_slots = sorted({s for row in schedule[1:] for s, c in enumerate(row) if not c})
        self.plans = []
        for step, row in enumerate(schedule):
            reused = [step > 0 and can_fuse[b] and not any(row[b * k:(b + 1) * k]) for b in range(len(blocks))]
            plan, b = [None] * len(blocks), 0
            while b < len(blocks):
                if not reused[b]:
                    b += 1
                    continue
                end = b
                while end + 1 < len(blocks) and reused[end + 1]:
                    end += 1
                plan[b] = (blocks[b:end + 1], list(range(b * k, (end + 1) * k)))
                for j in range(b + 1, end + 1):
                    plan[j] = SKIP
                b = end + 1
            self.plans.append(plan if any(p is not None for p in plan) else None)

    # ------------------------------------------------------------------ hooks in and out
    def attach(self) -> None:
        blocks = transformer_blocks(self.transformer) if self.fused else []
        modules = [self.transformer] + blocks + [m for row in branch_modules(self.transformer) for m in row]
        for m in modules:
            self._restore.append((m, "_diffusers_hook" in m.__dict__, "forward" in m.__dict__))
        names = self.router.branches
        for b, row in enumerate(branch_modules(self.transformer)):
            for k, module in enumerate(row):
                registry = HookRegistry.check_if_exists_or_initialize(module)
                hook = BranchHook(self.state, b * len(names) + k, f"block {b} {names[k]}")
                registry.register_hook(hook, BRANCH_HOOK)
        for b, block in enumerate(blocks):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(BlockHook(self.state, b), BLOCK_HOOK)
        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        registry.register_hook(StepHook(self), STEP_HOOK)
        registry.invalidate_child_registries_cache()

    def detach(self) -> None:
        self.state.reset()
        for module, had_registry, had_forward in self._restore:
            registry = module.__dict__.get("_diffusers_hook")
            if registry is None:
                continue
            for name in (STEP_HOOK, BRANCH_HOOK, BLOCK_HOOK):
                registry.remove_hook(name, recurse=False)
            if not registry.hooks:  # nothing else hooked here: restore the module's own attributes
                if not had_registry:
                    del module._diffusers_hook
                if not had_forward and "forward" in module.__dict__:
                    del module.forward
        self._restore.clear()

    # ------------------------------------------------------------------- per-step logic
    @contextmanager
    def isolated(self, schedule: list[list[bool]] | None = None):
        """Run pipeline calls (e.g. gradient-free sampling during training) without touching the cache
        state of the caller: features, step, statistics and schedule are restored afterwards.
        ``schedule`` ([step][slot] compute flags) replaces the router's schedule inside the block."""
        saved_state = self.state.__dict__.copy()  # the pool object itself is left alone inside
        saved_schedule, saved_last = self.schedule, self.last_stats
        self.state.reset()
        self.state.active = True
        if schedule is not None:
            self.set_schedule(schedule)
        try:
            yield self
        finally:
            self.state.__dict__.clear()
            self.state.__dict__.update(saved_state)
            if schedule is not None:
                self.set_schedule(saved_schedule)
            self.last_stats = saved_last

    def begin_call(self, num_steps: int) -> None:
        pipe = self._pipe()
        layout = describe(pipe)
        self.router.check_compatible(layout, num_steps)
        self.state.reset()
        self.state.keep_only(self.reused_slots)

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
        self.state.reset()  # frees the cache pool; the next call starts clean


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


def enable(pipe, router: HarmoniCaRouter, threshold: float | None = None, fused: bool = True):
    """Attach ``router`` to ``pipe`` (replacing a router already attached). Returns ``pipe``.

    ``fused=False`` applies reused branches one by one inside each block instead of replacing runs of
    fully reused blocks by the fused gather-apply (same results in fp32; for measuring the kernel).
    Every check runs before anything is attached: on error the pipeline is left as it was.
    """
    if not isinstance(router, HarmoniCaRouter):
        raise TypeError(f"router must be a HarmoniCaRouter, got {type(router).__name__}")
    controller = HarmoniCa(pipe, router, threshold, fused=fused)
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

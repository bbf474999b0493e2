"""The feature cache: diffusers ModelHooks that compute or reuse each branch as the router decides.

Three kinds of hook, on diffusers' own hook machinery (``diffusers.hooks.HookRegistry``), all
attached to the transformer's modules and sharing one controller (``HarmoniCa``) that lives with
them, not with any pipeline object:

* ``StepHook`` on the transformer finds the denoising step of each forward (``harmonica.steps``:
  from the pipeline's cache context, or from the timestep looked up in the scheduler of the pipeline
  whose call is running) and picks the call's cache state for this thread and cache context ("cond"
  / "uncond": pipelines with true CFG run two forwards per step, each with its own cache). The first
  forward of a call (or of a transformer within a call) fills the cache; the last frees it.
* ``BranchHook`` on every branch module either runs the module and stores its output, or returns
  the stored output without running the module. The block's own code then applies the current step's
  adaLN gate and the residual add, so what is cached is the un-gated branch output.
* ``BlockHook`` on every block the family can fuse: a run of consecutive blocks whose branches are
  all reused at a step is replaced by one ``stream + sum(gate * cached)`` per residual stream
  (``harmonica.kernels.gather_apply``: one fused Triton kernel on CUDA, the torch reference
  elsewhere), the gates computed as the blocks compute them (the family's ``Fused`` spec).

Cached outputs live in one ``CachePool`` per token stream and call, holding only the branches the
schedule ever reuses. Forwards are serialised by a lock, and each thread's call has its own state.

``enable(pipe, router)`` attaches the hooks and ``disable(pipe)`` removes them, leaving every module as
it was. ``stats(pipe)`` tells what the last call of that pipeline computed, reused and spent in
multiply-accumulates.
"""

from __future__ import annotations

import logging
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from .families import family_for, pipeline_transformers, transformer_blocks
from .families.spec import BlockInfo, bind_call
from .kernels import TORCH, CachePool, forecast, gather_apply
from .macs import count_macs
from .router import HarmoniCaRouter, RouterError, RouterLayout, check_threshold
from .steps import StepLocator, calling_pipeline

logger = logging.getLogger(__name__)

STEP_HOOK = "harmonica_step"
BRANCH_HOOK = "harmonica_branch"
BLOCK_HOOK = "harmonica_block"
SKIP = "skip"  # block plan entry: this block is covered by the fused run started before it


@dataclass
class CacheStats:
    """What one pipeline call did. ``cache_usage`` is the fraction of branch computations reused."""

    num_steps: int = 0
    forwards: int = 0
    branch_calls: int = 0
    reused: int = 0
    macs_full: int = 0
    macs_spent: int = 0
    reused_per_step: list[int] = field(default_factory=list)
    cache_bytes: int = 0  # the cache pools of the call (all transformers and cache contexts), allocated once

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
            f"({self.macs_speedup:.2f}x), cache {self.cache_bytes / 2**20:.1f} MiB"
        )


# ================================================================================ the plan
class Plan:
    """What a router's schedule means for one transformer, computed once at ``enable``.

    ``schedule[step][slot]``: compute (True) or rebuild from the cache. ``coefficients[step][slot]``:
    the forecast over the branch's last computed outputs (``(1.0,)``: reuse). ``entries``: for every
    branch output the schedule ever rebuilds, ``(slot, element) -> (stream, first index, depth)``: its
    last ``depth`` computed outputs live at ``first .. first + depth - 1`` of that stream's pool, most
    recent first.
    ``fused[step]``: per block, None (run it), SKIP (covered by an earlier block) or a fused run (the
    blocks it replaces); None for a step without fused runs.
    """

    def __init__(self, blocks: list[BlockInfo], schedule: list[list[bool]], coefficients, fused: bool):
        self.blocks = blocks
        self.schedule = schedule
        self.coefficients = coefficients
        self.num_slots = sum(len(b.branches) for b in blocks)
        depth = self._depths(schedule, coefficients)
        # slots whose every rebuild is plain reuse (coefficient exactly 1 on the last output): no arithmetic
        self.reuse_only = {slot for slot in depth if all(
            schedule[step][slot] or tuple(coefficients[step][slot][:1]) == (1.0,) and not any(coefficients[step][slot][1:])
            for step in range(1, len(schedule)))}
        self.table = torch.tensor(coefficients, dtype=torch.float32)  # [step, slot, history]
        self._tables: dict[str, torch.Tensor] = {}
        self.entries: dict[tuple[int, int], tuple[str, int, int]] = {}
        self.capacity: dict[str, int] = {}
        for block in blocks:
            for slot, branch in zip(block.slots, block.branches):
                if slot not in depth:
                    continue
                for element, stream in enumerate(branch.streams):
                    first = self.capacity.get(stream, 0)
                    self.entries[slot, element] = (stream, first, depth[slot])
                    self.capacity[stream] = first + depth[slot]
        self.block_level = [b.kind.whole_block or (fused and b.kind.fusable(b.module)) for b in blocks]
        self.fused = [self._runs(row) if step > 0 else None for step, row in enumerate(schedule)]

    @staticmethod
    def _depths(schedule, coefficients) -> dict[int, int]:
        """Per rebuilt slot: how many past outputs its forecasts use (trailing zero coefficients and
        history not computed yet are not kept)."""
        depth: dict[int, int] = {}
        computed = [1] * len(schedule[0])  # the first step computes everything
        for step in range(1, len(schedule)):
            for slot, compute in enumerate(schedule[step]):
                if compute:
                    computed[slot] += 1
                    continue
                used = [c != 0 for c in coefficients[step][slot][:computed[slot]]]
                need = max((k + 1 for k, nonzero in enumerate(used) if nonzero), default=1)
                depth[slot] = max(depth.get(slot, 1), need)
        return depth

    def step_coefficients(self, step: int, device) -> torch.Tensor:
        """The coefficient table of one step, ``[slot, history]`` fp32 on ``device`` (copied there once)."""
        key = str(device)
        if key not in self._tables:
            self._tables[key] = self.table.to(device)
        return self._tables[key][step]

    def history(self, state: "CacheState", slot: int, element: int) -> list[int]:
        """Pool indices of the branch output's kept history in ``state``, most recent first."""
        _, first, depth = self.entries[slot, element]
        return list(range(first, first + state.kept.get((slot, element), 0)))

    def _runs(self, row: list[bool]):
        blocks = self.blocks
        reused = [self.block_level[b.index] and not any(row[s] for s in b.slots) for b in blocks]
        plan, i = [None] * len(blocks), 0
        while i < len(blocks):
            if not reused[i]:
                i += 1
                continue
            end = i
            while (end + 1 < len(blocks) and reused[end + 1] and blocks[end + 1].kind is blocks[i].kind
                   and blocks[end + 1].list_name == blocks[i].list_name):
                end += 1
            plan[i] = blocks[i:end + 1]
            for j in range(i + 1, end + 1):
                plan[j] = SKIP
            i = end + 1
        return plan if any(p is not None for p in plan) else None


# =========================================================================== per-call state
class CacheState:
    """The cache of one pipeline call, one cache context and one transformer."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.step: int | None = None
        self.pools: dict[str, CachePool] = {}
        self.kept: dict[tuple[int, int], int] = {}  # outputs kept per entry (at most its depth)

    def store(self, slot: int, element: int, tensor: torch.Tensor) -> None:
        where = self.plan.entries.get((slot, element))
        if where is None:
            return
        stream, first, depth = where
        pool = self.pools.get(stream)
        if pool is None:
            pool = self.pools[stream] = CachePool(self.plan.capacity[stream], tensor.shape, tensor.dtype, tensor.device)
        elif pool.shape != tuple(tensor.shape) or pool.dtype != tensor.dtype:
            raise RuntimeError(
                f"harmonica: a branch output of shape {tuple(tensor.shape)} on the {stream!r} stream, whose cache holds "
                f"{pool.shape}; cached features belong to one pipeline call and one input shape"
            )
        pool.push(first, depth, tensor)
        self.kept[slot, element] = min(self.kept.get((slot, element), 0) + 1, depth)

    def terms(self, slot: int, element: int, coefficients) -> tuple[list[int], object]:
        """Pool indices (most recent first) of a rebuilt branch output at this step and its forecast
        coefficients (None: plain reuse of the last output). ``coefficients``: the step's
        ``[slot, history]`` table, a device tensor (compiled code: a graph input, so one graph serves
        every step) or nested tuples of floats (eager: the fused kernel's tables)."""
        history = self.plan.history(self, slot, element)
        if slot in self.plan.reuse_only:
            return history[:1], None
        return history, coefficients[slot][:len(history)]

    def rebuild(self, slot: int, element: int, coefficients) -> torch.Tensor | None:
        if (slot, element) not in self.plan.entries:
            return None
        history, coefs = self.terms(slot, element, coefficients)
        if not history:
            return None
        pool = self.pools[self.plan.entries[slot, element][0]]
        return forecast([pool.read(i) for i in history], coefs)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pools.values())


class CallRecord:
    """One pipeline call of one thread: its cache states (per transformer and cache context) and stats."""

    def __init__(self, pipeline):
        self.pipeline = None if pipeline is None else weakref.ref(pipeline)
        self.states: dict[tuple[int, str], CacheState] = {}
        self.finished: set[tuple[int, str]] = set()
        self.stats = CacheStats()

    def belongs_to(self, pipeline) -> bool:
        return (self.pipeline() if self.pipeline is not None else None) is pipeline


@dataclass
class Forward:
    """What the hooks of the forward in progress read (its state and decisions), and where it is."""

    state: CacheState
    compute: list[bool]
    fused: list | None
    counting: list[int] | None  # MACs per slot, while a new input shape is measured
    coefficient_values: list | None  # the step's forecast coefficients, [slot] -> floats
    coefficient_table: torch.Tensor | None  # the same as a [slot, history] tensor on the model's device
    position: object
    key: tuple[int, str]
    record: CallRecord
    shape: tuple

    def coefficients(self):
        """Tensors when compiling (graph inputs, no per-step constants), floats otherwise."""
        if torch.compiler.is_compiling():
            return self.coefficient_table
        return self.coefficient_values


class _ContextState(BaseState):
    def reset(self):
        pass


# ================================================================================== hooks
class BranchHook(ModelHook):
    """Compute a branch and keep its output, or return the kept output without running the branch."""

    def __init__(self, controller: "HarmoniCa", slot: int, name: str, elements: int):
        super().__init__()
        self.controller = controller
        self.slot = slot
        self.name = name
        self.elements = elements

    def new_forward(self, module, *args, **kwargs):
        current = self.controller.current
        if current is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        state = current.state
        if current.compute[self.slot]:
            if current.counting is not None:
                out, macs = count_macs(lambda: self.fn_ref.original_forward(*args, **kwargs))
                current.counting[self.slot] += macs
            else:
                out = self.fn_ref.original_forward(*args, **kwargs)
            parts = out if isinstance(out, tuple) else (out,)
            if len(parts) != self.elements:
                raise RuntimeError(f"harmonica: {self.name} returned {len(parts)} tensors, its family spec names "
                                   f"{self.elements} (an IP adapter or another processor changes its outputs?)")
            for element, tensor in enumerate(parts):
                if tensor is not None:
                    state.store(self.slot, element, tensor)
            return out
        coefficients = current.coefficients()
        cached = [state.rebuild(self.slot, element, coefficients) for element in range(self.elements)]
        if any(c is None for c in cached):
            raise RuntimeError(
                f"harmonica: no cached output for {self.name} at step {state.step}. Cached features belong to one "
                "pipeline call; call the transformer through the pipeline's denoising loop."
            )
        return tuple(cached) if self.elements > 1 else cached[0]


class BlockHook(ModelHook):
    """Replaces a run of fully reused blocks by one gather-apply of their cached branches per stream."""

    def __init__(self, controller: "HarmoniCa", info: BlockInfo):
        super().__init__()
        self.controller = controller
        self.info = info

    def new_forward(self, module, *args, **kwargs):
        current = self.controller.current
        entry = None if current is None or current.fused is None else current.fused[self.info.index]
        if entry is None:
            if current is not None and current.counting is not None and self.info.kind.whole_block:
                out, macs = count_macs(lambda: self.fn_ref.original_forward(*args, **kwargs))
                # the whole block; its branch's BranchHook, nested inside, counted part of it already
                current.counting[self.info.first_slot] = macs
                return out
            return self.fn_ref.original_forward(*args, **kwargs)
        fused = self.info.kind.fused
        call = bind_call(module, args, kwargs)
        if entry is SKIP:
            return fused.output(call, fused.streams(call))
        state = current.state
        step_coefficients = current.coefficients()
        streams = fused.streams(call)
        runs: dict[str, tuple[list, list, list]] = {name: ([], [], []) for name in streams}
        for block in entry:
            gates = block.kind.fused.gates(block.module, call)
            position = 0
            for slot, branch in zip(block.slots, block.branches):
                for element, stream in enumerate(branch.streams):
                    indices, coefficients, stream_gates = runs[stream]
                    history, coefs = state.terms(slot, element, step_coefficients)
                    indices.append(history)
                    coefficients.append(coefs)
                    stream_gates.append(gates[position])
                    position += 1
        implementation = None if self.controller.fused else TORCH
        updated = {
            name: gather_apply(streams[name], state.pools[name], indices, stream_gates, coefficients=coefficients,
                               inplace=False, implementation=implementation) if indices else streams[name]
            for name, (indices, coefficients, stream_gates) in runs.items()
        }
        return fused.output(call, updated)


class StepHook(ModelHook):
    """Finds each forward's step, picks its cache state and decisions, and keeps the call's statistics."""

    _is_stateful = True  # receives diffusers' cache context ("cond" / "uncond") and end-of-call resets

    def __init__(self, controller: "HarmoniCa", transformer_index: int):
        super().__init__()
        self.controller = controller
        self.transformer_index = transformer_index
        self.context = StateManager(_ContextState)

    def reset_state(self, module):  # pipelines of CacheMixin models call this when a call ends
        self.controller.end_thread_call()
        return module

    @torch.compiler.disable(recursive=False)  # this frame runs eagerly; the model forward it calls compiles
    def new_forward(self, module, *args, **kwargs):
        ctl = self.controller
        if not ctl.active:
            return self.fn_ref.original_forward(*args, **kwargs)
        forward = ctl.enter(self, module, args, kwargs)
        try:
            if forward.counting is not None:
                out = ctl.counted(forward, self.fn_ref.original_forward, args, kwargs)
            else:
                out = self.fn_ref.original_forward(*args, **kwargs)
            ctl.end_forward(forward)
        finally:
            ctl.leave()
        return out


# ============================================================================= controller
class HarmoniCa:
    """The controller behind the hooks of one pipeline's transformer(s): router, plan and call states."""

    def __init__(self, pipe, router: HarmoniCaRouter, threshold: float | None, fused: bool = True):
        self.family = family_for(pipe)
        self.router = router.validate()
        self.fused = bool(fused)
        self.threshold = router.threshold if threshold is None else check_threshold(threshold)
        self.layout = describe(pipe)
        router.check_compatible(self.layout)
        self.transformers = [t for _, t in pipeline_transformers(pipe, self.family)]
        for transformer in self.transformers:
            router.check_weights(transformer)
        self.blocks = [transformer_blocks(self.family, t) for t in self.transformers]
        self.locators = [StepLocator(self.family, t) for t in self.transformers]
        self.set_schedule(router.schedule(self.threshold))
        self.active = True
        self.current: Forward | None = None
        self.lock = threading.RLock()
        self.records: dict[int, CallRecord] = {}
        self.macs_table: dict[tuple, tuple[int, list[int]]] = {}
        self.last_stats: CacheStats | None = None
        self._stats_by_pipeline: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._restore: list[tuple[torch.nn.Module, bool, bool]] = []

    def set_schedule(self, schedule: list[list[bool]]) -> None:
        """Install a ``[step][slot]`` compute schedule and derive the plans (kept branches, fused runs)."""
        self.schedule = schedule
        coefficients = self.router.forecast_table()
        self.plans = [Plan(blocks, schedule, coefficients, self.fused) for blocks in self.blocks]

    def __deepcopy__(self, memo):
        raise RuntimeError(
            "harmonica: cannot deep-copy a pipeline or transformer with harmonica enabled (its hooks hold the cache "
            "of running calls). Call harmonica.disable(pipe), copy, then harmonica.enable(...) on each."
        )

    # ------------------------------------------------------------------ hooks in and out
    def attach(self) -> None:
        modules = []
        for transformer, blocks in zip(self.transformers, self.blocks):
            modules.append(transformer)
            modules.extend(b.module for b in blocks)
            modules.extend(m for b in blocks for m in b.modules)
        for m in modules:
            self._restore.append((m, "_diffusers_hook" in m.__dict__, "forward" in m.__dict__))
        for t_index, (transformer, blocks, plan) in enumerate(zip(self.transformers, self.blocks, self.plans)):
            for block in blocks:
                for slot, branch, module in zip(block.slots, block.branches, block.modules):
                    name = f"{block.list_name}[{block.index}].{branch.name}"
                    hook = BranchHook(self, slot, name, branch.elements)
                    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, BRANCH_HOOK)
                if plan.block_level[block.index]:
                    registry = HookRegistry.check_if_exists_or_initialize(block.module)
                    registry.register_hook(BlockHook(self, block), BLOCK_HOOK)
            registry = HookRegistry.check_if_exists_or_initialize(transformer)
            registry.register_hook(StepHook(self, t_index), STEP_HOOK)
            registry.invalidate_child_registries_cache()

    def detach(self) -> None:
        self.records.clear()
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

    # ------------------------------------------------------------------- per-forward logic
    # These run eagerly under torch.compile (compiler-disabled): the compiled graphs hold only the
    # model's own computation, the cache reads and writes and the fused applies.
    @torch.compiler.disable
    def enter(self, hook: StepHook, module, args, kwargs) -> Forward:
        """Take the lock, find the forward's step and state, and publish its decisions to the hooks."""
        self.lock.acquire()
        try:
            self.current = self.begin_forward(hook, module, args, kwargs)
        except BaseException:
            self.lock.release()
            raise
        return self.current

    @torch.compiler.disable
    def leave(self) -> None:
        self.current = None
        self.lock.release()

    @torch.compiler.disable
    def counted(self, forward: Forward, original, args, kwargs):
        """Run a forward while measuring its MACs, in total and per branch slot (new input shapes). It runs
        eagerly: the counting dispatch mode cannot run compiled code (regional fullgraph blocks refuse it)."""
        with torch.compiler.set_stance("force_eager"):
            out, total = count_macs(lambda: original(*args, **kwargs))
        self.macs_table[forward.shape] = (total, forward.counting)
        return out

    def begin_forward(self, hook: StepHook, module, args, kwargs) -> Forward:
        t_index = hook.transformer_index
        context = hook.context._context
        position = self.locators[t_index].locate(bind_call(module, args, kwargs), context, calling_pipeline())
        key = (t_index, context.name if context is not None else "")
        thread = threading.get_ident()
        record = self.records.get(thread)
        state = None if record is None else record.states.get(key)
        new_call = (record is None or not record.belongs_to(position.pipeline) or key in record.finished
                    or (state is not None and position.step <= state.step))
        if new_call:
            self.router.check_compatible(self.layout, position.num_steps)
            if position.timesteps is not None:
                self.router.check_timesteps(position.timesteps)
            record = self.records[thread] = CallRecord(position.pipeline)
            state = None
        if state is None:
            for other in [k for k in record.states if k[1] == key[1] and k[0] != t_index]:
                record.states.pop(other)  # the pipeline switched experts (Wan 2.2): the other cache is done
            state = record.states[key] = CacheState(self.plans[t_index])
        fill = state.step is None  # a state's first forward computes everything and fills the cache
        state.step = position.step
        plan = state.plan
        compute = [True] * plan.num_slots if fill else plan.schedule[position.step]
        shape = self.shape_key(t_index, args, kwargs)
        counting = [0] * plan.num_slots if shape not in self.macs_table and fill else None
        values = None if fill else plan.coefficients[position.step]
        table = None if fill else plan.step_coefficients(position.step, self._device(t_index))
        return Forward(state, compute, None if fill else plan.fused[position.step], counting, values, table, position,
                       key, record, shape)

    @torch.compiler.disable
    def end_forward(self, forward: Forward) -> None:
        record, position = forward.record, forward.position
        total, per_slot = self.macs_table.get(forward.shape, (0, [0] * len(forward.compute)))
        reused = [s for s, c in enumerate(forward.compute) if not c]
        st = record.stats
        st.forwards += 1
        st.num_steps = max(st.num_steps, position.step + 1)
        st.branch_calls += len(forward.compute)
        st.reused += len(reused)
        while len(st.reused_per_step) <= position.step:
            st.reused_per_step.append(0)
        st.reused_per_step[position.step] += len(reused)
        st.macs_full += total
        st.macs_spent += total - sum(per_slot[s] for s in reused)
        if position.step == position.num_steps - 1:
            finished = record.states.pop(forward.key, None)  # frees this context's cache
            st.cache_bytes += finished.nbytes if finished is not None else 0
            record.finished.add(forward.key)
            if not record.states:
                self.finish(record)

    def finish(self, record: CallRecord) -> None:
        self.last_stats = record.stats
        pipeline = record.pipeline() if record.pipeline is not None else None
        if pipeline is not None:
            self._stats_by_pipeline[pipeline] = record.stats
        for thread, r in list(self.records.items()):
            if r is record:
                del self.records[thread]

    def end_thread_call(self) -> None:
        """The pipeline's call ended (diffusers resets stateful hooks then): free this thread's cache."""
        with self.lock:
            record = self.records.pop(threading.get_ident(), None)
            if record is not None and record.finished and not record.states:
                self.finish(record)

    def _device(self, t_index: int) -> torch.device:
        return next(self.transformers[t_index].parameters()).device

    @staticmethod
    def shape_key(t_index: int, args, kwargs) -> tuple:
        shapes = [tuple(a.shape) for a in list(args) + list(kwargs.values()) if torch.is_tensor(a)]
        return (t_index, *shapes)

    def stats_for(self, pipe) -> CacheStats | None:
        return self._stats_by_pipeline.get(pipe)

    def states(self) -> list[CacheState]:
        """Cache states of calls in flight (all threads)."""
        return [s for r in self.records.values() for s in r.states.values()]


# ------------------------------------------------------------------------------ public API
def describe(pipe) -> RouterLayout:
    """The layout a router must have to serve ``pipe`` (raises if the pipeline is not supported)."""
    family = family_for(pipe)
    transformers = pipeline_transformers(pipe, family)
    layouts = []
    for _, transformer in transformers:
        blocks = transformer_blocks(family, transformer)
        layouts.append(RouterLayout(
            blocks=tuple((b.list_name, tuple(br.name for br in b.branches)) for b in blocks),
            pipeline_class=type(pipe).__name__,
            transformer_class=type(transformer).__name__,
            scheduler_class=type(pipe.scheduler).__name__,
        ))
    if any(layout != layouts[0] for layout in layouts[1:]):
        names = ", ".join(name for name, _ in transformers)
        raise RouterError(f"the transformers of this pipeline ({names}) have different blocks; one router cannot "
                          "serve both")
    return layouts[0]


def controller(pipe) -> HarmoniCa | None:
    """The harmonica controller on ``pipe``'s transformers (None when harmonica is not enabled there).

    The transformers are found as ``enable`` finds them (``pipeline_transformers``: every component the
    family names, ``transformer`` and ``transformer_2`` for Wan 2.2, each possibly None)."""
    try:
        transformers = pipeline_transformers(pipe, family_for(pipe))
    except ValueError:  # not a supported pipeline, or all its transformers are None
        return None
    for _, transformer in transformers:
        registry = transformer.__dict__.get("_diffusers_hook")
        hook = None if registry is None else registry.get_hook(STEP_HOOK)
        if hook is not None:
            return hook.controller
    return None


def enable(pipe, router: HarmoniCaRouter, threshold: float | None = None, fused: bool = True):
    """Attach ``router`` to ``pipe``'s transformer(s) (replacing a router already attached). Returns ``pipe``.

    The hooks live on the transformer: every pipeline sharing it (``from_pipe``, ``Pipeline(**components)``)
    runs with this router, each with its own scheduler. ``fused=False`` applies reused branches one by one
    (the torch reference wherever a block must be replaced as a whole), for measuring the kernel.
    Every check runs before anything is attached: on error the pipeline is left as it was.
    """
    if not isinstance(router, HarmoniCaRouter):
        raise TypeError(f"router must be a HarmoniCaRouter, got {type(router).__name__}")
    new = HarmoniCa(pipe, router, threshold, fused=fused)
    disable(pipe)
    new.attach()
    return pipe


def disable(pipe):
    """Remove harmonica from ``pipe``'s transformer(s): every module is left exactly as before ``enable``."""
    found = controller(pipe)
    if found is not None:
        found.detach()
    return pipe


def _require(pipe) -> HarmoniCa:
    found = controller(pipe)
    if found is None:
        raise RuntimeError("harmonica is not enabled on this pipeline (harmonica.enable(pipe, router))")
    return found


def stats(pipe) -> CacheStats | None:
    """Statistics of the last completed call of ``pipe`` (None before its first)."""
    return _require(pipe).stats_for(pipe)


@contextmanager
def paused(pipe):
    """Run the transformer without harmonica (no cache reads or writes) inside the block."""
    found = controller(pipe)
    if found is None:
        yield pipe
        return
    previous = found.active
    found.active = False
    try:
        yield pipe
    finally:
        found.active = previous

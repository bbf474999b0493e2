"""The controller behind the hooks of one pipeline's transformer(s): router, plans and the states of calls."""

from __future__ import annotations

import dataclasses
import threading
import warnings
import weakref
from typing import TYPE_CHECKING

import torch
from diffusers.hooks import HookRegistry

from ..families import family_for, pipeline_transformers, transformer_blocks
from ..families.spec import bind_call
from ..macs import count_macs
from ..router import HarmoniCaRouter, NoiseLevelRouter, RouterError, check_threshold, lora_adapters
from ..steps import StepLocator, calling_pipeline
from .coexist import check_no_diffusers_cache
from .hooks import (BLOCK_HOOK, BRANCH_HOOK, STEP_HOOK, UNIT_HOOK, BlockHook, BranchHook, StepHook, UnitHook,
                    remove_hook)
from .layout import describe
from .memory import CacheMemoryError, check_budget, check_cache_device, check_cache_dtype, output_shapes, parse_bytes
from .plan import Plan
from .state import CacheState, CallRecord, Forward
from .stats import CacheStats

if TYPE_CHECKING:
    from .drive import Drive


class HarmoniCa:
    """The controller behind the hooks of one pipeline's transformer(s): router, plan and call states."""

    def __init__(self, pipe, router: HarmoniCaRouter | NoiseLevelRouter, threshold: float | None, fused: bool = True,
                 keep: int | None = None, speedup: float | None = None, max_cache_memory: int | str | None = None,
                 cache_dtype: torch.dtype | None = None, cache_device: str | torch.device | None = None):
        """``keep``: keep every branch's last ``keep`` outputs and run the forwards router training drives
        (``harmonica.cache.drive``) instead of following the router's schedule. ``speedup``: a noise-level
        router's transformer-MACs target for every call (instead of its threshold). ``max_cache_memory``: the
        most a call's cache may hold per cache context (bytes or e.g. "4GB"), checked before its first block
        runs. ``cache_dtype``: the dtype the history is kept in (None: the branch outputs' own). ``cache_device``:
        where it is kept ("cpu": host memory, pinned when the model is on a GPU; None: with the model)."""
        self.family = family_for(pipe)
        self.keep = keep
        self.router = router.validate()
        self.per_call = isinstance(router, NoiseLevelRouter)  # its schedule is resolved at each call's timesteps
        if speedup is not None and not self.per_call:
            raise RouterError("a speedup target needs a noise-level router (NoiseLevelRouter); a step router's speed "
                              "is set by its threshold")
        self.speedup = speedup
        self.fused = bool(fused)
        self.max_cache_memory = None if max_cache_memory is None else parse_bytes(max_cache_memory)
        self.cache_dtype = check_cache_dtype(cache_dtype)
        self.cache_device = check_cache_device(cache_device)
        self.output_shapes: dict[tuple, dict] = {}  # per input shape: the branch outputs' shapes (budget checks)
        self.threshold = router.threshold if threshold is None else check_threshold(threshold)
        self.layout = describe(pipe)
        if router.layout.units and router.layout.num_blocks == self.layout.num_blocks:
            self.layout = describe(pipe, router.layout.units)  # the router's granularity, if the family allows it
        router.check_compatible(self.layout)
        self.named_transformers = pipeline_transformers(pipe, self.family)
        check_no_diffusers_cache(self.named_transformers, enabling=True)
        self.transformers = [t for _, t in self.named_transformers]
        for name, transformer in self.named_transformers:
            router.check_weights(transformer, name)
        self.adapters = [lora_adapters(t) for t in self.transformers]  # peft LoRA adapters (follow_module_changes)
        self.blocks = [transformer_blocks(self.family, t) for t in self.transformers]
        self.locators = [StepLocator(self.family, t) for t in self.transformers]
        self.block_level = [Plan.block_levels(blocks, self.fused) for blocks in self.blocks]
        self.call_plans: dict[tuple, Plan] = {}
        self.warned: set[int] = set()
        if not self.per_call:
            self.set_schedule(router.schedule(self.threshold))
        elif keep is not None:  # driven by router training: the plan keeps every branch, whatever the schedule
            self.plans = [self.keeping_plan(t_index, keep) for t_index in range(len(self.blocks))]
        self.active = True
        self.drive: Drive | None = None  # set by router training for the forwards it drives
        self.driven_states: dict[tuple[int, str], CacheState] = {}
        self.took_over = False  # a driven forward filled a cache another transformer's forwards had left
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
        self.plans = [Plan(blocks, schedule, coefficients, self.fused, self.keep, units=self.layout.units)
                      for blocks in self.blocks]

    def __repr__(self) -> str:
        router = self.router
        own = "the router's" if self.threshold == router.threshold else f"the router's is {router.threshold:.4g}"
        if self.per_call:
            lo, hi = router.step_range
            serves = f"noise-level, {lo}-{hi} steps, {', '.join(router.schedulers) or 'any scheduler'}"
            speed = (f"speedup={self.speedup:g}x per call" if self.speedup is not None else
                     f"threshold={self.threshold:.4g} ({own})")
        else:
            serves = f"{router.num_steps} steps"
            speed = (f"threshold={self.threshold:.4g} ({own}), cache usage "
                     f"{router.cache_usage(self.threshold):.1%}")
        return (f"HarmoniCa(family={self.family.name!r}, router=<{serves}, blocks [{router.layout.describe_blocks()}], "
                f"history {router.history}>, {speed}, fused={'on' if self.fused else 'off'}"
                f"{'' if self.active else ', paused'})")

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
        for t_index, (transformer, blocks, block_level) in enumerate(zip(self.transformers, self.blocks,
                                                                         self.block_level)):
            for slot, (first, last) in enumerate(self.layout.units):  # coarse units: hooks on their blocks only
                for block in blocks[first:last + 1]:
                    registry = HookRegistry.check_if_exists_or_initialize(block.module)
                    registry.register_hook(UnitHook(self, block, slot, first, last), UNIT_HOOK)
            for block in blocks if not self.layout.units else ():
                for slot, branch, module in zip(block.slots, block.branches, block.modules):
                    name = f"{block.list_name}[{block.index}].{branch.name}"
                    hook = BranchHook(self, slot, name, branch.elements)
                    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, BRANCH_HOOK)
                if block_level[block.index]:
                    registry = HookRegistry.check_if_exists_or_initialize(block.module)
                    registry.register_hook(BlockHook(self, block), BLOCK_HOOK)
            registry = HookRegistry.check_if_exists_or_initialize(transformer)
            registry.register_hook(StepHook(self, t_index), STEP_HOOK)
            registry.invalidate_child_registries_cache()

    def detach(self) -> None:
        self.records.clear()
        for entry in self._restore:
            self._unhook(*entry)
        self._restore.clear()

    @staticmethod
    def _unhook(module, had_registry: bool, had_forward: bool) -> None:
        registry = module.__dict__.get("_diffusers_hook")
        if registry is None:
            return
        for name in (STEP_HOOK, BRANCH_HOOK, BLOCK_HOOK, UNIT_HOOK):
            remove_hook(registry, name)
        if not registry.hooks:  # nothing else hooked here: restore the module's own attributes
            if not had_registry:
                del module._diffusers_hook
            if not had_forward and "forward" in module.__dict__:
                del module.forward

    def follow_module_changes(self) -> None:
        """At a call's first forward: follow what changed in the transformers since ``enable``. A LoRA loaded or
        unloaded (peft wraps the layers it targets, Flux's single-block ``proj_out`` branch among them) replaces a
        branch module: its hook moves to the module now there, or a reused branch would drop the LoRA's part.
        LoRA adapters loaded, fused or unloaded re-run the router's weights check (it names them)."""
        for t_index, (name, transformer) in enumerate(self.named_transformers):
            adapters = lora_adapters(transformer)
            if adapters != self.adapters[t_index]:
                self.adapters[t_index] = adapters
                self.router.check_weights(transformer, name)
        for block in (b for blocks in self.blocks for b in blocks if not self.layout.units):  # units hook no branch
            for i, (slot, branch, module) in enumerate(zip(block.slots, block.branches, block.modules)):
                now = branch.resolve(block.module)
                if now is module:
                    continue
                entry = next(e for e in self._restore if e[0] is module)
                self._restore.remove(entry)
                self._unhook(*entry)
                self._restore.append((now, "_diffusers_hook" in now.__dict__, "forward" in now.__dict__))
                hook = BranchHook(self, slot, f"{block.list_name}[{block.index}].{branch.name}", branch.elements)
                HookRegistry.check_if_exists_or_initialize(now).register_hook(hook, BRANCH_HOOK)
                block.modules[i] = now

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
        if self.drive is not None:
            return self.driven_forward(hook)
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
            check_no_diffusers_cache(self.named_transformers, enabling=False)  # applied after enable
            self.follow_module_changes()
            self.check_call(position)
            record = self.records[thread] = CallRecord(position.pipeline)
            state = None
        shape = self.shape_key(t_index, args, kwargs)
        if state is None:
            plan = self.plan_for(t_index, position, shape)
            try:
                self.check_memory(plan, shape, module, args, kwargs)
            except CacheMemoryError:
                if not record.states:
                    self.records.pop(thread, None)  # nothing ran: the next call starts afresh
                raise
            for other in [k for k in record.states if k[1] == key[1] and k[0] != t_index]:
                record.states.pop(other)  # the pipeline switched experts (Wan 2.2): the other cache is done
            state = record.states[key] = CacheState(plan, self.cache_dtype, self.cache_device)
        fill = state.step is None  # a state's first forward computes everything and fills the cache
        state.step = position.step
        plan = state.plan
        compute = [True] * plan.num_slots if fill else plan.schedule[position.step]
        counting = [0] * plan.num_slots if shape not in self.macs_table and fill else None
        values = None if fill else plan.coefficients[position.step]
        table = None if fill else plan.step_coefficients(position.step, self._device(t_index))
        return Forward(state, compute, None if fill else plan.fused[position.step], counting, values, table, position,
                       key, record, shape)

    def check_memory(self, plan: Plan, shape: tuple, module=None, args=(), kwargs=None) -> None:
        """With a ``max_cache_memory``: raise CacheMemoryError when ``plan``'s pools at this input shape would exceed
        it. The outputs' shapes come once per input shape from a meta-device forward with the transformer
        ``module``'s arguments (the first forward of that shape gives them)."""
        if self.max_cache_memory is None:
            return
        if shape not in self.output_shapes:
            self.output_shapes[shape] = output_shapes(self.family, module, args, kwargs, units=self.layout.units)
        check_budget(plan, self.output_shapes[shape], self.max_cache_memory, self.cache_dtype)

    def check_call(self, position) -> None:
        """At a call's first forward: the router against the call's scheduler (swapped after enable too), its
        step count and timesteps."""
        scheduler = getattr(position.pipeline, "scheduler", None)
        if self.per_call:
            if scheduler is not None:
                warning = self.router.check_call(scheduler, position.num_steps)
                if warning and position.num_steps not in self.warned:
                    self.warned.add(position.num_steps)
                    warnings.warn(warning, stacklevel=2)
            return
        self.router.check_compatible(self.layout, position.num_steps)
        if scheduler is not None and self.router.scheduler_class:
            self.router.check_compatible(dataclasses.replace(self.layout, scheduler_class=type(scheduler).__name__))
        if position.timesteps is not None:
            self.router.check_timesteps(position.timesteps)

    def keeping_plan(self, t_index: int, keep: int, pending: tuple | None = None) -> Plan:
        """A plan that keeps every branch's last ``keep`` outputs whatever the schedule (no schedule of its own)."""
        return Plan.keeping(self.blocks[t_index], keep, self.fused, pending, self.layout.units)

    def plan_for(self, t_index: int, position, shape: tuple) -> Plan:
        """The plan of a new call's cache state: the enable-time plan of a step router; a noise-level router's
        schedule resolved at the call's timesteps (and, with a speedup, the branches' MACs at this input
        shape: the first call of a shape keeps one output of every branch until its first forward has
        measured them, see ``replan``)."""
        if not self.per_call:
            return self.plans[t_index]
        timesteps = position.timesteps
        if timesteps is None:  # the step came from the pipeline's cache context (Wan)
            if position.pipeline is None:
                raise RouterError("a noise-level router needs the call's timesteps, which come from the running "
                                  "pipeline's scheduler: call the transformer through the pipeline")
            timesteps = tuple(float(t) for t in position.pipeline.scheduler.timesteps)
        macs = None
        if self.speedup is not None:
            macs = self.macs_table.get(shape)
            if macs is None:
                return self.keeping_plan(t_index, 1, pending=timesteps)
        key = (t_index, timesteps, None if macs is None else shape)
        if key not in self.call_plans:
            total, per_slot = macs if macs is not None else (0, None)
            resolution = self.router.resolve(timesteps, self.threshold, self.speedup, per_slot,
                                             total - sum(per_slot or ()))
            if len(self.call_plans) >= 64:
                self.call_plans.clear()
            self.call_plans[key] = Plan(self.blocks[t_index], resolution.schedule, resolution.coefficients,
                                        self.fused, units=self.layout.units)
        return self.call_plans[key]

    def driven_forward(self, hook: StepHook) -> Forward:
        """A forward router training drives: its step and mode are given; one cache per cache context and
        transformer. A "fill" starts that cache afresh (a trajectory's first step, LTC's clean pass: nothing of an
        earlier trajectory is kept, whatever its shapes). A transformer's first forward since another one ran in
        the context (Wan 2.2 A14B's expert taking over) fills its own cache, whatever the mode, as inference does;
        ``took_over`` records it."""
        drive, context = self.drive, hook.context._context
        t_index = hook.transformer_index
        key = (t_index, context.name if context is not None else "")
        state = self.driven_states.get(key)
        if state is None or drive.mode == "fill":
            if state is None and drive.mode != "fill":
                self.took_over = True
                drive = dataclasses.replace(drive, mode="fill")
            for other in [k for k in self.driven_states if k[1] == key[1] and k[0] != t_index]:
                self.driven_states.pop(other)  # the other expert's cache is done
            state = self.driven_states[key] = CacheState(self.plans[t_index], self.cache_dtype,
                                                         self.cache_device)
        state.step = drive.step
        compute = drive.compute if drive.mode == "hard" else [True] * state.plan.num_slots
        return Forward(state, compute, None, None, None, drive.coefficients, None, key, None, None, drive)

    @torch.compiler.disable
    def end_forward(self, forward: Forward) -> None:
        record, position = forward.record, forward.position
        pending = forward.state.plan.pending
        if pending is not None:  # the first call of this shape: its branches' MACs are measured now
            plan = self.plan_for(forward.key[0], dataclasses.replace(position, timesteps=pending), forward.shape)
            self.check_memory(plan, forward.shape)  # its shapes were taken at this call's first forward
            forward.state.replan(plan)
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

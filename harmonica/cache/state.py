"""Per-call state: the cache of one call, cache context and transformer, and what the hooks of a forward read."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from diffusers.hooks.hooks import BaseState

from ..kernels import CachePool, forecast
from .plan import Plan
from .stats import CacheStats

if TYPE_CHECKING:
    from .drive import Drive, Region


class CacheState:
    """The cache of one pipeline call, one cache context and one transformer."""

    def __init__(self, plan: Plan, cache_dtype: torch.dtype | None = None, cache_device: torch.device | None = None):
        self.plan = plan
        self.cache_dtype = cache_dtype  # the pools' storage dtype (None: the branch outputs' own)
        self.cache_device = cache_device  # where the pools live (None: with the outputs; "cpu": host memory)
        self.step: int | None = None
        self.pools: dict[str, CachePool] = {}
        self.dtypes: dict[str, torch.dtype] = {}  # per stream, the dtype of its branch outputs (what a rebuild gives)
        self.devices: dict[str, torch.device] = {}  # per stream, the device of its branch outputs
        self.kept: dict[tuple[int, int], int] = {}  # outputs kept per entry (at most its depth)
        self.absent: set[tuple[int, int]] = set()  # unit streams a span does not return (SD3's last block: no text)

    def store(self, slot: int, element: int, tensor: torch.Tensor) -> None:
        where = self.plan.entries.get((slot, element))
        if where is None:
            return
        stream, first, depth = where
        pool = self.pools.get(stream)
        if pool is None:
            device = self.cache_device or tensor.device
            pool = self.pools[stream] = CachePool(self.plan.capacity[stream], tensor.shape,
                                                  self.cache_dtype or tensor.dtype, device,
                                                  pin_memory=device.type == "cpu" and tensor.device.type == "cuda")
            self.dtypes.setdefault(stream, tensor.dtype)
            self.devices.setdefault(stream, tensor.device)
        elif pool.shape != tuple(tensor.shape) or self.dtypes[stream] != tensor.dtype:
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
        if coefficients is None or slot in self.plan.reuse_only:
            return history[:1], None
        return history, coefficients[slot][:len(history)]

    def gather(self, slot: int, element: int, coefficients) -> tuple[list[torch.Tensor], object] | None:
        """The kept outputs (views of the pool, most recent first) a rebuild of the branch output combines at
        this step, and their coefficients (see ``terms``); None when nothing is kept."""
        if (slot, element) not in self.plan.entries:
            return None
        history, coefs = self.terms(slot, element, coefficients)
        if not history:
            return None
        stream = self.plan.entries[slot, element][0]
        pool, dtype, device = self.pools[stream], self.dtypes[stream], self.devices[stream]
        return [pool.read(i) if (pool.dtype, pool.device) == (dtype, device) else
                pool.read(i).to(device=device, dtype=dtype, non_blocking=True) for i in history], coefs

    def rebuild(self, slot: int, element: int, coefficients) -> torch.Tensor | None:
        gathered = self.gather(slot, element, coefficients)
        if gathered is None:
            return None
        outputs, coefs = gathered
        if torch.is_tensor(coefs) and coefs.requires_grad:  # router training: autograd keeps the outputs, which
            outputs = [o.clone() for o in outputs]          # the pool overwrites in place before the backward
        return forecast(outputs, coefs)

    def replan(self, plan: Plan) -> None:
        """Follow ``plan`` from now on, moving the kept outputs it needs out of the provisional pools."""
        old_plan, old_pools, old_kept = self.plan, self.pools, self.kept
        self.plan, self.pools, self.kept = plan, {}, {}  # the streams' output dtypes and devices stay
        for (slot, element), (stream, first, _) in old_plan.entries.items():
            for i in reversed(range(old_kept.get((slot, element), 0))):  # oldest first
                self.store(slot, element, old_pools[stream].read(first + i).to(self.devices[stream],
                                                                                 self.dtypes[stream]))

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
    record: CallRecord | None
    shape: tuple | None
    drive: "Drive | None" = None  # router training's forward: its mode, given by the trainer
    unit_inputs: dict = field(default_factory=dict)  # coarse units: a computed span's input streams, by slot
    region: "Region | None" = None  # the checkpointed block the student's forward is in (gradient checkpointing)

    def coefficients(self):
        """Tensors when compiling (graph inputs, no per-step constants) or driven, floats otherwise."""
        if torch.compiler.is_compiling() or self.coefficient_values is None:
            return self.coefficient_table
        return self.coefficient_values


class _ContextState(BaseState):
    def reset(self):
        pass

"""What a pipeline call costs, measured the same way for every method, learned or not.

``CallMeter`` counts, for the pipeline calls made while it is attached, the transformer forwards,
how many block branches (``attn1`` / ``attn2`` / ``ff``) really ran, the transformer
multiply-accumulates actually spent (``harmonica.macs.MacCounter``, the counter behind
``harmonica.stats`` too, so whatever a caching method does instead of a branch is counted) and the
peak memory of tensors allocated during the call.
"""

from __future__ import annotations

import functools
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from harmonica.macs import MacCounter


@dataclass
class CallCost:
    """What the pipeline calls measured by a ``CallMeter`` spent (summed over calls)."""

    calls: int = 0
    transformer_forwards: int = 0
    branch_slots: int = 0  # blocks x branches x transformer forwards
    branches_computed: int = 0
    macs: int = 0  # transformer multiply-accumulates (FLOPs / 2)
    peak_memory_bytes: int | None = None  # tensors allocated during a call (weights excluded), max over calls
    memory_method: str = ""
    per_forward_computed: list[int] = field(default_factory=list)

    @property
    def cache_usage(self) -> float:
        """Fraction of block-branch computations that were not run (reused, forecast or skipped)."""
        return 1.0 - self.branches_computed / self.branch_slots if self.branch_slots else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cache_usage"] = self.cache_usage
        return d


_WEIGHTED = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)


def _first_weighted(module: torch.nn.Module) -> torch.nn.Module:
    """The branch's first Linear or convolution (Sana's MLP is convolutions)."""
    for m in module.modules():
        if isinstance(m, _WEIGHTED):
            return m
    raise ValueError(f"{type(module).__name__} has no Linear or convolution layer to count its computations by")


class _BranchCounter(TorchFunctionMode):
    """Counts a branch as computed when its first ``Linear``'s (or convolution's) weight goes into a linear (or
    convolution) op. A module hook cannot tell: where the branch *is* that ``Linear`` (a Flux single-stream block's ``proj_out``),
    its hooks fire even when a cache's hook on it returns a forecast instead of running it."""

    def __init__(self, meter: "CallMeter"):
        super().__init__()
        self.meter = meter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.nn.functional.linear, torch.nn.functional.conv1d, torch.nn.functional.conv2d):
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            if id(weight) in self.meter._branch_weights:
                self.meter._bump()
        return func(*args, **kwargs)


class _MacHook(ModelHook):
    """Counts the branches run and the MACs of each transformer forward (registered last, so it wraps
    every other hook)."""

    NAME = "harmonica_eval_meter"

    def __init__(self, meter: "CallMeter"):
        super().__init__()
        self.meter = meter

    def new_forward(self, module, *args, **kwargs):
        with _BranchCounter(self.meter):
            if not self.meter.count_macs:
                return self.fn_ref.original_forward(*args, **kwargs)
            with MacCounter() as counter:
                out = self.fn_ref.original_forward(*args, **kwargs)
        self.meter.cost.macs += counter.macs
        return out


class CallMeter:
    """Attach to a pipeline, run calls inside ``measure()``, read ``cost``.

    Branch computations are counted by the linear ops that use the weight of the first ``Linear`` of
    every branch module (``_BranchCounter``): a reused, forecast or skipped branch never runs it.
    Transformer forwards are counted by a forward pre-hook on the transformer. MACs
    (``count_macs=True``) by ``MacCounter`` around each transformer forward. Peak memory: CUDA's
    allocator peak above the memory in use at the start of the call, or elsewhere
    ``LiveTensorBytes`` (tensors allocated during the call and alive).
    """

    def __init__(self, pipe, count_macs: bool = True, track_memory: bool = True):
        from harmonica.families import family_for, pipeline_transformers, transformer_blocks

        self.pipe = pipe
        self.count_macs = count_macs
        self.track_memory = track_memory
        self.cost = CallCost()
        self._handles = []
        self._registries = []
        self._branch_weights = set()
        family = family_for(pipe)
        self.transformers = [t for _, t in pipeline_transformers(pipe, family)]  # Wan 2.2: both experts
        for transformer in self.transformers:
            modules = [m for block in transformer_blocks(family, transformer) for m in block.modules]
            self._branch_weights.update(id(_first_weighted(module).weight) for module in modules)
            self._handles.append(transformer.register_forward_pre_hook(functools.partial(self._forward, len(modules))))
            registry = HookRegistry.check_if_exists_or_initialize(transformer)
            registry.register_hook(_MacHook(self), _MacHook.NAME)
            self._registries.append(registry)
        self._computed_this_forward = None

    def _bump(self, *_):
        self.cost.branches_computed += 1
        if self._computed_this_forward is not None:
            self._computed_this_forward[-1] += 1

    def _forward(self, slots: int, *_):
        self.cost.transformer_forwards += 1
        self.cost.branch_slots += slots
        self.cost.per_forward_computed.append(0)
        self._computed_this_forward = self.cost.per_forward_computed

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for registry in self._registries:
            registry.remove_hook(_MacHook.NAME, recurse=False)
        self._registries.clear()

    @contextmanager
    def measure(self):
        """Measure one pipeline call (or several: counts add up, memory is the max)."""
        device = self.transformers[0].device
        self.cost.calls += 1
        if not self.track_memory:
            yield self.cost
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            yield self.cost
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - start
            self.cost.memory_method = "CUDA allocator peak above the memory in use before the call"
        else:
            tracker = LiveTensorBytes()
            with tracker:
                yield self.cost
            peak = tracker.peak
            self.cost.memory_method = "peak bytes of live tensors allocated during the call (dispatch-mode count)"
        self.cost.peak_memory_bytes = max(peak, self.cost.peak_memory_bytes or 0)


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storage allocated while the mode is active and still alive (any device).

    Every op's outputs are inspected; a storage seen for the first time is counted until it is freed
    (a weakref finalizer on the storage). Views share their base's storage and are counted once; an output on
    the storage of one of the op's inputs (a view or an in-place result of a tensor made before the mode, a
    weight's transpose inside ``linear``) was not allocated by the op and is not counted.
    Slower than the plain call: measure in a separate, untimed call.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(a.untyped_storage()) for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if id(storage) not in inputs and storage not in self._seen:
                    nbytes = storage.nbytes()
                    self._seen[storage] = nbytes
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, nbytes)
        return out


def weights_bytes(pipe) -> int:
    """Bytes of the parameters and buffers of every torch module of the pipeline (shared tensors once)."""
    seen, total = set(), 0
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            for t in list(comp.parameters()) + list(comp.buffers()):
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
    return total

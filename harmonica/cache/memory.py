"""Cache memory, known before a call allocates it.

A call's cache is one ``CachePool`` per token stream and cache context: the plan says how many outputs each
stream keeps (``Plan.capacity``), a forward's inputs say how big each output is. The shapes come from the
forward itself, run on a *meta-device twin* of the transformer (the same class and config, no weights, no
memory, no arithmetic), with the branch modules the family spec names recording their outputs. So the figure
is the pools' own size, by the code path a real call takes, for any input shape; ``max_cache_memory`` checks
it before the first block of a call runs, and ``eval/memory.py`` prints it for real models built on the meta
device.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_map

from ..families import transformer_blocks
from ..families.spec import bind_call

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class CacheMemoryError(ValueError):
    """A call's cache would hold more than ``max_cache_memory``, or the budget is malformed."""


def parse_bytes(value) -> int:
    """``max_cache_memory`` in bytes: an int, or a string such as ``"4GB"``, ``"3.5 GiB"``, ``"512MiB"``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise CacheMemoryError(f"max_cache_memory must be a number of bytes or a string such as '4GB', got {value!r}")
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?I?B?)\s*", value.upper())
        if match is None or match.group(2) not in _UNITS:
            raise CacheMemoryError(f"max_cache_memory {value!r} is not a size: write e.g. '4GB', '3.5GiB' or a "
                                   "number of bytes")
        value = float(match.group(1)) * _UNITS[match.group(2)]
    if not value > 0 or value != value:
        raise CacheMemoryError(f"max_cache_memory must be > 0, got {value!r}")
    return int(value)


CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_cache_dtype(dtype):
    if dtype is not None and dtype not in CACHE_DTYPES:
        raise CacheMemoryError(f"cache_dtype must be one of {', '.join(map(str, CACHE_DTYPES))} or None (the branch "
                               f"outputs' own dtype), got {dtype!r}")
    return dtype


def check_cache_device(device) -> torch.device | None:
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise CacheMemoryError(f"cache_device must be a torch device such as 'cpu', got {device!r} ({err})") from err


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class CacheMemory:
    """What the pools of one cache context hold: per stream, the outputs kept and the shape of one."""

    entries: dict[str, int]
    shapes: dict[str, tuple[int, ...]]
    dtype: torch.dtype

    def stream_bytes(self, stream: str) -> int:
        return self.entries[stream] * math.prod(self.shapes[stream]) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return sum(self.stream_bytes(s) for s in self.entries)

    def __str__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        parts = [f"{s}: {n} x {tuple(self.shapes[s])} {dtype} = {format_bytes(self.stream_bytes(s))}"
                 for s, n in self.entries.items()]
        return f"{format_bytes(self.nbytes)} ({'; '.join(parts)})"


def meta_twin(transformer) -> torch.nn.Module:
    """The transformer's class built from its config on the meta device, in its dtype (no memory)."""
    if transformer.device.type == "meta":
        return transformer
    with torch.device("meta"):
        twin = type(transformer).from_config(transformer.config)
    if twin.dtype != transformer.dtype:
        with quiet_diffusers():  # diffusers warns about modules kept in fp32, which shapes do not care about
            twin = twin.to(transformer.dtype)
    return twin.eval()


def output_shapes(family, transformer, args=(), kwargs=None, units=()) -> dict:
    """``(slot, element) -> (shape, dtype)`` of every branch output (or, with ``units``, every unit's residual
    stream) of a forward with these inputs (tensors of any device: they are replaced by meta tensors of their
    shape), from the forward of the meta twin."""
    twin = meta_twin(transformer)
    shapes, handles = {}, []
    blocks = transformer_blocks(family, twin)
    for slot, (_, last) in enumerate(units):
        streams = blocks[last].kind.streams

        def record_unit(module, args, kwargs, out, slot=slot, streams=streams):
            returned = streams.returned(bind_call(module, args, kwargs), out)
            for element, name in enumerate(streams.names):
                if returned.get(name) is not None:
                    shapes[slot, element] = (tuple(returned[name].shape), returned[name].dtype)
        handles.append(blocks[last].module.register_forward_hook(record_unit, with_kwargs=True))
    for block in blocks if not units else ():
        for slot, module in zip(block.slots, block.modules):
            def record(_, __, out, slot=slot):
                for element, tensor in enumerate(out if isinstance(out, tuple) else (out,)):
                    if torch.is_tensor(tensor):
                        shapes[slot, element] = (tuple(tensor.shape), tensor.dtype)
            handles.append(module.register_forward_hook(record))
    on_meta = tree_map(lambda a: torch.empty_like(a, device="meta") if torch.is_tensor(a) else a,
                       (tuple(args), dict(kwargs or {})))
    try:
        with torch.no_grad():
            twin(*on_meta[0], **on_meta[1])
    finally:
        for handle in handles:
            handle.remove()
    return shapes


@contextmanager
def quiet_diffusers():
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def plan_memory(plan, shapes: dict, cache_dtype: torch.dtype | None = None) -> CacheMemory:
    """The pools ``plan`` allocates for a forward whose branch outputs have ``shapes`` (``output_shapes``),
    stored in ``cache_dtype`` (None: the outputs' own dtype)."""
    stream_shapes, dtypes = {}, set()
    for (slot, element), (stream, _, _) in plan.entries.items():
        if (slot, element) in shapes:  # (a unit's stream its last block does not return is never kept)
            shape, dtype = shapes[slot, element]
            stream_shapes.setdefault(stream, shape)
            dtypes.add(dtype)
    dtype = cache_dtype or (dtypes.pop() if len(dtypes) == 1 else torch.float32)
    entries = {stream: plan.capacity[stream] for stream in stream_shapes}  # a stream's pool holds its capacity
    return CacheMemory(entries, stream_shapes, dtype)


def check_budget(plan, shapes: dict, budget: int, cache_dtype: torch.dtype | None = None) -> None:
    """Raise CacheMemoryError when ``plan``'s pools for outputs of ``shapes`` would hold more than ``budget``."""
    memory = plan_memory(plan, shapes, cache_dtype)
    if memory.nbytes <= budget:
        return
    least = plan_memory(plan.one_output_each(), shapes, torch.bfloat16).nbytes
    unit = "unit" if plan.units else "branch"
    raise CacheMemoryError(
        f"harmonica: this call's cache would hold {memory} per cache context, over max_cache_memory="
        f"{format_bytes(budget)}. Nothing has run. This router keeps {plan.num_entries} {unit} outputs' histories "
        f"at this input shape; the least it can hold is {format_bytes(least)} (one output per rebuilt {unit}, in 16 "
        "bits): pass cache_dtype=torch.bfloat16 to harmonica.enable, use a router with a shorter history, fewer "
        "rebuilt units or a coarser granularity (span:N, body:F,B), a smaller batch or resolution, or raise the "
        "budget.")

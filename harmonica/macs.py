"""The one multiply-accumulate counter of harmonica: the cache statistics (``harmonica.stats``) and
the evaluation harness both count with it, so their MACs speedups are the same number.

``MacCounter`` is a torch dispatch mode: the MACs of every op run while it is active, from torch's
FLOP formulas (``torch.utils.flop_counter.flop_registry``) / 2; ops without a formula are decomposed
first, as ``FlopCounterMode`` does. Unlike ``FlopCounterMode`` it tracks no modules, so module trees
that other libraries rewrite (cache-dit) do not trip it, and it nests: a counter inside another
counter's region adds to both (the cache counts a branch inside the count of its forward).
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode

T = TypeVar("T")


class MacCounter(TorchDispatchMode):
    """``with MacCounter() as c: ...``, then ``c.macs`` (multiply-accumulates = FLOPs / 2)."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    @property
    def macs(self) -> int:
        return self.flops // 2

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in flop_registry and not isinstance(func, torch._ops.HigherOrderOperator):
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        formula = flop_registry.get(packet)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


def count_macs(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn()`` under a ``MacCounter``; return its output and the multiply-accumulates it spent."""
    with MacCounter() as counter:
        out = fn()
    return out, counter.macs


def count_macs_aside(fn: Callable[[], T]) -> tuple[T, int]:
    """``count_macs`` for work done only to measure: enclosing counters (and other dispatch modes) do not see it."""
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        return count_macs(fn)

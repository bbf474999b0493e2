"""The plan: what a router's schedule means for one transformer, computed once at ``enable``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..families.spec import BlockInfo

if TYPE_CHECKING:
    from .state import CacheState

SKIP = "skip"  # block plan entry: this block is covered by the fused run started before it


class Plan:
    """What a router's schedule means for one transformer, computed once at ``enable``.

    ``schedule[step][slot]``: compute (True) or rebuild from the cache. ``coefficients[step][slot]``:
    the forecast over the branch's last computed outputs (``(1.0,)``: reuse). ``entries``: for every
    branch output the schedule ever rebuilds, ``(slot, element) -> (stream, first index, depth)``: its
    last ``depth`` computed outputs live at ``first .. first + depth - 1`` of that stream's pool, most
    recent first.
    ``fused[step]``: per block, None (run it), SKIP (covered by an earlier block) or a fused run (the
    blocks it replaces); None for a step without fused runs.
    ``keep``: keep the last ``keep`` outputs of every branch whatever the schedule (router training, whose
    schedule and coefficients move at every step, drives the forwards: see ``harmonica.cache.drive``).
    ``units``: coarse units (``RouterLayout.units``): each span of blocks is one slot whose elements are its
    residual streams; no branch is cached and nothing is fused. ``unit_of[block index]``: (slot, first block,
    last block) of the unit the block is in.
    """

    def __init__(self, blocks: list[BlockInfo], schedule: list[list[bool]], coefficients, fused: bool,
                 keep: int | None = None, pending: tuple | None = None, units: tuple = ()):
        self.blocks = blocks
        self.keep = keep
        self.pending = pending  # a provisional plan: the call's timesteps, its schedule resolved after step 0
        self.schedule = schedule
        self.coefficients = coefficients
        self.units = tuple(units)
        self.num_slots = self.count_slots(blocks, self.units)
        self.unit_of = {i: (slot, a, b) for slot, (a, b) in enumerate(self.units) for i in range(a, b + 1)}
        depth = self._depths(schedule, coefficients) if keep is None else dict.fromkeys(range(self.num_slots), keep)
        # slots whose every rebuild is plain reuse (coefficient exactly 1 on the last output): no arithmetic
        self.reuse_only = set() if keep is not None else {slot for slot in depth if all(
            schedule[step][slot] or tuple(coefficients[step][slot][:1]) == (1.0,) and not any(coefficients[step][slot][1:])
            for step in range(1, len(schedule)))}
        self.table = torch.tensor(coefficients, dtype=torch.float32)  # [step, slot, history]
        self._tables: dict[str, torch.Tensor] = {}
        self.entries: dict[tuple[int, int], tuple[str, int, int]] = {}
        self.capacity: dict[str, int] = {}
        for slot, streams in self.slot_streams():
            if slot not in depth:
                continue
            for element, stream in enumerate(streams):
                first = self.capacity.get(stream, 0)
                self.entries[slot, element] = (stream, first, depth[slot])
                self.capacity[stream] = first + depth[slot]
        self.block_level = [False] * len(blocks) if self.units else self.block_levels(blocks, fused)
        self.fused = [self._runs(row) if step > 0 and not self.units else None for step, row in enumerate(schedule)]

    def slot_streams(self):
        """(slot, the streams of its elements) for every slot: a branch's outputs, or a unit's residual streams."""
        if self.units:
            return [(slot, self.blocks[a].kind.streams.names) for slot, (a, _) in enumerate(self.units)]
        return [(slot, branch.streams) for block in self.blocks for slot, branch in zip(block.slots, block.branches)]

    @property
    def num_entries(self) -> int:
        """Branch outputs whose history the plan keeps."""
        return len(self.entries)

    @staticmethod
    def count_slots(blocks: list[BlockInfo], units: tuple = ()) -> int:
        return len(units) if units else sum(len(b.branches) for b in blocks)

    @classmethod
    def keeping(cls, blocks: list[BlockInfo], keep: int, fused: bool = False, pending: tuple | None = None,
                units: tuple = ()) -> "Plan":
        """A plan that keeps every slot's last ``keep`` outputs whatever the schedule (no schedule of its own)."""
        slots = cls.count_slots(blocks, units)
        return cls(blocks, [[True] * slots], [[[1.0]] * slots], fused, keep=keep, pending=pending, units=units)

    def one_output_each(self) -> "Plan":
        """This plan keeping one output per rebuilt branch output (plain reuse): its least cache."""
        if self.keep is not None:
            return Plan.keeping(self.blocks, 1, pending=self.pending, units=self.units)
        return Plan(self.blocks, self.schedule, [[[1.0]] * self.num_slots] * len(self.schedule), False,
                    units=self.units)

    @staticmethod
    def block_levels(blocks: list[BlockInfo], fused: bool) -> list[bool]:
        """Per block: whether a block-level hook serves it (a whole-block branch, or fused runs)."""
        return [b.kind.whole_block or (fused and b.kind.fusable(b.module)) for b in blocks]

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

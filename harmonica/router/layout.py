"""A router's layout: the blocks (over every block list, each with its branches) and the pipeline classes it serves."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence


class RouterError(ValueError):
    """A router that cannot be used as asked (unreadable file, bad values, wrong pipeline)."""


@dataclass(frozen=True)
class RouterLayout:
    """What a router must match in a pipeline: its blocks (over every block list, each with its own
    branches) and the sampling setup's classes.

    ``blocks[i] = (block list name, branch names)``. Router slots run block by block, branch by
    branch: slot ``s`` of block ``i`` is ``first_slot(i) + k`` for its ``k``-th branch.

    ``units``: the cache's granularity (``granularity`` names it). Empty: every branch is a slot. Otherwise
    spans ``(first block, last block)`` over all block lists, each one slot: the span's residual (what its
    blocks add to each token stream) is cached and rebuilt as a whole; blocks outside every span always run.
    """

    blocks: tuple[tuple[str, tuple[str, ...]], ...]
    pipeline_class: str = ""
    transformer_class: str = ""
    scheduler_class: str = ""
    units: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        units = tuple((int(a), int(b)) for a, b in self.units)
        object.__setattr__(self, "units", units)
        last = -1
        for a, b in units:
            if not last < a <= b < self.num_blocks:
                raise RouterError(f"units must be ordered, disjoint spans (first block, last block) of the "
                                  f"{self.num_blocks} blocks, got {[list(u) for u in units]}")
            last = b

    def mismatches(self, layout: "RouterLayout", scheduler: bool = True) -> list[str]:
        """Every difference between this (a router's) layout and a pipeline's, in words: blocks and branches,
        pipeline, transformer and (``scheduler``) scheduler class."""
        problems = []
        if self.num_blocks != layout.num_blocks:
            problems.append(f"it has {self.num_blocks} blocks, the transformer has {layout.num_blocks}")
        if {b for _, b in self.blocks} != {b for _, b in layout.blocks} or (
                self.num_blocks == layout.num_blocks and self.blocks != layout.blocks):
            problems.append(f"its blocks and branches are [{self.describe_blocks()}], the transformer's are "
                            f"[{layout.describe_blocks()}]")
        if self.units != layout.units:
            problems.append(f"it caches at granularity {self.granularity!r}, this cache is set up at "
                            f"{layout.granularity!r} (a router serves the granularity it was trained at)")
        for ours, theirs, message in (
            (self.pipeline_class, layout.pipeline_class, "it was made for a {}, this pipeline is a {}"),
            (self.transformer_class, layout.transformer_class,
             "it was made for the transformer class {}, this pipeline's transformer is a {}"),
            (self.scheduler_class if scheduler else "", layout.scheduler_class,
             "it was made for the scheduler {}, this pipeline's scheduler is a {}"),
        ):
            if ours and theirs and ours != theirs:
                problems.append(message.format(ours, theirs))
        return problems

    @classmethod
    def uniform(cls, num_blocks: int, branches: Sequence[str], pipeline_class: str = "", transformer_class: str = "",
                scheduler_class: str = "", list_name: str = "transformer_blocks") -> "RouterLayout":
        """``num_blocks`` blocks of one list, all with the same ``branches`` (DiT, PixArt)."""
        return cls(((list_name, tuple(branches)),) * int(num_blocks), pipeline_class, transformer_class,
                   scheduler_class)

    @classmethod
    def from_groups(cls, groups, units=(), **classes) -> "RouterLayout":
        """From the run-length form saved in router configs: ``[[list name, count, [branches]], ...]``."""
        try:
            blocks = tuple((str(name), tuple(str(b) for b in branches))
                           for name, count, branches in groups for _ in range(int(count)))
        except (TypeError, ValueError) as err:
            raise RouterError(f"a router layout must be [[block list, count, [branches]], ...], got {groups!r}") from err
        try:
            units = tuple((a, b) for a, b in (units or ()))
        except (TypeError, ValueError) as err:
            raise RouterError(f"units must be [[first block, last block], ...], got {units!r}") from err
        return cls(blocks, units=units, **classes)

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
        return len(self.units) if self.units else sum(len(branches) for _, branches in self.blocks)

    @property
    def granularity(self) -> str:
        """"branch", "block", "span:N", "body:F,B" (see ``units_for``) or "spans" (any other units)."""
        if not self.units:
            return "branch"
        n = self.num_blocks
        for spec in ("block", f"span:{self.units[0][1] - self.units[0][0] + 1}",
                     f"body:{self.units[0][0]},{n - 1 - self.units[-1][1]}"):
            if units_for(spec, n) == self.units:
                return spec
        return "spans"

    def with_granularity(self, granularity: str) -> "RouterLayout":
        """This layout cached at ``granularity`` (``units_for``)."""
        return dataclasses.replace(self, units=units_for(granularity, self.num_blocks))

    @property
    def slot_names(self) -> list[str]:
        """``"<list>.<index in list>.<branch>"`` for every slot, in slot order (``"blocks a-b"`` for span units)."""
        if self.units:
            return [f"blocks {a}-{b}" if a != b else f"block {a}" for a, b in self.units]
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
        if self.units:
            raise RouterError(f"a router at granularity {self.granularity!r} has no branch slots")
        """The slot of ``branch`` in block ``block`` (counted over all block lists)."""
        if not 0 <= block < self.num_blocks:
            raise IndexError(f"block {block} is outside a layout of {self.num_blocks} blocks")
        names = self.blocks[block][1]
        if branch not in names:
            raise KeyError(f"block {block} has no branch {branch!r} (it has {list(names)})")
        return sum(len(b) for _, b in self.blocks[:block]) + names.index(branch)

    def describe_blocks(self) -> str:
        blocks = ", ".join(f"{count} x {name} {branches}" for name, count, branches in self.groups)
        return blocks if not self.units else f"{blocks}; cached as {len(self.units)} units ({self.granularity})"


GRANULARITIES = ("branch", "block", "span:N", "body:F,B")


def units_for(granularity: str, num_blocks: int) -> tuple[tuple[int, int], ...]:
    """The units of a granularity over ``num_blocks`` blocks (all block lists, in forward order):

    * ``"branch"``: none (every branch of every block is a unit: the default);
    * ``"block"``: every block's residual;
    * ``"span:N"``: the residuals of runs of N consecutive blocks (the last run shorter);
    * ``"body:F,B"``: one residual of the blocks between F always-run front blocks and B back blocks.
    """
    kind, _, arg = str(granularity).partition(":")
    front, _, back = arg.partition(",")
    if kind == "branch" and not arg:
        return ()
    if kind == "block" and not arg:
        return tuple((i, i) for i in range(num_blocks))
    if kind == "span" and arg.isdigit() and int(arg) >= 1:
        n = int(arg)
        return tuple((a, min(a + n, num_blocks) - 1) for a in range(0, num_blocks, n))
    if kind == "body" and front.isdigit() and back.isdigit():
        if int(front) + int(back) >= num_blocks:
            raise RouterError(f"granularity {granularity!r} leaves no block between its front and back blocks: "
                              f"this transformer has {num_blocks}")
        return ((int(front), num_blocks - 1 - int(back)),)
    raise RouterError(f"granularity must be one of {', '.join(GRANULARITIES)} (N >= 1, F >= 0, B >= 0), got "
                      f"{granularity!r}")

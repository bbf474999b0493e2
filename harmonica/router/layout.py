"""A router's layout: the blocks (over every block list, each with its branches) and the pipeline classes it serves."""

from __future__ import annotations

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
    """

    blocks: tuple[tuple[str, tuple[str, ...]], ...]
    pipeline_class: str = ""
    transformer_class: str = ""
    scheduler_class: str = ""

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
    def from_groups(cls, groups, **classes) -> "RouterLayout":
        """From the run-length form saved in router configs: ``[[list name, count, [branches]], ...]``."""
        try:
            blocks = tuple((str(name), tuple(str(b) for b in branches))
                           for name, count, branches in groups for _ in range(int(count)))
        except (TypeError, ValueError) as err:
            raise RouterError(f"a router layout must be [[block list, count, [branches]], ...], got {groups!r}") from err
        return cls(blocks, **classes)

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
        return sum(len(branches) for _, branches in self.blocks)

    @property
    def slot_names(self) -> list[str]:
        """``"<list>.<index in list>.<branch>"`` for every slot, in slot order."""
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
        """The slot of ``branch`` in block ``block`` (counted over all block lists)."""
        if not 0 <= block < self.num_blocks:
            raise IndexError(f"block {block} is outside a layout of {self.num_blocks} blocks")
        names = self.blocks[block][1]
        if branch not in names:
            raise KeyError(f"block {block} has no branch {branch!r} (it has {list(names)})")
        return sum(len(b) for _, b in self.blocks[:block]) + names.index(branch)

    def describe_blocks(self) -> str:
        return ", ".join(f"{count} x {name} {branches}" for name, count, branches in self.groups)

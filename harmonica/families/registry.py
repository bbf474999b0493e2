"""Which family serves a pipeline, and a transformer's blocks as the cache sees them.

Adding a family is one module in this package (its block kinds, family spec, denoiser and call
arguments) plus its line in ``FAMILIES``.
"""

from __future__ import annotations

from torch import nn

from .dit import DIT
from .flux import FLUX
from .pixart import PIXART
from .qwenimage import QWENIMAGE
from .sana import SANA
from .sd3 import SD3
from .spec import BlockInfo, Family
from .wan import WAN

FAMILIES: tuple[Family, ...] = (DIT, PIXART, FLUX, SD3, SANA, WAN, QWENIMAGE)
SUPPORTED_PIPELINES: tuple[str, ...] = tuple(name for family in FAMILIES for name in family.pipelines)


class UnsupportedPipelineError(ValueError):
    pass


def unsupported(name: str) -> UnsupportedPipelineError:
    return UnsupportedPipelineError(
        f"harmonica does not support {name}; supported pipelines: {', '.join(SUPPORTED_PIPELINES)}"
    )


def family_for(pipe_or_name) -> Family:
    """The family serving a pipeline (instance, class or class name); raises naming the supported ones.

    A pipeline class derived from a supported one (by class name along its MRO) is served too."""
    if isinstance(pipe_or_name, str):
        names = [pipe_or_name]
    else:
        klass = pipe_or_name if isinstance(pipe_or_name, type) else type(pipe_or_name)
        names = [k.__name__ for k in klass.__mro__]
    for name in names:
        for family in FAMILIES:
            if name in family.pipelines:
                return family
    raise unsupported(names[0])


def pipeline_transformers(pipe, family: Family) -> list[tuple[str, nn.Module]]:
    """The (component name, transformer) pairs of ``pipe`` that harmonica hooks (Wan 2.2: two experts)."""
    found = [(name, getattr(pipe, name, None)) for name in family.transformers]
    # torch.compile(transformer) wraps the module: the hooks belong on the module itself
    found = [(name, getattr(t, "_orig_mod", t)) for name, t in found if t is not None]
    if not found:
        raise ValueError(f"{type(pipe).__name__} has no transformer ({', '.join(family.transformers)} are all None)")
    return found


def transformer_blocks(family: Family, transformer: nn.Module) -> list[BlockInfo]:
    """Every block of ``transformer`` over the family's block lists, with its kind, branches and slots.
    Raises when a list is missing or a block is of a class the family does not know."""
    blocks, slot = [], 0
    for list_name in family.block_lists:
        modules = getattr(transformer, list_name, None)
        if modules is None:
            continue  # e.g. a Flux variant without single blocks
        if not isinstance(modules, (nn.ModuleList, list)):
            raise ValueError(f"{type(transformer).__name__}.{list_name} is not a list of blocks")
        for block in modules:
            kind = family.kind_of(block)
            if kind is None:
                known = ", ".join(k.block_class for k in family.kinds)
                raise ValueError(
                    f"block {len(blocks)} of {type(transformer).__name__} ({list_name}) is a {type(block).__name__}, "
                    f"which harmonica's {family.name} family does not know (known: {known}); see harmonica/families/"
                )
            if kind.check is not None:
                kind.check(block)
            branches = kind.branches(block)
            info = BlockInfo(len(blocks), list_name, block, kind, branches, slot)
            info.modules = [b.resolve(block) for b in branches]
            blocks.append(info)
            slot += len(branches)
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} has none of the block lists {family.block_lists}")
    return blocks


def blocks_of(pipe) -> list[BlockInfo]:
    """The blocks of ``pipe``'s (first) transformer, as ``transformer_blocks`` describes them."""
    family = family_for(pipe)
    return transformer_blocks(family, pipeline_transformers(pipe, family)[0][1])

"""Which family serves a pipeline, and a transformer's blocks as the cache sees them.

The built-in families (one module each in this package: block kinds and ``Family``) are registered
here at import. Adding a family needs no change to the package: build a ``Family`` (see ``spec``)
for your pipeline class and call ``harmonica.register_family(family)``; ``describe``, ``enable``
and the rest then serve that pipeline. Router training and the evaluation harness find their own
adapters by the family's name (``harmonica.training.denoisers.register_denoiser``,
``harmonica_bench.evaluation.call_kwargs.register_call_kwargs``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .cogvideox import COGVIDEOX
from .dit import DIT
from .flux import FLUX
from .hunyuan_video import HUNYUAN_VIDEO
from .ltx import LTX
from .pixart import PIXART
from .qwenimage import QWENIMAGE
from .sana import SANA
from .sd3 import SD3
from .spec import BlockInfo, BlockKind, Family
from .wan import WAN, WAN_I2V

_FAMILIES: dict[str, Family] = {}  # by name, in registration order


class _Live(Sequence):
    """A read-only tuple-like view that is always current: names imported before a registration see it."""

    def __init__(self, items):
        self._items = items

    def __getitem__(self, index):
        return self._items()[index]

    def __len__(self) -> int:
        return len(self._items())

    def __eq__(self, other) -> bool:
        return self._items() == (other._items() if isinstance(other, _Live) else other)

    __hash__ = None

    def __repr__(self) -> str:
        return repr(self._items())


def supported_pipelines() -> tuple[str, ...]:
    """The pipeline class names the registered families serve."""
    return tuple(name for family in _FAMILIES.values() for name in family.pipelines)


FAMILIES: Sequence[Family] = _Live(lambda: tuple(_FAMILIES.values()))
SUPPORTED_PIPELINES: Sequence[str] = _Live(supported_pipelines)


def _check(family: Family) -> None:
    def names(value) -> bool:
        return isinstance(value, (tuple, list)) and len(value) > 0 and all(isinstance(v, str) for v in value)

    what = f"family {family.name!r}"
    if not isinstance(family.name, str) or not family.name:
        raise ValueError(f"a family needs a name (a non-empty string), got {family.name!r}")
    for field in ("pipelines", "block_lists", "transformers"):
        if not names(getattr(family, field)):
            raise ValueError(f"{what}: {field} must be a non-empty tuple of names, got {getattr(family, field)!r}")
    if not family.kinds or not all(isinstance(kind, BlockKind) for kind in family.kinds):
        raise ValueError(f"{what}: kinds must be a non-empty tuple of BlockKind, got {family.kinds!r}")
    if family.conditioning not in ("class", "text"):
        raise ValueError(f"{what}: conditioning must be 'class' or 'text', got {family.conditioning!r}")


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Serve ``family``'s pipelines from now on (``family_for``, ``describe``, ``enable``, ...); returns it.

    Refused (ValueError): anything but a ``harmonica.families.Family``; a name already registered,
    unless ``replace=True`` (the new spec takes that family's place); a pipeline class name that
    another family serves (one family per pipeline class; a subclass of a served pipeline class is
    served by its parent's family unless its own name is registered)."""
    if not isinstance(family, Family):
        raise ValueError(f"register_family takes a harmonica.families.Family, got {type(family).__name__}")
    _check(family)
    if family.name in _FAMILIES and not replace:
        served = ", ".join(_FAMILIES[family.name].pipelines)
        raise ValueError(f"a family named {family.name!r} is already registered (serving {served}); choose another "
                         "name, or pass replace=True to replace it")
    taken = {name: other.name for other in _FAMILIES.values() if other.name != family.name for name in other.pipelines}
    for name in family.pipelines:
        if name in taken:
            raise ValueError(f"{name} is already served by the {taken[name]!r} family; family {family.name!r} cannot "
                             "serve it too")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> Family:
    """Stop serving the family registered as ``name``; returns it (raises ValueError if there is none)."""
    if name not in _FAMILIES:
        raise ValueError(f"no family named {name!r} is registered (registered: {', '.join(_FAMILIES)})")
    return _FAMILIES.pop(name)


for _builtin in (DIT, PIXART, FLUX, SD3, SANA, WAN, QWENIMAGE, WAN_I2V, HUNYUAN_VIDEO, LTX, COGVIDEOX):
    register_family(_builtin)
del _builtin


class UnsupportedPipelineError(ValueError):
    pass


def unsupported(name: str) -> UnsupportedPipelineError:
    return UnsupportedPipelineError(
        f"harmonica does not support {name}; supported pipelines: {', '.join(supported_pipelines())} "
        "(harmonica.register_family adds a family)"
    )


def family_for(pipe_or_name) -> Family:
    """The registered family serving a pipeline (instance, class or class name); raises naming the supported ones.

    A pipeline class derived from a served one (by class name along its MRO) is served too."""
    if isinstance(pipe_or_name, str):
        names = [pipe_or_name]
    else:
        klass = pipe_or_name if isinstance(pipe_or_name, type) else type(pipe_or_name)
        names = [k.__name__ for k in klass.__mro__]
    for name in names:
        for family in _FAMILIES.values():
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

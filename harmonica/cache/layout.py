"""``describe(pipe)``: the layout a router must have to serve a pipeline."""

from __future__ import annotations

import dataclasses

from ..families import family_for, pipeline_transformers, transformer_blocks
from ..router import RouterError, RouterLayout


def describe(pipe, granularity: str | tuple = "branch") -> RouterLayout:
    """The layout a router must have to serve ``pipe`` (raises if the pipeline is not supported), with its cache
    at ``granularity`` (``harmonica.router.units_for``: "branch", "block", "span:N" or "body:F,B"; refused where
    the family spec does not describe the residual streams a unit needs; or the units themselves,
    ``RouterLayout.units``)."""
    family = family_for(pipe)
    transformers = pipeline_transformers(pipe, family)
    layouts = []
    for _, transformer in transformers:
        blocks = transformer_blocks(family, transformer)
        layout = RouterLayout(
            blocks=tuple((b.list_name, tuple(br.name for br in b.branches)) for b in blocks),
            pipeline_class=type(pipe).__name__,
            transformer_class=type(transformer).__name__,
            scheduler_class=type(pipe.scheduler).__name__,
        )
        layout = (layout.with_granularity(granularity) if isinstance(granularity, str) else
                  dataclasses.replace(layout, units=granularity))
        check_units(family, blocks, layout.units, granularity)
        layouts.append(layout)
    if any(layout != layouts[0] for layout in layouts[1:]):
        names = ", ".join(name for name, _ in transformers)
        raise RouterError(f"the transformers of this pipeline ({names}) have different blocks; one router cannot "
                          "serve both")
    return layouts[0]


def check_units(family, blocks, units, granularity) -> None:
    """Raise RouterError unless every block of every unit has residual streams in the family spec, the same
    names throughout the unit."""
    for first, last in units:
        kinds = {blocks[i].kind for i in range(first, last + 1)}
        missing = sorted(k.block_class for k in kinds if k.streams is None)
        if missing:
            raise RouterError(f"the {family.name} family caches {', '.join(missing)} by branch only (its spec does not "
                              f"describe the block's residual streams): granularity {granularity!r} is not allowed "
                              "there; use 'branch'")
        if len({k.streams.names for k in kinds}) > 1:
            raise RouterError(f"blocks {first}-{last} of the {family.name} family have residual streams of different "
                              f"names ({sorted({k.streams.names for k in kinds})}): a unit cannot span them at "
                              f"granularity {granularity!r}; choose spans within one kind")

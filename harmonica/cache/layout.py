"""``describe(pipe)``: the layout a router must have to serve a pipeline."""

from __future__ import annotations

from ..families import family_for, pipeline_transformers, transformer_blocks
from ..router import RouterError, RouterLayout


def describe(pipe) -> RouterLayout:
    """The layout a router must have to serve ``pipe`` (raises if the pipeline is not supported)."""
    family = family_for(pipe)
    transformers = pipeline_transformers(pipe, family)
    layouts = []
    for _, transformer in transformers:
        blocks = transformer_blocks(family, transformer)
        layouts.append(RouterLayout(
            blocks=tuple((b.list_name, tuple(br.name for br in b.branches)) for b in blocks),
            pipeline_class=type(pipe).__name__,
            transformer_class=type(transformer).__name__,
            scheduler_class=type(pipe.scheduler).__name__,
        ))
    if any(layout != layouts[0] for layout in layouts[1:]):
        names = ", ".join(name for name, _ in transformers)
        raise RouterError(f"the transformers of this pipeline ({names}) have different blocks; one router cannot "
                          "serve both")
    return layouts[0]

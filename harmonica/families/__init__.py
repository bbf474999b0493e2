"""Model families: everything harmonica knows about a family of diffusers pipelines, one module each.

See ``spec`` for what a family spec holds and ``registry`` for the registered families
(``register_family`` adds one from outside the package).
"""

from .registry import (
    FAMILIES,
    SUPPORTED_PIPELINES,
    UnsupportedPipelineError,
    blocks_of,
    family_for,
    pipeline_transformers,
    register_family,
    supported_pipelines,
    transformer_blocks,
    unregister_family,
    unsupported,
)
from .spec import BlockInfo, BlockKind, Branch, Family, Fused, Streams

__all__ = [
    "FAMILIES",
    "SUPPORTED_PIPELINES",
    "BlockInfo",
    "BlockKind",
    "Branch",
    "Family",
    "Fused",
    "Streams",
    "UnsupportedPipelineError",
    "blocks_of",
    "family_for",
    "pipeline_transformers",
    "register_family",
    "supported_pipelines",
    "transformer_blocks",
    "unregister_family",
    "unsupported",
]

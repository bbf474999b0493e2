"""PixArt-alpha and PixArt-Sigma (text-to-image): ``BasicTransformerBlock``s with cross-attention."""

from __future__ import annotations

from .dit import BASIC_BLOCK
from .spec import Family


PIXART = Family(
    name="pixart",
    pipelines=("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
    block_lists=("transformer_blocks",),
    kinds=(BASIC_BLOCK,),
    notes="CFG batched into one forward; cross-attention attn2 is ungated",
)

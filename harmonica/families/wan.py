"""Wan 2.1 / 2.2 text-to-video (``WanPipeline``): ``WanTransformerBlock``s over video tokens.

A ``WanTransformerBlock`` adds three branches to one token stream:

* ``attn1``: self-attention with rotary embeddings, gated;
* ``attn2``: cross-attention to the UMT5 prompt embeddings, ungated;
* ``ffn``: the MLP, gated.

The gates come from ``scale_shift_table`` + the timestep projection; the block computes the gated
residual adds in float32 and casts back, so no fused whole-block apply is offered (a fully reused
block runs its own code, its branches reused one by one).

The pipeline runs the conditional and unconditional forwards separately, each inside
``transformer.cache_context("cond" / "uncond", step_index=i, num_inference_steps=n)``: the step comes
from that context, not from the timestep. Wan 2.2 A14B has two experts, ``transformer`` (high noise)
and ``transformer_2`` (low noise), the second taking over once ``t < boundary_ratio * 1000``; both are
hooked, one router serves both, and the first forward of an expert fills its own cache. Wan 2.2
TI2V-5B passes per-token timesteps (``expand_timesteps=True``); the step still comes from the context.
"""

from __future__ import annotations

from .spec import ONE_STREAM, BlockKind, Branch, Family

WAN_BLOCK = BlockKind(
    block_class="WanTransformerBlock",
    branches=lambda block: (Branch("attn1", "attn1"), Branch("attn2", "attn2"), Branch("ffn", "ffn")),
    streams=ONE_STREAM,
)


WAN = Family(
    name="wan",
    pipelines=("WanPipeline",),
    block_lists=("blocks",),
    kinds=(WAN_BLOCK,),
    transformers=("transformer", "transformer_2"),
    notes="video; cond and uncond forwards under cache contexts carrying the step; Wan 2.2 A14B's two experts "
          "share one router, each filling its own cache when it takes over; router training drives one expert",
)

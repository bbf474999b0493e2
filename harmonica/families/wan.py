"""Wan 2.1 / 2.2 text-to-video (``WanPipeline``) and image-to-video (``WanImageToVideoPipeline``):
``WanTransformerBlock``s over video tokens.

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
hooked, one router serves both, and the first forward of an expert fills its own cache (router training
drives both the same way: the step at which the second expert takes over fills and trains nothing). Wan 2.2
TI2V-5B passes per-token timesteps (``expand_timesteps=True``); the step still comes from the context.

Image-to-video is its own family (``wan-i2v``: its router training and harness adapters need the image) with the
same block kind. Its transformer takes the noise concatenated with the encoded first frame and a frame mask
(channels), and Wan 2.1 I2V adds a CLIP image embedding that every ``attn2`` attends to beside the prompt
(``add_k_proj`` / ``add_v_proj``): attn2 still returns one tensor, the sum of both attentions, added ungated, so it
is cached as one branch. Its pipeline sets ``cache_context("cond" / "uncond")`` without the step: the step is found
from the timestep in the pipeline's scheduler (unscaled; per-token timesteps, Wan 2.2 I2V with
``expand_timesteps``, reduce to the largest, the noised frames' ``t``).
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
          "share one router, each filling its own cache when it takes over, in router training too",
)


WAN_I2V = Family(
    name="wan-i2v",
    pipelines=("WanImageToVideoPipeline",),
    block_lists=("blocks",),
    kinds=(WAN_BLOCK,),
    transformers=("transformer", "transformer_2"),
    notes="video from an image; attn2 also attends to the CLIP image embedding (one branch); cond and uncond "
          "forwards under cache contexts, the step found from the scheduler's timesteps; Wan 2.2 experts as in 'wan'; "
          "router training draws first frames from images; no harness call arguments (it draws prompts only)",
)

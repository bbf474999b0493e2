"""Sana (``SanaPipeline``): linear-attention DiT blocks, ``SanaTransformerBlock``.

A ``SanaTransformerBlock`` adds three branches to one image stream:

* ``attn1``: linear self-attention, gated (adaLN-single: ``scale_shift_table`` + the timestep embedding);
* ``attn2``: cross-attention to the Gemma prompt embeddings, ungated;
* ``ff``: the ``GLUMBConv`` MLP (1x1 conv, depthwise 3x3 conv, gated linear unit, 1x1 conv), gated. It
  runs on the tokens unflattened to a ``[batch, channels, height, width]`` map and returns such a map,
  so its cached output lives on its own stream (``image_map``), whose pool has that shape.

No fused whole-block apply: the ``ff`` output is reshaped to tokens inside the block's own code, so a
fully reused block still runs its norms and that reshape (its branches are reused one by one).

The pipeline batches CFG into one forward ([uncond; cond]) and passes ``t * config.timestep_scale``.
Run it with ``use_resolution_binning=False`` and ``complex_human_instruction=None`` for reproducible
evaluation and router training (router training's denoiser encodes prompts without the instruction too).
"""

from __future__ import annotations

from .spec import ONE_STREAM, BlockKind, Branch, Family


def sana_branches(block) -> tuple[Branch, ...]:
    branches = [Branch("attn1", "attn1", ("image",))]
    if block.attn2 is not None:
        branches.append(Branch("attn2", "attn2", ("image",)))
    return tuple(branches) + (Branch("ff", "ff", ("image_map",)),)


SANA_BLOCK = BlockKind(block_class="SanaTransformerBlock", branches=sana_branches, streams=ONE_STREAM)


SANA = Family(
    name="sana",
    pipelines=("SanaPipeline",),
    block_lists=("transformer_blocks",),
    kinds=(SANA_BLOCK,),
    timestep_scale=lambda transformer: 1.0 / float(transformer.config.timestep_scale),
    notes="attn1 and the conv MLP gated, cross-attention ungated; the MLP's map-shaped output has its own stream; "
          "CFG batched into one forward; no fused apply",
)

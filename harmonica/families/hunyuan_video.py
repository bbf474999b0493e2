"""HunyuanVideo (``HunyuanVideoPipeline``): dual-stream blocks, then single-stream blocks, as in Flux.

* ``HunyuanVideoTransformerBlock`` (dual stream): joint attention ``attn`` returns (video, text) tokens; the MLPs
  ``ff`` (video) and ``ff_context`` (text). Every branch output is gated (``norm1`` / ``norm1_context``,
  adaLN-zero).
* ``HunyuanVideoSingleTransformerBlock``: video and text tokens concatenated into one joint stream (video first,
  unlike Flux); attention and MLP run in parallel on it and one output projection ``proj_out`` mixes them, gated
  once. That projection's output is the block's one branch; reusing it replaces the whole block.

The token refiner (``context_embedder``: ``HunyuanVideoIndividualTokenRefinerBlock``s over the Llama prompt
embeddings, conditioned on the timestep) is not in the block lists: it runs at every step. The image-to-video
transformer's token-replace blocks (``HunyuanVideoTokenReplace*``, per-frame gates) are other classes, refused at
``enable`` as unknown.

The pipeline passes the scheduler's timestep unscaled and embeds the distilled guidance scale (``guidance_embeds``);
with a negative prompt and ``true_cfg_scale > 1`` it runs true CFG as a conditional and an unconditional forward,
each inside ``cache_context("cond")`` / ``("uncond")``.
"""

from __future__ import annotations

import torch

from .spec import IMAGE_TEXT, BlockKind, Branch, Family, Fused


def _double_gates(block, call: dict) -> list:
    temb = call["temb"]
    img = block.norm1.linear(block.norm1.silu(temb)).chunk(6, dim=1)
    txt = block.norm1_context.linear(block.norm1_context.silu(temb)).chunk(6, dim=1)
    # branch elements in order: attn -> (video, text), ff -> video, ff_context -> text
    return [img[2].unsqueeze(1), txt[2].unsqueeze(1), img[5].unsqueeze(1), txt[5].unsqueeze(1)]


def _fusable(block) -> bool:
    # AdaLayerNormZero without its own embedding (the block passes temb as emb): the gates come from temb alone
    return getattr(block.norm1, "emb", None) is None and getattr(block.norm1_context, "emb", None) is None


DOUBLE_BLOCK = BlockKind(
    block_class="HunyuanVideoTransformerBlock",
    branches=lambda block: (Branch("attn", "attn", ("image", "text")), Branch("ff", "ff", ("image",)),
                            Branch("ff_context", "ff_context", ("text",))),
    fused=Fused(
        streams=lambda call: {"image": call["hidden_states"], "text": call["encoder_hidden_states"]},
        gates=_double_gates,
        output=lambda call, streams: (streams["image"], streams["text"]),
        applies=_fusable,
    ),
    streams=IMAGE_TEXT,
)


def _single_output(call: dict, streams: dict):
    joint = streams["joint"]
    n = call["encoder_hidden_states"].shape[1]
    return joint[:, :-n], joint[:, -n:]


SINGLE_BLOCK = BlockKind(
    block_class="HunyuanVideoSingleTransformerBlock",
    branches=lambda block: (Branch("proj_out", "proj_out", ("joint",)),),
    fused=Fused(
        streams=lambda call: {"joint": torch.cat([call["hidden_states"], call["encoder_hidden_states"]], dim=1)},
        gates=lambda block, call: [block.norm.linear(block.norm.silu(call["temb"])).chunk(3, dim=1)[2].unsqueeze(1)],
        output=_single_output,
    ),
    whole_block=True,
    streams=IMAGE_TEXT,
)


HUNYUAN_VIDEO = Family(
    name="hunyuan-video",
    pipelines=("HunyuanVideoPipeline",),
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    kinds=(DOUBLE_BLOCK, SINGLE_BLOCK),
    notes="video; dual + single blocks as in Flux (single: whole block); the token refiner always runs; guidance "
          "embedding, or true CFG (negative_prompt + true_cfg_scale > 1) with cond and uncond caches",
)

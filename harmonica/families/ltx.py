"""LTX-Video (``LTXPipeline``): ``LTXVideoTransformerBlock``s over packed video tokens.

An ``LTXVideoTransformerBlock`` adds three branches to one token stream:

* ``attn1``: self-attention with rotary embeddings, gated;
* ``attn2``: cross-attention to the T5 prompt embeddings (on the un-normalised stream), ungated;
* ``ff``: the MLP, gated.

The gates come from ``scale_shift_table`` + the timestep embedding ``temb`` (``[batch, tokens or 1, 6 * dim]``:
per-token for image-conditioned calls, where the conditioning frames have their own timestep); the block adds
them in the stream's own dtype, so a fully reused block is applied without running it (per-token gates take the
torch reference of the gather-apply, not the fused kernel).

The pipeline batches classifier-free guidance into one forward ([uncond; cond], ``cache_context("cond_uncond")``)
and passes the scheduler's timestep unscaled.
"""

from __future__ import annotations

from .spec import ONE_STREAM, BlockKind, Branch, Family, Fused


def _ltx_gates(block, call: dict) -> list:
    """``gate_msa`` and ``gate_mlp`` as the block computes them; attn2 is ungated."""
    temb, hidden = call["temb"], call["hidden_states"]
    table = block.scale_shift_table
    values = table[None, None].to(temb.device) + temb.reshape(hidden.size(0), temb.size(1), table.shape[0], -1)
    _, _, gate_msa, _, _, gate_mlp = values.unbind(dim=2)
    return [gate_msa, None, gate_mlp]


LTX_BLOCK = BlockKind(
    block_class="LTXVideoTransformerBlock",
    branches=lambda block: (Branch("attn1", "attn1"), Branch("attn2", "attn2"), Branch("ff", "ff")),
    fused=Fused(
        streams=lambda call: {"image": call["hidden_states"]},
        gates=_ltx_gates,
        output=lambda call, streams: streams["image"],
    ),
    streams=ONE_STREAM,
)


LTX = Family(
    name="ltx",
    pipelines=("LTXPipeline",),
    block_lists=("transformer_blocks",),
    kinds=(LTX_BLOCK,),
    notes="video; packed latent tokens; CFG batched into one forward",
)

"""CogVideoX (``CogVideoXPipeline``, CogVideoX 2B / 5B / 1.5): ``CogVideoXBlock``s over text and video tokens.

A ``CogVideoXBlock`` holds a video and a text stream and has two branches:

* ``attn1``: joint attention over [text; video], returns (video, text) tokens; the video part is added with
  ``gate_msa``, the text part with ``enc_gate_msa`` (``norm1``, ``CogVideoXLayerNormZero``);
* ``ff``: one MLP applied to the concatenation [text; video] of both normalised streams (``norm2``); its output
  is split back, the video part added with ``gate_ff``, the text part with ``enc_gate_ff``.

Both are cached un-gated, so a per-branch cache follows the block: the MLP acts token by token, so its joint
output is exactly the two streams' MLP outputs side by side (cached on a ``joint`` stream, text first), and a
reused output is split and gated by the block's own code with the current step's gates. No fused whole-block apply
is offered: ``attn1``'s parts belong to the two streams and ``ff``'s to their concatenation, which one gather-apply
per stream cannot combine; a fully reused block runs its own code, its branches reused one by one.

The pipeline batches classifier-free guidance into one forward ([uncond; cond], ``cache_context("cond_uncond")``)
and passes the scheduler's timestep unscaled (``CogVideoXDDIMScheduler``, or ``CogVideoXDPMScheduler`` for 5B).
"""

from __future__ import annotations

from .spec import IMAGE_TEXT, BlockKind, Branch, Family

COGVIDEOX_BLOCK = BlockKind(
    block_class="CogVideoXBlock",
    branches=lambda block: (Branch("attn1", "attn1", ("image", "text")), Branch("ff", "ff", ("joint",))),
    streams=IMAGE_TEXT,
)


COGVIDEOX = Family(
    name="cogvideox",
    pipelines=("CogVideoXPipeline",),
    block_lists=("transformer_blocks",),
    kinds=(COGVIDEOX_BLOCK,),
    notes="video; joint attention and one MLP over text + video (cached on a joint stream, split and gated by the "
          "block); no fused apply; CFG batched into one forward",
)

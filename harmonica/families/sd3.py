"""Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``): MMDiT ``JointTransformerBlock``s.

A ``JointTransformerBlock`` holds two token streams, image and text:

* ``attn``: joint attention over both, returns (image, text) tokens;
* ``attn2`` (SD3.5, blocks listed in ``dual_attention_layers``): a second self-attention on the image
  tokens, from the same normalised input (``SD35AdaLayerNormZeroX``);
* ``ff`` (image) and ``ff_context`` (text) MLPs.

Every branch output is gated (adaLN-zero: ``norm1`` for the image stream, ``norm1_context`` for the
text stream). The last block has ``context_pre_only=True``: no ``ff_context``, its text output is
unused (the block returns ``(None, hidden_states)``) and ``norm1_context`` has no gates. Its ``attn``
still returns both parts, and both are cached; the text part is never read by the block.

The pipeline batches classifier-free guidance into one forward ([uncond; cond]) and passes the
scheduler's timestep unscaled.
"""

from __future__ import annotations

import torch

from .denoising import Denoiser, PromptsMixin
from .dit import basic_check
from .pixart import text_call_kwargs
from .spec import BlockKind, Branch, Family, Fused


def joint_branches(block) -> tuple[Branch, ...]:
    branches = [Branch("attn", "attn", ("image", "text"))]
    if block.attn2 is not None:
        branches.append(Branch("attn2", "attn2", ("image",)))
    branches.append(Branch("ff", "ff", ("image",)))
    if block.ff_context is not None:
        branches.append(Branch("ff_context", "ff_context", ("text",)))
    return tuple(branches)


def _joint_gates(block, call: dict) -> list:
    """Gates of a (not context_pre_only) JointTransformerBlock, as its norms compute them."""
    temb = call["temb"]
    norm = block.norm1
    img = norm.linear(norm.silu(temb)).chunk(9 if block.use_dual_attention else 6, dim=1)
    ctx = block.norm1_context
    txt = ctx.linear(ctx.silu(temb)).chunk(6, dim=1)
    # branch elements in order: attn -> (image, text), [attn2 -> image], ff -> image, ff_context -> text
    gates = [img[2].unsqueeze(1), txt[2].unsqueeze(1)]
    if block.use_dual_attention:
        gates.append(img[8].unsqueeze(1))
    return gates + [img[5].unsqueeze(1), txt[5].unsqueeze(1)]


def _fusable(block) -> bool:
    # the last block (context_pre_only) returns (None, image): a fused run's output cannot depend on the
    # block, so that block runs its own code (its branches are still reused one by one)
    return (not block.context_pre_only and getattr(block.norm1, "emb", None) is None
            and type(block.norm1).__name__ in ("AdaLayerNormZero", "SD35AdaLayerNormZeroX")
            and type(block.norm1_context).__name__ == "AdaLayerNormZero")


JOINT_BLOCK = BlockKind(
    block_class="JointTransformerBlock",
    branches=joint_branches,
    check=basic_check,
    fused=Fused(
        streams=lambda call: {"image": call["hidden_states"], "text": call["encoder_hidden_states"]},
        gates=_joint_gates,
        output=lambda call, streams: (streams["text"], streams["image"]),
        applies=_fusable,
    ),
)


class SD3Denoiser(PromptsMixin, Denoiser):
    """One step of StableDiffusion3Pipeline's loop: CFG batched as [uncond; cond], timestep unscaled."""

    def __init__(self, pipe, guidance_scale: float = 7.0, prompts=None, height: int | None = None,
                 width: int | None = None, max_sequence_length: int = 256):
        super().__init__(pipe, guidance_scale)
        self.prompts = list(prompts or [])
        side = pipe.default_sample_size * pipe.vae_scale_factor
        self.height, self.width = height or side, width or side
        self.max_sequence_length = max_sequence_length

    def set_timesteps(self, scheduler, num_steps: int) -> None:
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (calculate_shift,
                                                                                        retrieve_timesteps)

        kwargs = {}
        config = scheduler.config
        if config.get("use_dynamic_shifting", None):
            patch = self.transformer.config.patch_size
            seq_len = (self.height // self.pipe.vae_scale_factor // patch) * (self.width // self.pipe.vae_scale_factor
                                                                                // patch)
            kwargs["mu"] = calculate_shift(seq_len, config.get("base_image_seq_len", 256),
                                           config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                           config.get("max_shift", 1.16))
        retrieve_timesteps(scheduler, num_steps, self.device, **kwargs)

    def initial_latents(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        latents = self.pipe.prepare_latents(batch, self.transformer.config.in_channels, self.height, self.width,
                                            torch.float32, "cpu", generator)
        return latents.to(self.device, self.transformer.dtype)

    @torch.no_grad()
    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        prompts = self.pick_prompts(batch, generator)
        embeds, neg_embeds, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=self.cfg, device=self.device,
            max_sequence_length=self.max_sequence_length)
        if self.cfg:
            embeds, pooled = torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])
        dtype = self.transformer.dtype
        return {"encoder_hidden_states": embeds.to(dtype), "pooled_projections": pooled.to(dtype)}

    def forward(self, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        if self.cfg:
            x = torch.cat([x, x])
        timestep = torch.as_tensor(t, device=x.device).reshape(-1)[:1].expand(x.shape[0])
        return self.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=cond["encoder_hidden_states"],
                                pooled_projections=cond["pooled_projections"], return_dict=False)[0]

    def guided(self, raw: torch.Tensor) -> torch.Tensor:
        if not self.cfg:
            return raw
        uncond, text = raw.chunk(2)
        return self.combine(text, uncond)


def sd3_call_kwargs(pipe, conditions, guidance_scale: float | None = None, **extra) -> dict:
    """Prompts (the second and third encoders get the same ones, as the pipeline does by default)."""
    return text_call_kwargs(pipe, conditions, **extra)


SD3 = Family(
    name="sd3",
    pipelines=("StableDiffusion3Pipeline",),
    block_lists=("transformer_blocks",),
    kinds=(JOINT_BLOCK,),
    denoiser=SD3Denoiser,
    call_kwargs=sd3_call_kwargs,
    notes="MMDiT joint blocks (SD3.5: dual attention); the last block has no ff_context; CFG batched into one "
          "forward; skip-layer guidance (skip_guidance_layers) is not supported: it runs an extra forward per step",
)

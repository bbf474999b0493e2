"""Qwen-Image (``QwenImagePipeline``): dual-stream MMDiT ``QwenImageTransformerBlock``s.

A ``QwenImageTransformerBlock`` holds an image and a text stream:

* ``attn``: joint attention over both, returns (image, text) tokens;
* ``img_mlp`` (image) and ``txt_mlp`` (text).

Every branch output is gated: ``img_mod`` / ``txt_mod`` (SiLU + Linear on the timestep embedding)
give shift, scale and gate for each half of the block (``_modulate``). Blocks built with
``zero_cond_t`` (edit models) take per-token gates from a second timestep; they are not fused.

The pipeline passes ``t / 1000`` (cast to the latents' dtype) and runs true CFG (``negative_prompt``
+ ``true_cfg_scale > 1``) as two forwards per step inside ``cache_context("cond")`` /
``("uncond")``, then rescales the combined prediction to the conditional one's norm.
"""

from __future__ import annotations

import torch

from .denoising import TrueCFGDenoiser, uses_true_cfg
from .flux import _clip16
from .pixart import text_call_kwargs
from .spec import BlockKind, Branch, Family, Fused


def _qwen_gates(block, call: dict) -> list:
    temb = call["temb"]
    img1, img2 = block.img_mod(temb).chunk(2, dim=-1)
    txt1, txt2 = block.txt_mod(temb).chunk(2, dim=-1)

    def gate(params):  # _modulate: shift, scale, gate = params.chunk(3); gate.unsqueeze(1)
        return params.chunk(3, dim=-1)[2].unsqueeze(1)

    # branch elements in order: attn -> (image, text), img_mlp -> image, txt_mlp -> text
    return [gate(img1), gate(txt1), gate(img2), gate(txt2)]


QWEN_BLOCK = BlockKind(
    block_class="QwenImageTransformerBlock",
    branches=lambda block: (Branch("attn", "attn", ("image", "text")), Branch("img_mlp", "img_mlp", ("image",)),
                            Branch("txt_mlp", "txt_mlp", ("text",))),
    fused=Fused(
        streams=lambda call: {"image": call["hidden_states"], "text": call["encoder_hidden_states"]},
        gates=_qwen_gates,
        output=lambda call, streams: (_clip16(streams["text"]), _clip16(streams["image"])),
        applies=lambda block: not getattr(block, "zero_cond_t", False),
    ),
)


NEGATIVE_PROMPT = " "  # the model card's empty negative prompt


class QwenImageDenoiser(TrueCFGDenoiser):
    """One step of QwenImagePipeline's loop: packed latents, shifted sigmas, t / 1000, true CFG with the
    norm rescale (or a guidance embedding on distilled models)."""

    default_guidance = 4.0

    @property
    def _latent_side(self) -> tuple[int, int]:
        f = self.pipe.vae_scale_factor * 2
        return self.height // f, self.width // f

    def set_timesteps(self, scheduler, num_steps: int) -> None:
        import numpy as np
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift, retrieve_timesteps

        config = scheduler.config
        h, w = self._latent_side
        mu = calculate_shift(h * w, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        retrieve_timesteps(scheduler, num_steps, self.device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)

    def _dtype(self) -> torch.dtype:
        """The pipeline keeps latents in the prompt embeddings' dtype (the text encoder's)."""
        encoder = getattr(self.pipe, "text_encoder", None)
        return encoder.dtype if encoder is not None else self.transformer.dtype

    def initial_latents(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        channels = self.transformer.config.in_channels // 4
        latents = self.pipe.prepare_latents(batch, channels, self.height, self.width, torch.float32, "cpu", generator)
        return latents.to(self.device, self._dtype())

    @torch.no_grad()
    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        prompts = self.pick_prompts(batch, generator)
        encode = dict(device=self.device, max_sequence_length=self.max_sequence_length)
        cond = {"cond": self.pipe.encode_prompt(prompt=prompts, **encode)}
        if self.true_cfg:
            cond["uncond"] = self.pipe.encode_prompt(prompt=[NEGATIVE_PROMPT] * batch, **encode)
        cond["img_shapes"] = [[(1, *self._latent_side)]] * batch
        return cond

    def _run(self, x, t, text, cond):
        embeds, mask = text
        return self.transformer(hidden_states=x, timestep=self.step_timestep(x, t) / 1000, guidance=self.guidance(x),
                                encoder_hidden_states_mask=mask, encoder_hidden_states=embeds,
                                img_shapes=cond["img_shapes"], return_dict=False)[0]

    def guided(self, raw: torch.Tensor) -> torch.Tensor:
        if not self.true_cfg:
            return raw
        cond, uncond = raw.chunk(2)
        combined = self.combine(cond, uncond)  # QwenImagePipeline rescales the guided output to the cond norm
        return combined * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))


def qwenimage_call_kwargs(pipe, conditions, guidance_scale: float | None = None, **extra) -> dict:
    kw = text_call_kwargs(pipe, conditions, **extra)
    if guidance_scale is not None:
        if uses_true_cfg(pipe, guidance_scale):
            kw.update(negative_prompt=[NEGATIVE_PROMPT] * len(kw["prompt"]), true_cfg_scale=guidance_scale)
        elif pipe.transformer.config.guidance_embeds:
            kw["guidance_scale"] = guidance_scale
    return kw


QWENIMAGE = Family(
    name="qwenimage",
    pipelines=("QwenImagePipeline",),
    block_lists=("transformer_blocks",),
    kinds=(QWEN_BLOCK,),
    denoiser=QwenImageDenoiser,
    call_kwargs=qwenimage_call_kwargs,
    timestep_scale=lambda transformer: 1000.0,
    notes="dual-stream joint blocks; true CFG runs cond and uncond forwards, each with its own cache",
)

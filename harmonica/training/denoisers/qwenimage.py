"""Router training's denoiser for Qwen-Image (``QwenImagePipeline``): packed latents, t / 1000, true CFG
with the norm rescale."""

from __future__ import annotations

import torch

from ...families.qwenimage import NEGATIVE_PROMPT
from .base import TrueCFGDenoiser


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

"""Router training's denoiser for LTX-Video (``LTXPipeline``): packed float32 video latents, resolution-shifted
sigmas, CFG batched, the timestep unscaled."""

from __future__ import annotations

import torch

from .base import BatchedCFGMixin, Denoiser, PromptsMixin, VideoLatentsMixin


class LTXDenoiser(VideoLatentsMixin, BatchedCFGMixin, PromptsMixin, Denoiser):
    """One step of LTXPipeline's loop: packed float32 latents, sigmas shifted by the video's token count, CFG
    batched as [uncond; cond], the rotary interpolation of the frame rate (no guidance rescale)."""

    def __init__(self, pipe, guidance_scale: float = 3.0, prompts=None, height: int | None = None,
                 width: int | None = None, max_sequence_length: int = 128, num_frames: int | None = None,
                 frame_rate: int = 25):
        super().__init__(pipe, guidance_scale)
        self.prompts = list(prompts or [])
        self.height, self.width, self.num_frames = height or 512, width or 704, num_frames or 161
        self.max_sequence_length = max_sequence_length
        spatial, temporal = pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio
        self.latent_size = ((self.num_frames - 1) // temporal + 1, self.height // spatial, self.width // spatial)
        self.rope_interpolation_scale = (temporal / frame_rate, spatial, spatial)

    def set_timesteps(self, scheduler, num_steps: int) -> None:
        import numpy as np
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, retrieve_timesteps

        frames, h, w = self.latent_size
        config = scheduler.config
        mu = calculate_shift(frames * h * w, config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        retrieve_timesteps(scheduler, num_steps, self.device, sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)

    @torch.no_grad()
    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        prompts = self.pick_prompts(batch, generator)
        embeds, mask, neg_embeds, neg_mask = self.pipe.encode_prompt(
            prompts, do_classifier_free_guidance=self.cfg, max_sequence_length=self.max_sequence_length,
            device=self.device)
        if self.cfg:
            embeds, mask = torch.cat([neg_embeds, embeds]), torch.cat([neg_mask, mask])
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def forward(self, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        embeds = cond["encoder_hidden_states"]
        model_input = (torch.cat([x, x]) if self.cfg else x).to(embeds.dtype)
        timestep = torch.as_tensor(t, device=x.device).reshape(-1)[:1].expand(model_input.shape[0])
        frames, h, w = self.latent_size
        out = self.transformer(hidden_states=model_input, encoder_hidden_states=embeds, timestep=timestep,
                               encoder_attention_mask=cond["encoder_attention_mask"], num_frames=frames, height=h,
                               width=w, rope_interpolation_scale=self.rope_interpolation_scale, return_dict=False)[0]
        return out.float()

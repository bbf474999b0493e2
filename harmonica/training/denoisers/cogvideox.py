"""Router training's denoiser for CogVideoX (``CogVideoXPipeline``): video latents [batch, frames, channels, h,
w], CFG batched, the rotary embeddings of the video's size, stepped with ``CogVideoXDDIMScheduler``."""

from __future__ import annotations

import torch

from .base import BatchedCFGMixin, Denoiser, PromptsMixin


class CogVideoXDenoiser(BatchedCFGMixin, PromptsMixin, Denoiser):
    """One step of CogVideoXPipeline's loop: latents in the prompt embeddings' dtype, CFG batched as
    [uncond; cond], the timestep unscaled (no dynamic CFG)."""

    def __init__(self, pipe, guidance_scale: float = 6.0, prompts=None, height: int | None = None,
                 width: int | None = None, max_sequence_length: int = 226, num_frames: int | None = None):
        super().__init__(pipe, guidance_scale)
        self.prompts = list(prompts or [])
        config = self.transformer.config
        self.height = height or config.sample_height * pipe.vae_scale_factor_spatial
        self.width = width or config.sample_width * pipe.vae_scale_factor_spatial
        num_frames = num_frames or 49
        latent_frames = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        if config.patch_size_t is not None and latent_frames % config.patch_size_t:  # CogVideoX 1.5 pads, as its pipe
            num_frames += (config.patch_size_t - latent_frames % config.patch_size_t) * pipe.vae_scale_factor_temporal
        self.num_frames = num_frames
        self.max_sequence_length = max_sequence_length
        self._check(pipe.scheduler)

    @staticmethod
    def _check(scheduler) -> None:
        if type(scheduler).__name__ == "CogVideoXDPMScheduler":
            raise ValueError("router training steps the scheduler as step(output, t, latents); CogVideoXDPMScheduler "
                             "(CogVideoX-5B's) also takes the previous step's prediction: train with --scheduler "
                             "CogVideoXDDIMScheduler and sample with that scheduler")

    def set_timesteps(self, scheduler, num_steps: int) -> None:
        self._check(scheduler)
        scheduler.set_timesteps(num_steps, device=self.device)

    def _dtype(self) -> torch.dtype:
        """The pipeline keeps latents in the prompt embeddings' dtype (the text encoder's)."""
        encoder = getattr(self.pipe, "text_encoder", None)
        return encoder.dtype if encoder is not None else self.transformer.dtype

    def initial_latents(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        latents = self.pipe.prepare_latents(batch, self.transformer.config.in_channels, self.num_frames, self.height,
                                            self.width, torch.float32, "cpu", generator)
        return latents.to(self.device, self._dtype())

    @torch.no_grad()
    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        prompts = self.pick_prompts(batch, generator)
        embeds, neg_embeds = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=self.cfg,
                                                     max_sequence_length=self.max_sequence_length, device=self.device)
        if self.cfg:
            embeds = torch.cat([neg_embeds, embeds])
        return {"encoder_hidden_states": embeds}

    def forward(self, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        model_input = torch.cat([x, x]) if self.cfg else x
        t = torch.as_tensor(t, device=x.device)
        model_input = self.pipe.scheduler.scale_model_input(model_input, t)
        rotary = None
        if self.transformer.config.use_rotary_positional_embeddings:
            rotary = self.pipe._prepare_rotary_positional_embeddings(self.height, self.width, x.size(1), x.device)
        out = self.transformer(hidden_states=model_input, encoder_hidden_states=cond["encoder_hidden_states"],
                               timestep=t.reshape(-1)[:1].expand(model_input.shape[0]), image_rotary_emb=rotary,
                               return_dict=False)[0]
        return out.float()

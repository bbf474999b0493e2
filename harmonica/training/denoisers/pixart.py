"""Router training's denoiser for PixArt-alpha and PixArt-Sigma: prompts, CFG batched as [uncond; text]."""

from __future__ import annotations

import torch

from .base import BatchedCFGMixin, Denoiser, PromptsMixin


class PixArtDenoiser(BatchedCFGMixin, PromptsMixin, Denoiser):
    """Text-conditional PixArt: conditioning is a batch of prompts, CFG batched as [uncond; text]."""

    def __init__(self, pipe, guidance_scale: float = 4.5, prompts=None, max_sequence_length: int = 120):
        super().__init__(pipe, guidance_scale)
        self.prompts = list(prompts or [])
        self.max_sequence_length = max_sequence_length

    @torch.no_grad()
    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        prompts = self.pick_prompts(batch, generator)
        kwargs = dict(do_classifier_free_guidance=self.cfg, device=self.device, clean_caption=False)
        if "max_sequence_length" in self.pipe.encode_prompt.__code__.co_varnames:
            kwargs["max_sequence_length"] = self.max_sequence_length
        embeds, mask, neg_embeds, neg_mask = self.pipe.encode_prompt(prompts, **kwargs)
        if self.cfg:
            embeds, mask = torch.cat([neg_embeds, embeds]), torch.cat([neg_mask, mask])
        return {"encoder_hidden_states": embeds.to(self.transformer.dtype), "encoder_attention_mask": mask}

    def _added_cond_kwargs(self, n: int, device) -> dict:
        config = self.transformer.config
        if config.sample_size == 128:  # PixArt-alpha 1024 uses micro-conditions
            side = float(config.sample_size * 8)
            return {
                "resolution": torch.tensor([[side, side]] * n, device=device, dtype=self.transformer.dtype),
                "aspect_ratio": torch.tensor([[1.0]] * n, device=device, dtype=self.transformer.dtype),
            }
        return {"resolution": None, "aspect_ratio": None}

    def forward(self, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        if self.cfg:
            x = torch.cat([x, x])
        t = torch.as_tensor(t, device=x.device).reshape(-1)[:1].expand(x.shape[0])
        return self.transformer(
            x,
            encoder_hidden_states=cond["encoder_hidden_states"],
            encoder_attention_mask=cond["encoder_attention_mask"],
            timestep=t,
            added_cond_kwargs=self._added_cond_kwargs(x.shape[0], x.device),
            return_dict=False,
        )[0]

"""One denoiser call of a pipeline, outside the pipeline's own loop, for router training.

Router training drives the denoising loop step by step (student, teacher, optimizer step, scheduler
step), so it needs what the pipeline does inside one iteration: draw the initial latents and the
conditioning, run the transformer on the classifier-free-guidance batch, and turn its output into
what the scheduler steps with. Each supported pipeline family has one adapter here.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..pipeline import num_classes_of


class _LatentDenoiser:
    """What every adapter shares: the transformer, guidance, and the initial latents."""

    def __init__(self, pipe, guidance_scale: float):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.guidance_scale = guidance_scale
        self.channels = self.transformer.config.in_channels
        self.size = self.transformer.config.sample_size

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1

    def initial_latents(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        x = torch.randn((batch, self.channels, self.size, self.size), generator=generator)
        return x.to(self.transformer.device, self.transformer.dtype)


class DiTDenoiser(_LatentDenoiser):
    """Class-conditional DiT (``DiTPipeline``): conditioning is a batch of class labels."""

    null_class = 1000  # DiTPipeline hard-codes it

    def __init__(self, pipe, guidance_scale: float = 1.5, num_classes: int | None = None):
        super().__init__(pipe, guidance_scale)
        self.num_classes = num_classes or num_classes_of(pipe)

    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        labels = torch.randint(0, self.num_classes, (batch,), generator=generator)
        return {"class_labels": labels.to(self.transformer.device)}

    def forward(self, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        """Raw transformer output on the CFG batch ([cond; null] when guidance is on)."""
        labels = cond["class_labels"]
        if self.cfg:
            x = torch.cat([x, x])
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
        t = torch.as_tensor(t, device=x.device).reshape(-1)[:1].expand(x.shape[0])
        return self.transformer(x, timestep=t, class_labels=labels).sample

    def guided(self, raw: torch.Tensor) -> torch.Tensor:
        """What the scheduler steps with, for the un-doubled latents."""
        out = raw
        if self.transformer.config.out_channels // 2 == self.channels:  # learned sigma: drop the variance
            out = out[:, : self.channels]
        if self.cfg:
            cond, uncond = out.chunk(2)
            out = uncond + self.guidance_scale * (cond - uncond)
        return out


class PixArtDenoiser(_LatentDenoiser):
    """Text-conditional PixArt-alpha / PixArt-Sigma: conditioning is a batch of prompts."""

    def __init__(self, pipe, prompts: Sequence[str], guidance_scale: float = 4.5, max_sequence_length: int = 120):
        if not prompts:
            raise ValueError("PixArt router training needs prompts (a text or JSON file, or a datasets dataset)")
        super().__init__(pipe, guidance_scale)
        self.prompts = list(prompts)
        self.max_sequence_length = max_sequence_length

    @torch.no_grad()
    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        idx = torch.randint(0, len(self.prompts), (batch,), generator=generator).tolist()
        prompts = [self.prompts[i] for i in idx]
        kwargs = dict(do_classifier_free_guidance=self.cfg, device=self.transformer.device, clean_caption=False)
        if "max_sequence_length" in self.pipe.encode_prompt.__code__.co_varnames:
            kwargs["max_sequence_length"] = self.max_sequence_length
        embeds, mask, neg_embeds, neg_mask = self.pipe.encode_prompt(prompts, **kwargs)
        if self.cfg:
            embeds, mask = torch.cat([neg_embeds, embeds]), torch.cat([neg_mask, mask])
        return {"encoder_hidden_states": embeds.to(self.transformer.dtype), "encoder_attention_mask": mask}

    def _added_cond_kwargs(self, n: int, device) -> dict:
        if self.transformer.config.sample_size == 128:  # PixArt-alpha 1024 uses micro-conditions
            side = float(self.size * 8)
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

    def guided(self, raw: torch.Tensor) -> torch.Tensor:
        out = raw
        if self.cfg:
            uncond, text = out.chunk(2)
            out = uncond + self.guidance_scale * (text - uncond)
        if self.transformer.config.out_channels // 2 == self.channels:
            out = out.chunk(2, dim=1)[0]
        return out


def denoiser_for(pipe, guidance_scale: float, prompts: Sequence[str] | None = None):
    name = type(pipe).__name__
    if name == "DiTPipeline":
        return DiTDenoiser(pipe, guidance_scale)
    if name in ("PixArtAlphaPipeline", "PixArtSigmaPipeline"):
        return PixArtDenoiser(pipe, prompts or [], guidance_scale)
    from ..pipeline import _unsupported

    raise _unsupported(name)

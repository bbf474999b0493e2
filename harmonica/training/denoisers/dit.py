"""Router training's denoiser for DiT (``DiTPipeline``): class labels, CFG batched as [cond; null]."""

from __future__ import annotations

import torch

from ...families.dit import num_classes_of
from .base import Denoiser


class DiTDenoiser(Denoiser):
    """Class-conditional DiT: conditioning is a batch of class labels, CFG batched as [cond; null]."""

    null_class = 1000  # DiTPipeline hard-codes it

    def __init__(self, pipe, guidance_scale: float = 1.5, prompts=None, num_classes: int | None = None):
        super().__init__(pipe, guidance_scale)
        self.num_classes = num_classes or num_classes_of(pipe)

    def conditions(self, batch: int, generator: torch.Generator) -> dict:
        labels = torch.randint(0, self.num_classes, (batch,), generator=generator)
        return {"class_labels": labels.to(self.device)}

    def forward(self, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        """Raw transformer output on the CFG batch ([cond; null] when guidance is on)."""
        labels = cond["class_labels"]
        if self.cfg:
            x = torch.cat([x, x])
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
        t = torch.as_tensor(t, device=x.device).reshape(-1)[:1].expand(x.shape[0])
        return self.transformer(x, timestep=t, class_labels=labels).sample

    def guided(self, raw: torch.Tensor) -> torch.Tensor:
        out = raw
        channels = self.transformer.config.in_channels
        if self.transformer.config.out_channels // 2 == channels:  # learned sigma: drop the variance
            out = out[:, :channels]
        if self.cfg:
            out = self.combine(*out.chunk(2))
        return out

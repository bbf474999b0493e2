"""Pictures: image grids and router heatmaps (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def save_image_grid(images: torch.Tensor, path: str | Path, scale: int = 2, pad: int = 1) -> Path:
    """Save images laid out as a grid. ``images``: [rows, cols, C, H, W] or [N, C, H, W] in [0, 1]."""
    if images.dim() == 4:
        n = images.shape[0]
        cols = int(np.ceil(np.sqrt(n)))
        rows = int(np.ceil(n / cols))
        filler = torch.ones(rows * cols - n, *images.shape[1:])
        images = torch.cat([images, filler]).reshape(rows, cols, *images.shape[1:])
    rows, cols, c, h, w = images.shape
    canvas = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for r in range(rows):
        for k in range(cols):
            y, x = pad + r * (h + pad), pad + k * (w + pad)
            canvas[:, y : y + h, x : x + w] = images[r, k].float().clamp(0, 1)
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(array)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path

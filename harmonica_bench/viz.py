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


def save_router_heatmap(router, path: str | Path, threshold: float | None = None, title: str | None = None) -> Path:
    """PNG of a router's schedule: sampling steps (rows) x block branches (columns), computed vs reused,
    with the score in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    mask = router.compute_mask(threshold).numpy()
    scores = router.scores().detach().numpy()
    blocks = router.layout.blocks
    starts = [sum(len(b) for _, b in blocks[:i]) for i in range(len(blocks))]  # first slot of each block
    fig_w = max(6.0, 0.28 * mask.shape[1] + 2)
    fig_h = max(3.0, 0.28 * mask.shape[0] + 1.6)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=110)
    ax.imshow(mask, cmap=ListedColormap(["#f4a261", "#264653"]), vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for s in range(mask.shape[0]):
        for c in range(mask.shape[1]):
            ax.text(c, s, f"{scores[s, c]:.1f}".lstrip("0"), ha="center", va="center", fontsize=5,
                    color="white" if mask[s, c] else "black")
    ax.set_xticks([start + (len(b) - 1) / 2 for start, (_, b) in zip(starts, blocks)])
    ax.set_xticklabels([str(i) for i in range(len(blocks))], fontsize=7)
    for start in starts[1:]:
        ax.axvline(start - 0.5, color="white", linewidth=1.2)
    groups = "; ".join(f"{name} x{count}: {', '.join(branches)}" for name, count, branches in router.layout.groups)
    ax.set_xlabel(f"block (branches in each: {groups})")
    ax.set_ylabel("sampling step")
    ax.set_yticks(range(0, mask.shape[0], max(1, mask.shape[0] // 10)))
    usage = 1 - mask.mean()
    rebuilt = "reused from cache" if router.history == 1 else f"forecast from the last {router.history} computed outputs"
    ax.set_title(title or f"router schedule: dark = computed, light = {rebuilt} (cache usage {usage:.0%})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure to ``path`` (folders made as needed) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

"""The judge: a small CNN classifier of the shapes data.

It gives two measurements of generated images offline: class accuracy (does the image show the
class it was asked for?) and a feature space for Frechet distance / KID through torch-fidelity
(see ``harmonica_bench.evaluation.metrics``). Trained with noise, blur, blockiness and VAE-reconstruction
augmentation, so that its verdict holds on images that are close to, but not exactly, real renders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .data import NUM_CLASSES


class ShapesJudge(nn.Module, PyTorchModelHubMixin, library_name="harmonica", tags=["harmonica", "judge"]):
    """CNN on 32x32 RGB images in [-1, 1]; ``features`` are the 128-d penultimate activations."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 32, feature_dim: int = 128):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)
            )

        self.body = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 16, feature_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        return torch.cat([self(b).argmax(-1) for b in x.split(batch_size)])


def blur3x3(x: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (kernel[:, None] * kernel[None, :]) / 16
    kernel = kernel.expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])


def blocky(x: torch.Tensor, block: int = 4) -> torch.Tensor:
    """Each 4x4 block replaced by its mean (the blockiness of JPEG at a low quality)."""
    return F.interpolate(F.avg_pool2d(x, block), scale_factor=block, mode="nearest")


def perturb(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random degradations of images in [-1, 1]: Gaussian noise (sigma up to 0.2), 3x3 blur, and a
    blend with a block-averaged copy. Each is applied to a random half of the batch."""
    n = x.shape[0]

    def coin():
        return (torch.rand(n, 1, 1, 1, generator=generator) < 0.5).to(x)

    x = torch.lerp(x, blur3x3(x), coin())
    alpha = coin() * torch.rand(n, 1, 1, 1, generator=generator).to(x) * 0.6
    x = torch.lerp(x, blocky(x), alpha)
    sigma = coin() * torch.rand(n, 1, 1, 1, generator=generator).to(x) * 0.2
    x = x + sigma * torch.randn(x.shape, generator=generator).to(x)
    return x.clamp(-1, 1)


# ---------------------------------------------------------------------------------------------
# Colour judge of the captioned data (text-to-image model): no weights, a rule on the pixels.
# The background is the median of the 1-pixel border (a shape never covers more than a few border
# pixels: its centre keeps 1.05 radii from every edge); the shape colour is the median of the
# pixels farthest from that background (at least half the largest distance, which keeps the
# anti-aliased edge out). Both go to the nearest palette colour (RGB distance). When no pixel is at
# least MIN_SHAPE_DISTANCE from the background the image shows no shape and the foreground is -1.

MIN_SHAPE_DISTANCE = 40.0  # RGB units (0-255); the palette's closest two colours are 92 apart


def _as_uint8_nhwc(images):
    """uint8 [N, H, W, 3] numpy from uint8 NHWC (numpy or torch), uint8 NCHW (torch, as the evaluation
    harness and torch-fidelity hold images) or float NCHW in [0, 1] (torch)."""
    import numpy as np

    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            if images.dim() == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
                images = images.permute(0, 2, 3, 1)
            return images.cpu().numpy()
        images = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"numpy images must be uint8 NHWC, got {images.dtype}")
    return images


def colour_predictions(images):
    """Predicted (foreground, background) palette ids, int64 [N, 2]; foreground -1 where no shape."""
    import numpy as np

    from .data import COLOUR_RGB

    x = _as_uint8_nhwc(images).astype(np.float32)
    n = x.shape[0]
    border = np.concatenate([x[:, 0, :, :], x[:, -1, :, :], x[:, 1:-1, 0, :], x[:, 1:-1, -1, :]], axis=1)
    bg = np.median(border, axis=1)  # [N, 3]
    dist = np.linalg.norm(x - bg[:, None, None, :], axis=-1).reshape(n, -1)  # [N, H*W]
    pixels = x.reshape(n, -1, 3)
    fg = np.empty_like(bg)
    for i in range(n):
        far = dist[i] >= 0.5 * dist[i].max()
        fg[i] = np.median(pixels[i][far], axis=0)
    palette = COLOUR_RGB.astype(np.float32)

    def nearest(c):
        return np.linalg.norm(c[:, None, :] - palette[None], axis=-1).argmin(1)

    pred = np.stack([nearest(fg), nearest(bg)], axis=1).astype(np.int64)
    pred[dist.max(1) < MIN_SHAPE_DISTANCE, 0] = -1
    return pred


def _colour_targets(captions_or_colour_ids):
    import numpy as np

    from .data import parse_caption

    if len(captions_or_colour_ids) and isinstance(captions_or_colour_ids[0], str):
        return np.asarray([parse_caption(c)[1:] for c in captions_or_colour_ids], dtype=np.int64)
    return np.asarray(captions_or_colour_ids, dtype=np.int64).reshape(-1, 2)


def colour_report(images, captions_or_colour_ids) -> dict:
    """Fractions of images whose shape colour ("foreground"), background colour ("background") and
    both ("both") match the caption (or (foreground, background) palette ids [N, 2])."""
    target = _colour_targets(captions_or_colour_ids)
    pred = colour_predictions(images)
    if len(pred) != len(target):
        raise ValueError(f"{len(pred)} images but {len(target)} captions / colour ids")
    fg, bg = pred[:, 0] == target[:, 0], pred[:, 1] == target[:, 1]
    return {"foreground": float(fg.mean()), "background": float(bg.mean()), "both": float((fg & bg).mean())}


def colour_accuracy(images_uint8, captions_or_colour_ids) -> float:
    """Fraction of images whose shape AND background colours both match the caption (or colour ids)."""
    return colour_report(images_uint8, captions_or_colour_ids)["both"]

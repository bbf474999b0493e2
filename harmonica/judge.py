"""The judge: a small CNN classifier of the shapes data.

It gives two measurements of generated images offline: class accuracy (does the image show the
class it was asked for?) and a feature space for Frechet distance / KID through torch-fidelity
(see ``harmonica.evaluation.metrics``). Trained with noise, blur, blockiness and VAE-reconstruction
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

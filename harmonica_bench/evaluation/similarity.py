"""Agreement of cached images with the uncached images of the same seeds: PSNR and SSIM.

torch-fidelity does not compute them and torchmetrics is not a dependency, so they are implemented here
(SSIM: Wang et al. 2004, Gaussian window 11 / sigma 1.5, K1 0.01, K2 0.03, 'valid' filtering as in the
authors' reference code, averaged over channels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB of ``[N, C, H, W]`` images (uint8 is read as 0..255 -> 0..1). Identical
    images give ``inf``."""
    a, b = _as_float(a), _as_float(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM of ``[N, C, H, W]`` images (Wang et al. 2004): Gaussian-weighted local means,
    variances and covariance over 'valid' windows, the SSIM map averaged over pixels and channels.
    Images smaller than the window use a window as large as the image."""
    a, b = _as_float(a), _as_float(b)
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"expected two [N, C, H, W] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    size = min(window, a.shape[-1], a.shape[-2])
    g = _gaussian_window(size, sigma, a.device, torch.float64)
    c = a.shape[1]
    a, b = a.double(), b.double()

    def blur(x):
        x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, size), groups=c)
        return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, size, 1), groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return smap.flatten(1).mean(1).float()


def similarity(cached: torch.Tensor, uncached: torch.Tensor) -> dict:
    """Agreement of cached with uncached images of the same seeds.

    ``psnr``: mean per-image PSNR (dB) over the images that differ at all (identical pairs have an
    infinite PSNR; they are counted in ``identical`` instead); ``psnr_pooled``: PSNR of the mean squared
    error over all images; ``ssim``: mean per-image SSIM; ``mean_abs_diff`` in [0, 1] pixel units."""
    p = psnr(cached, uncached)
    finite = p[torch.isfinite(p)]
    mse = (_as_float(cached) - _as_float(uncached)).pow(2).mean().item()
    return {
        "psnr": finite.mean().item() if len(finite) else math.inf,
        "psnr_pooled": 10 * math.log10(1.0 / mse) if mse > 0 else math.inf,
        "ssim": ssim(cached, uncached).mean().item(),
        "identical": int((~torch.isfinite(p)).sum().item()),
        "mean_abs_diff": (_as_float(cached) - _as_float(uncached)).abs().mean().item(),
    }

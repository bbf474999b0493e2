"""What generated images are scored against: reference images (FD / KID) and the judge (class
accuracy) of the embedded model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..shapes import SHAPES


def default_judge(pipeline_path: str | Path | None) -> Path | None:
    """``<pipeline>/judge`` when the pipeline is a local folder that ships one (the embedded DiT); the
    embedded Flux-style model is judged by the same judge (``SHAPES.judge_for``)."""
    return SHAPES.judge_for(pipeline_path)


def load_judge(path: str | Path | None, device: str | torch.device = "cpu"):
    if path is None:
        return None
    from ..judge import ShapesJudge

    return ShapesJudge.from_pretrained(str(path)).eval().to(device)


def reference_images(reference: str, num: int) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` reference images: ``"shapes"`` (the held-out split of the embedded model's
    data), a folder of png/jpg files (sorted, the first ``num``) or an ``.npz`` (key ``images`` or
    ``arr_0``, NHWC uint8, e.g. ADM's ImageNet reference batches)."""
    if SHAPES.matches(reference):
        return SHAPES.reference_images(num)
    path = Path(reference)
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:num]
        if not files:
            raise ValueError(f"no png/jpg images in {path}")
        arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if path.suffix == ".npz":
        data = np.load(path)
        key = "images" if "images" in data else "arr_0"
        return torch.from_numpy(np.asarray(data[key][:num], dtype=np.uint8)).permute(0, 3, 1, 2).contiguous()
    raise ValueError(f"reference must be 'shapes', a folder of images or an .npz file, got {reference!r}")


def default_reference(pipeline_path) -> str | None:
    return SHAPES.name if SHAPES.serves(pipeline_path) else None

"""The procedural "shapes" dataset the embedded model is trained on.

Ten classes of simple shapes drawn at 32x32 RGB with a random colour, position, scale, rotation
and background. Every image is a pure function of ``(seed, index)``, so the dataset ships as code:
the same seed gives the same images on every machine, in any order, in any number of processes.

>>> ds = shapes_dataset(1000, seed=0)          # a datasets.Dataset with "image" and "label"
>>> images, labels = render_shapes(range(64), seed=0)   # the same pixels as uint8 numpy arrays
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "ring",
    "cross",
    "star",
    "diamond",
    "bar",
    "dot pair",
    "frame",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 32
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down, so edges are anti-aliased

# Seeds of the splits used by the project: training data, held-out data for FD, judge training.
TRAIN_SEED = 0
HELDOUT_SEED = 1


def _polygon(cx: float, cy: float, radius: float, angle: float, vertices: Sequence[tuple[float, float]]):
    """Scale, rotate and translate unit-radius vertices."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)) for x, y in vertices]


def _regular(n: int, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(math.cos(phase + 2 * math.pi * k / n), math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star() -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.42
        a = -math.pi / 2 + math.pi * k / 5
        points.append((r * math.cos(a), r * math.sin(a)))
    return points


def _cross(w: float = 0.34) -> list[tuple[float, float]]:
    return [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]


_SQUARE = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
_DIAMOND = [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]
_BAR = [(-1, -0.28), (1, -0.28), (1, 0.28), (-1, 0.28)]


def _colour_pair(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A background and a foreground colour with enough luminance contrast to see the shape."""
    while True:
        bg = rng.integers(0, 256, size=3)
        fg = rng.integers(0, 256, size=3)
        lum = lambda c: 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]  # noqa: E731
        if abs(lum(bg) - lum(fg)) >= 80:
            return tuple(int(v) for v in bg), tuple(int(v) for v in fg)


def render_shape(index: int, seed: int = TRAIN_SEED) -> tuple[np.ndarray, int]:
    """Render image ``index`` of the dataset with ``seed``: (uint8 array [32, 32, 3], label)."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(NUM_CLASSES))
    bg, fg = _colour_pair(rng)
    big = IMAGE_SIZE * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    radius = float(rng.uniform(0.22, 0.40)) * big  # half-size of the shape
    margin = radius * 1.05
    cx = float(rng.uniform(margin, big - margin))
    cy = float(rng.uniform(margin, big - margin))
    angle = float(rng.uniform(0, 2 * math.pi))
    name = CLASS_NAMES[label]
    if name == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fg)
    elif name == "ring":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fg)
        inner = radius * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=bg)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, radius, angle, _SQUARE), fill=fg)
    elif name == "frame":
        draw.polygon(_polygon(cx, cy, radius, angle, _SQUARE), fill=fg)
        draw.polygon(_polygon(cx, cy, radius * 0.55, angle, _SQUARE), fill=bg)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, radius, angle, _regular(3)), fill=fg)
    elif name == "cross":
        draw.polygon(_polygon(cx, cy, radius, angle, _cross()), fill=fg)
    elif name == "star":
        draw.polygon(_polygon(cx, cy, radius, angle, _star()), fill=fg)
    elif name == "diamond":
        draw.polygon(_polygon(cx, cy, radius, angle % math.pi / 4 - math.pi / 8, _DIAMOND), fill=fg)
    elif name == "bar":
        draw.polygon(_polygon(cx, cy, radius, angle, _BAR), fill=fg)
    elif name == "dot pair":
        d = radius * 0.58
        r = radius * 0.38
        dx, dy = d * math.cos(angle), d * math.sin(angle)
        for sx in (-1, 1):
            x, y = cx + sx * dx, cy + sx * dy
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fg)
    else:  # pragma: no cover - CLASS_NAMES and this switch are edited together
        raise AssertionError(name)
    small = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8), label


def render_shapes(indices: Iterable[int], seed: int = TRAIN_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Render several images at once: (uint8 [N, 32, 32, 3], int64 [N])."""
    images, labels = zip(*(render_shape(i, seed) for i in indices))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _generate(num_images: int, seed: int, start: int):
    for i in range(start, start + num_images):
        image, label = render_shape(i, seed)
        yield {"image": Image.fromarray(image), "label": label}


def shapes_dataset(num_images: int, seed: int = TRAIN_SEED, start: int = 0):
    """The dataset as a ``datasets.Dataset`` (features: ``image`` PIL image, ``label`` class id)."""
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASS_NAMES))}
    )
    return datasets.Dataset.from_generator(
        _generate,
        gen_kwargs={"num_images": num_images, "seed": seed, "start": start},
        features=features,
    )


def to_model_range(images_uint8: np.ndarray):
    """uint8 NHWC -> float32 NCHW tensor in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0

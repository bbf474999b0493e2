"""The procedural "shapes" dataset the embedded model is trained on.

Ten classes of simple shapes drawn at 32x32 RGB with a random colour, position, scale, rotation
and background. Every image is a pure function of ``(seed, index)``, so the dataset ships as code:
the same seed gives the same images on every machine, in any order, in any number of processes.

>>> ds = shapes_dataset(1000, seed=0)          # a datasets.Dataset with "image" and "label"
>>> images, labels = render_shapes(range(64), seed=0)   # the same pixels as uint8 numpy arrays

A captioned variant (for the text-to-image model, ``pipelines/shapes-flux``) draws the same shapes in
named palette colours with a caption ("a small red star on a white background"):

>>> ds = captioned_shapes_dataset(1000, seed=0)   # image, label, caption, foreground, background, size
>>> images, labels, colours, captions = render_captioned_shapes(range(64), seed=0)
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


def _draw_shape(label: int, bg, fg, radius_frac: float, cx: float, cy: float, angle: float) -> np.ndarray:
    """Draw one shape at 4x and box-filter it down: uint8 [32, 32, 3]. ``radius_frac`` is the half-size
    as a fraction of the image, ``cx``/``cy`` the centre in supersampled pixels."""
    big = IMAGE_SIZE * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    radius = radius_frac * big
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
    return np.asarray(small, dtype=np.uint8)


def _geometry(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Half-size (fraction of the image), centre (supersampled pixels) and rotation, in this draw order."""
    big = IMAGE_SIZE * _SUPERSAMPLE
    radius_frac = float(rng.uniform(0.22, 0.40))
    margin = radius_frac * big * 1.05
    cx = float(rng.uniform(margin, big - margin))
    cy = float(rng.uniform(margin, big - margin))
    angle = float(rng.uniform(0, 2 * math.pi))
    return radius_frac, cx, cy, angle


def render_shape(index: int, seed: int = TRAIN_SEED) -> tuple[np.ndarray, int]:
    """Render image ``index`` of the dataset with ``seed``: (uint8 array [32, 32, 3], label)."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(NUM_CLASSES))
    bg, fg = _colour_pair(rng)
    radius_frac, cx, cy, angle = _geometry(rng)
    return _draw_shape(label, bg, fg, radius_frac, cx, cy, angle), label


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


# ---------------------------------------------------------------------------------------------
# Captioned variant (text-to-image): the same ten shapes, drawn in named palette colours, each with
# a caption such as "a small red star on a white background". A separate random stream (tag
# _CAPTION_STREAM in the seed), so the images above are untouched.

PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (220, 30, 30)),
    ("orange", (250, 140, 20)),
    ("yellow", (250, 230, 40)),
    ("green", (30, 160, 50)),
    ("cyan", (40, 210, 230)),
    ("blue", (30, 70, 230)),
    ("purple", (140, 40, 200)),
    ("pink", (250, 140, 200)),
    ("white", (245, 245, 245)),
    ("black", (15, 15, 15)),
    ("gray", (128, 128, 128)),
)
COLOUR_NAMES: tuple[str, ...] = tuple(name for name, _ in PALETTE)
COLOUR_RGB = np.array([rgb for _, rgb in PALETTE], dtype=np.uint8)
NUM_COLOURS = len(PALETTE)
# Foreground and background luminance differ by at least this much (0-255 scale), so the shape
# is visible in grey levels too (the class judge was trained on pairs at least 80 apart).
MIN_CAPTION_CONTRAST = 60.0
# Size words: half-size below / above these fractions of the image (drawn in [0.22, 0.40]).
SMALL_BELOW, LARGE_ABOVE = 0.28, 0.34
SIZE_WORDS = ("small", "", "large")
STYLES = ("plain", "swapped")
_CAPTION_STREAM = 1  # third element of the numpy seed sequence of the captioned variant


def _luminance(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


# Every (foreground id, background id) the captioned data draws from, uniformly.
COLOUR_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (f, b)
    for f in range(NUM_COLOURS)
    for b in range(NUM_COLOURS)
    if f != b and abs(_luminance(COLOUR_RGB[f].astype(float)) - _luminance(COLOUR_RGB[b].astype(float)))
    >= MIN_CAPTION_CONTRAST
)


def size_word(radius_frac: float) -> str:
    """"small", "" (no word) or "large" for a half-size given as a fraction of the image."""
    return SIZE_WORDS[0] if radius_frac < SMALL_BELOW else SIZE_WORDS[2] if radius_frac > LARGE_ABOVE else SIZE_WORDS[1]


def make_caption(label: int, fg: int, bg: int, size: str = "") -> str:
    """'a small red star on a white background' ('an' before a vowel; no size word for mid sizes)."""
    words = [w for w in (size, COLOUR_NAMES[fg], CLASS_NAMES[label]) if w]
    article = "an" if words[0][0] in "aeiou" else "a"
    bg_name = COLOUR_NAMES[bg]
    return f"{article} {' '.join(words)} on {'an' if bg_name[0] in 'aeiou' else 'a'} {bg_name} background"


def parse_caption(caption: str) -> tuple[int, int, int]:
    """Inverse of make_caption: (class id, foreground colour id, background colour id)."""
    head, sep, tail = caption.strip().lower().partition(" on ")
    tail_words = tail.split()
    if not sep or len(tail_words) != 3 or tail_words[2] != "background":
        raise ValueError(f"not a shapes caption: {caption!r}")
    words = head.split()[1:]  # drop the article
    if words and words[0] in SIZE_WORDS:
        words = words[1:]
    if len(words) < 2 or words[0] not in COLOUR_NAMES or " ".join(words[1:]) not in CLASS_NAMES:
        raise ValueError(f"not a shapes caption: {caption!r}")
    if tail_words[1] not in COLOUR_NAMES:
        raise ValueError(f"not a shapes caption: {caption!r}")
    return CLASS_NAMES.index(" ".join(words[1:])), COLOUR_NAMES.index(words[0]), COLOUR_NAMES.index(tail_words[1])


def caption_vocabulary() -> list[str]:
    """Every word a caption can contain (for the embedded model's word-level tokenizers)."""
    words = {"a", "an", "on", "background"} | {w for w in SIZE_WORDS if w} | set(COLOUR_NAMES)
    for name in CLASS_NAMES:
        words.update(name.split())
    return sorted(words)


def render_captioned_shape(index: int, seed: int = TRAIN_SEED, style: str = "plain") -> dict:
    """Image ``index`` of the captioned data with ``seed``: a dict with ``image`` (uint8 [32, 32, 3]),
    ``label``, ``foreground``, ``background`` (palette ids), ``size`` (word or "") and ``caption``.
    ``style`` (STYLES) changes the drawing only, never the caption: "swapped" paints the shape in the
    caption's background colour and the background in its shape colour (the LoRA study's style)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    rng = np.random.default_rng([seed, index, _CAPTION_STREAM])
    label = int(rng.integers(NUM_CLASSES))
    fg, bg = COLOUR_PAIRS[int(rng.integers(len(COLOUR_PAIRS)))]
    radius_frac, cx, cy, angle = _geometry(rng)
    paint_bg, paint_fg = (fg, bg) if style == "swapped" else (bg, fg)
    image = _draw_shape(label, tuple(int(v) for v in COLOUR_RGB[paint_bg]), tuple(int(v) for v in COLOUR_RGB[paint_fg]),
                        radius_frac, cx, cy, angle)
    size = size_word(radius_frac)
    return {"image": image, "label": label, "foreground": fg, "background": bg, "size": size,
            "caption": make_caption(label, fg, bg, size)}


def render_captioned_shapes(indices: Iterable[int], seed: int = TRAIN_SEED, style: str = "plain"):
    """Several at once: (uint8 images [N, 32, 32, 3], labels int64 [N], colour ids int64 [N, 2]
    (foreground, background), captions list[str])."""
    items = [render_captioned_shape(i, seed, style) for i in indices]
    images = np.stack([it["image"] for it in items])
    labels = np.asarray([it["label"] for it in items], dtype=np.int64)
    colours = np.asarray([(it["foreground"], it["background"]) for it in items], dtype=np.int64).reshape(-1, 2)
    return images, labels, colours, [it["caption"] for it in items]


def _generate_captioned(num_images: int, seed: int, start: int):
    for i in range(start, start + num_images):
        item = render_captioned_shape(i, seed)
        item["image"] = Image.fromarray(item["image"])
        yield item


def captioned_shapes_dataset(num_images: int, seed: int = TRAIN_SEED, start: int = 0):
    """The captioned data as a ``datasets.Dataset`` (features: ``image``, ``label`` class id,
    ``caption``, ``foreground`` and ``background`` palette ids, ``size`` word)."""
    import datasets

    colours = datasets.ClassLabel(names=list(COLOUR_NAMES))
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
            "foreground": colours,
            "background": colours,
            "size": datasets.Value("string"),
            "caption": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_generator(
        _generate_captioned,
        gen_kwargs={"num_images": num_images, "seed": seed, "start": start},
        features=features,
    )


def to_model_range(images_uint8: np.ndarray):
    """uint8 NHWC -> float32 NCHW tensor in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0

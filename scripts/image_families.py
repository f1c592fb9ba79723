"""Generated image families for the pretrain -> fine-tune pipeline (no downloads; 64 px RGB PNGs).

Two groups, built differently on purpose:

- the **pretraining mix** (``PRETRAIN_FAMILIES``): families none of the fine-tuning sets resembles,
  used only to pretrain the backbone with the plain DINOv2 objective (``scripts/pretrain_backbone.py``):
  ``mosaic`` (Voronoi mosaics: few / many cells), ``blobs`` (Gaussian blobs on a flat ground: few large /
  many small), ``waves`` (interference of 1 / 3 plane waves), ``lattice`` (dot lattices: coarse / fine),
  ``fractal`` (1/f^beta colour noise: beta 1 / 2.5), ``strokes`` (random line segments: sparse / dense).
  Each (family, sub-type) is one class folder, so the pretraining run can be evaluated too.
- **``shapes``**, a fine-tuning family of object layouts: 6 classes, one per shape (disc, square,
  triangle, cross, ring, bar), each image 1-2 dark instances of its class's shape at random places,
  sizes, angles and tints on a light, softly textured ground. The class is the geometry, never the
  colour, which pixel baselines cannot read.

``build_family(name, root, seed)`` writes one folder per class (reused when complete) and returns its path.
"""

import math
import os
from typing import Callable, Dict, Iterable, Iterator, List, Tuple

import numpy as np
from PIL import Image

IMAGE_SIZE = 64
Sample = Tuple[int, Image.Image]


def _to_image(pixels: np.ndarray) -> Image.Image:
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8), mode="RGB")


def _grid() -> Tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE
    return yy, xx


def _smooth(rng: np.random.Generator, cells: int) -> np.ndarray:
    grid = rng.random((cells, cells)).astype(np.float32)
    field = np.asarray(Image.fromarray(grid).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))
    return (field - field.min()) / max(float(field.max() - field.min()), 1e-6)


# ----------------------------------------------------------------------------- pretraining mix


def mosaic_images(rng: np.random.Generator, per_class: int) -> Iterator[Sample]:
    yy, xx = _grid()
    for c, cells in enumerate((5, 40)):
        for _ in range(per_class):
            seeds = rng.random((cells, 2)).astype(np.float32)
            d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
            colours = rng.random((cells, 3))
            yield c, _to_image(colours[np.argmin(d, axis=-1)] + rng.normal(0, 0.02, (IMAGE_SIZE, IMAGE_SIZE, 3)))


def blobs_images(rng: np.random.Generator, per_class: int) -> Iterator[Sample]:
    yy, xx = _grid()
    for c, (count, radius) in enumerate(((3, 0.15), (25, 0.04))):
        for _ in range(per_class):
            img = np.ones((IMAGE_SIZE, IMAGE_SIZE, 3)) * rng.random(3)
            for _ in range(count):
                cy, cx = rng.random(2)
                r = radius * rng.uniform(0.6, 1.4)
                alpha = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
                img = img * (1 - alpha) + alpha * rng.random(3)
            yield c + 2, _to_image(img)


def waves_images(rng: np.random.Generator, per_class: int) -> Iterator[Sample]:
    yy, xx = _grid()
    for c, count in enumerate((1, 3)):
        for _ in range(per_class):
            total = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
            for _ in range(count):
                theta, freq = rng.uniform(0, math.pi), rng.uniform(2, 9)
                total += np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + rng.uniform(0, 6.3))
            total = total / count
            a, b = rng.random(3), rng.random(3)
            yield c + 4, _to_image(a + (b - a) * (0.5 + 0.5 * total[..., None]))


def lattice_images(rng: np.random.Generator, per_class: int) -> Iterator[Sample]:
    yy, xx = _grid()
    for c, spacing in enumerate((0.25, 0.1)):
        for _ in range(per_class):
            theta = rng.uniform(0, math.pi / 2)
            u = xx * math.cos(theta) + yy * math.sin(theta)
            v = -xx * math.sin(theta) + yy * math.cos(theta)
            s = spacing * rng.uniform(0.85, 1.15)
            du = (u / s) % 1.0 - 0.5
            dv = (v / s) % 1.0 - 0.5
            dot = ((du**2 + dv**2) < rng.uniform(0.04, 0.1))[..., None]
            ground, ink = rng.random(3), rng.random(3)
            yield c + 6, _to_image(np.where(dot, ink, ground) + rng.normal(0, 0.03, (IMAGE_SIZE, IMAGE_SIZE, 3)))


def fractal_images(rng: np.random.Generator, per_class: int) -> Iterator[Sample]:
    fy = np.fft.fftfreq(IMAGE_SIZE)[:, None]
    fx = np.fft.fftfreq(IMAGE_SIZE)[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    radius[0, 0] = 1.0
    for c, beta in enumerate((1.0, 2.5)):
        for _ in range(per_class):
            channels = []
            for _ in range(3):
                spectrum = (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)) / radius ** (beta / 2)
                spectrum[0, 0] = 0
                field = np.real(np.fft.ifft2(spectrum))
                channels.append((field - field.mean()) / (field.std() + 1e-6))
            yield c + 8, _to_image(0.5 + 0.18 * np.stack(channels, axis=-1))


def strokes_images(rng: np.random.Generator, per_class: int) -> Iterator[Sample]:
    yy, xx = _grid()
    for c, count in enumerate((3, 20)):
        for _ in range(per_class):
            img = np.ones((IMAGE_SIZE, IMAGE_SIZE, 3)) * rng.random(3)
            for _ in range(count):
                p, q = rng.random(2), rng.random(2)
                d = q - p
                t = np.clip(((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
                dist = np.sqrt((yy - p[0] - t * d[0]) ** 2 + (xx - p[1] - t * d[1]) ** 2)
                mask = (dist < rng.uniform(0.008, 0.03))[..., None]
                img = np.where(mask, rng.random(3), img)
            yield c + 10, _to_image(img)


PRETRAIN_FAMILIES: Dict[str, Callable] = {
    "mosaic": mosaic_images,
    "blobs": blobs_images,
    "waves": waves_images,
    "lattice": lattice_images,
    "fractal": fractal_images,
    "strokes": strokes_images,
}


# ----------------------------------------------------------------------------- fine-tuning family

SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar")


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    """Boolean mask of one shape centred at (cy, cx) of radius ``r`` rotated by ``angle``."""
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    if kind == "disc":
        return u**2 + v**2 < r * r
    if kind == "ring":
        d = np.sqrt(u**2 + v**2)
        return (d < r) & (d > 0.6 * r)
    if kind == "square":
        return (np.abs(u) < 0.8 * r) & (np.abs(v) < 0.8 * r)
    if kind == "cross":
        w = 0.3 * r
        return ((np.abs(u) < r) & (np.abs(v) < w)) | ((np.abs(v) < r) & (np.abs(u) < w))
    if kind == "bar":
        return (np.abs(u) < 1.3 * r) & (np.abs(v) < 0.22 * r)
    if kind == "triangle":
        # An equilateral triangle: inside the three half-planes of its edges.
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = angle + math.pi / 2 + 2 * math.pi * k / 3
            inside &= (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a) < 0.55 * r
        return inside
    raise ValueError(f"unknown shape {kind}")


def shapes_images(rng: np.random.Generator, per_class: int = 50) -> Iterator[Sample]:
    yy, xx = _grid()
    for c, kind in enumerate(SHAPES):
        for _ in range(per_class):
            # A light, softly textured ground and dark shapes: the class is the geometry (every class draws its
            # tints, positions, sizes and angles alike).
            ground = rng.uniform(0.6, 0.95) + rng.uniform(-0.08, 0.08, 3)
            img = ground * (0.9 + 0.2 * _smooth(rng, int(rng.integers(2, 6)))[..., None])
            for _ in range(int(rng.integers(1, 3))):
                r = rng.uniform(0.17, 0.3)
                cy, cx = rng.uniform(r, 1 - r, 2)
                mask = _shape_mask(kind, yy, xx, cy, cx, r, rng.uniform(0, 2 * math.pi))[..., None]
                ink = rng.uniform(0.05, 0.35) + rng.uniform(-0.08, 0.08, 3)
                img = np.where(mask, ink, img)
            yield c, _to_image(img + rng.normal(0, 0.03, img.shape))


FINETUNE_FAMILIES: Dict[str, Callable] = {"shapes": shapes_images}


def build_family(name: str, root: str, seed: int, per_class: int = 0) -> str:
    """Write family ``name`` (a pretraining family or ``shapes``) as class folders under ``root/name``.

    ``per_class`` 0 uses the family's default (150 per class for the pretraining families, 50 for shapes).
    A folder already marked complete is reused as it is.
    """
    path = os.path.join(root, name)
    marker = os.path.join(path, ".complete")
    if os.path.isfile(marker):
        return path
    if name in PRETRAIN_FAMILIES:
        samples = PRETRAIN_FAMILIES[name](np.random.default_rng([seed, 7, len(name)]), per_class or 150)
    elif name in FINETUNE_FAMILIES:
        samples = FINETUNE_FAMILIES[name](np.random.default_rng([seed, 11, len(name)]), per_class or 50)
    else:
        raise ValueError(f"unknown family '{name}' (known: {', '.join([*PRETRAIN_FAMILIES, *FINETUNE_FAMILIES])})")
    _write_class_folders(path, samples, "class_{:02d}")
    with open(marker, "w") as f:
        f.write("\n")
    return path


def _write_class_folders(path: str, samples: Iterable[Sample], folder: str) -> None:
    """Save each (class, image) sample as ``path/<folder.format(class)>/<n>.png``, n counting per class."""
    counts: Dict[int, int] = {}
    for c, image in samples:
        directory = os.path.join(path, folder.format(c))
        os.makedirs(directory, exist_ok=True)
        image.save(os.path.join(directory, f"{counts.get(c, 0):04d}.png"))
        counts[c] = counts.get(c, 0) + 1


def build_pretrain_mix(root: str, seed: int, per_class: int = 0) -> str:
    """All pretraining families in one class-folder tree ``root/pretrain_mix`` (one folder per sub-type)."""
    path = os.path.join(root, "pretrain_mix")
    marker = os.path.join(path, ".complete")
    if os.path.isfile(marker):
        return path
    written: List[str] = []
    for name, generate in PRETRAIN_FAMILIES.items():
        samples = generate(np.random.default_rng([seed, 7, len(name)]), per_class or 150)
        _write_class_folders(path, samples, "{:02d}_" + name)
        written.append(name)
    with open(marker, "w") as f:
        f.write(",".join(written) + "\n")
    return path

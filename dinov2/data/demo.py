"""A small procedural aerial-scene dataset, so that training and retrieval run without downloads.

Each class is a kind of scene seen from above (forest, water, farmland, ...), painted with numpy from
random parameters, then rotated, colour-jittered and noised per image, so the classes are learnable
but not trivially separable. The output is bit-for-bit determined by the parameters.
"""

import json
import logging
import math
import os
import shutil
import tempfile
from typing import Callable, Dict, Tuple

import numpy as np
from PIL import Image

from .datasets.decoders import PathLike

logger = logging.getLogger("dinov2")

COMPLETE_MARKER = ".complete"
# Bump when the images change, so an old demo folder is not mistaken for the new one.
_GENERATOR_VERSION = 1

Painter = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a cells x cells random grid bilinearly upsampled to size x size."""
    grid = rng.random((cells, cells), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BILINEAR))


def _rotated(x: np.ndarray, y: np.ndarray, angle: float) -> Tuple[np.ndarray, np.ndarray]:
    """Coordinates along (u) and across (v) the direction ``angle``."""
    c, s = math.cos(angle), math.sin(angle)
    return x * c + y * s, -x * s + y * c


def _paint_forest(rng, x, y):
    size = x.shape[0]
    canopy = 0.45 * _smooth_noise(rng, size, 6) + 0.35 * _smooth_noise(rng, size, max(2, size // 4))
    canopy += 0.2 * rng.random(x.shape, dtype=np.float32)
    base = np.array([0.10, 0.33, 0.12]) * rng.uniform(0.8, 1.2, 3)
    return base * (0.5 + canopy[..., None])


def _paint_water(rng, x, y):
    u, v = _rotated(x, y, rng.uniform(0, math.pi))
    frequency = rng.uniform(6, 14)
    waves = np.sin(2 * math.pi * (frequency * u + 0.6 * np.sin(2 * math.pi * rng.uniform(1, 3) * v)))
    depth = 0.15 * _smooth_noise(rng, x.shape[0], 3)
    base = np.array([0.05, 0.22, 0.45]) * rng.uniform(0.8, 1.2, 3)
    return base * (0.9 + 0.12 * waves[..., None]) + np.array([0.0, 0.05, 0.1]) * depth[..., None]


def _paint_farmland(rng, x, y):
    u, v = _rotated(x, y, rng.uniform(0, math.pi))
    widths = rng.uniform(0.5, 1.5, 12)
    edges = np.cumsum(widths) / widths.sum() * 1.8 - 0.4  # covers u in [-0.4, 1.4]
    field = np.searchsorted(edges, u).clip(0, len(edges) - 1)
    palette = np.array([[0.35, 0.55, 0.20], [0.75, 0.68, 0.35], [0.50, 0.38, 0.22], [0.25, 0.45, 0.15]])
    colours = palette[rng.integers(0, len(palette), len(edges))] * rng.uniform(0.85, 1.15, (len(edges), 1))
    rows = 1.0 + 0.08 * np.sin(2 * math.pi * rng.uniform(25, 40) * v)
    return colours[field] * rows[..., None]


def _paint_residential(rng, x, y):
    size = x.shape[0]
    period = rng.uniform(0.14, 0.22)
    offset = rng.uniform(0, period, 2)
    gx, gy = (x + offset[0]) / period, (y + offset[1]) / period
    fx, fy = gx - np.floor(gx), gy - np.floor(gy)
    margin = rng.uniform(0.15, 0.25)
    roof = (fx > margin) & (fx < 1 - margin) & (fy > margin) & (fy < 1 - margin)
    cells = 16
    roof_palette = np.array([[0.62, 0.25, 0.18], [0.55, 0.55, 0.58], [0.45, 0.30, 0.22], [0.75, 0.72, 0.68]])
    roof_colour = roof_palette[rng.integers(0, len(roof_palette), (cells, cells))]
    ix = np.floor(gx).astype(int) % cells
    iy = np.floor(gy).astype(int) % cells
    ground = np.array([0.45, 0.50, 0.40]) * (0.85 + 0.3 * _smooth_noise(rng, size, 5))[..., None]
    street = (fx < 0.08) | (fy < 0.08)
    image = np.where(roof[..., None], roof_colour[iy, ix], ground)
    return np.where(street[..., None], np.array([0.40, 0.40, 0.42]), image)


def _paint_road(rng, x, y):
    size = x.shape[0]
    ground_colour = np.array([0.35, 0.45, 0.25]) if rng.random() < 0.5 else np.array([0.55, 0.48, 0.35])
    image = ground_colour * (0.8 + 0.4 * _smooth_noise(rng, size, 8))[..., None]
    for _ in range(rng.integers(1, 3)):
        u, v = _rotated(x - rng.uniform(0.3, 0.7), y - rng.uniform(0.3, 0.7), rng.uniform(0, math.pi))
        half_width = rng.uniform(0.05, 0.09)
        asphalt = np.abs(v) < half_width
        dashes = (np.abs(v) < half_width * 0.1) & (np.sin(2 * math.pi * 10 * u) > 0)
        image = np.where(asphalt[..., None], np.array([0.32, 0.32, 0.34]), image)
        image = np.where(dashes[..., None], np.array([0.9, 0.9, 0.85]), image)
    return image


def _paint_desert(rng, x, y):
    u, v = _rotated(x, y, rng.uniform(0, math.pi))
    frequency = rng.uniform(3, 7)
    phase = 2 * math.pi * (frequency * u + 0.25 * np.sin(2 * math.pi * rng.uniform(0.5, 2) * v))
    ridges = (np.sin(phase) + 1) / 2
    shading = ridges**3  # sharp crests, long gentle slopes, like dunes
    base = np.array([0.85, 0.70, 0.47]) * rng.uniform(0.9, 1.1, 3)
    return base * (0.75 + 0.3 * shading[..., None])


def _paint_parking(rng, x, y):
    size = x.shape[0]
    u, v = _rotated(x, y, rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.05))
    row_period = rng.uniform(0.18, 0.26)
    slot_period = row_period * rng.uniform(0.3, 0.4)
    fu, fv = (u / slot_period) % 1.0, (v / row_period) % 1.0
    image = np.full((size, size, 3), 0.36) * (0.9 + 0.2 * _smooth_noise(rng, size, 4))[..., None]
    lines = (fu < 0.08) & (fv < 0.6)
    slot_u = np.floor(u / slot_period).astype(int) % 32
    slot_v = np.floor(v / row_period).astype(int) % 32
    occupied = rng.random((32, 32)) < 0.7
    car_colour = rng.uniform(0.1, 0.95, (32, 32, 3))
    car = (fu > 0.2) & (fu < 0.85) & (fv > 0.08) & (fv < 0.52) & occupied[slot_v, slot_u]
    image = np.where(lines[..., None], np.array([0.9, 0.9, 0.9]), image)
    return np.where(car[..., None], car_colour[slot_v, slot_u], image)


def _paint_beach(rng, x, y):
    # Rotate about the centre so the shoreline crosses the visible part of the canvas.
    u, v = _rotated(x - 0.5, y - 0.5, rng.uniform(0, 2 * math.pi))
    shore = u - rng.uniform(-0.15, 0.15) + 0.04 * np.sin(2 * math.pi * rng.uniform(2, 4) * v)  # <0 sand, >0 water
    sand = np.array([0.88, 0.80, 0.60]) * rng.uniform(0.9, 1.1, 3)
    water = np.array([0.10, 0.40, 0.55]) * rng.uniform(0.85, 1.15, 3)
    depth = np.clip(shore / 0.5, 0, 1)[..., None]
    image = np.where((shore < 0)[..., None], sand, water * (1.0 - 0.5 * depth))
    foam = np.abs(shore) < 0.02
    return np.where(foam[..., None], np.array([0.95, 0.95, 0.95]), image)


PAINTERS: Dict[str, Painter] = {
    "forest": _paint_forest,
    "water": _paint_water,
    "farmland": _paint_farmland,
    "residential": _paint_residential,
    "road": _paint_road,
    "desert": _paint_desert,
    "parking": _paint_parking,
    "beach": _paint_beach,
}


def render_scene(class_name: str, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Paint one image of ``class_name``: scene, random rotation, colour jitter and sensor noise.

    Args:
        class_name: a key of ``PAINTERS``.
        image_size: output side in pixels.
        rng: the image's random generator.

    Returns:
        A uint8 array [image_size, image_size, 3].
    """
    # Paint a larger canvas so a rotated centre crop has no empty corners.
    canvas = int(math.ceil(image_size * math.sqrt(2))) + 2
    y, x = np.mgrid[0:canvas, 0:canvas].astype(np.float32) / canvas
    scene = PAINTERS[class_name](rng, x, y)
    scene = scene * rng.uniform(0.85, 1.15) + rng.normal(0.0, 0.03, 3)  # brightness and colour cast
    scene = scene + rng.normal(0.0, 0.02, scene.shape)
    image = Image.fromarray(np.clip(scene * 255.0, 0, 255).astype(np.uint8))
    image = image.rotate(rng.uniform(0.0, 360.0), resample=Image.Resampling.BILINEAR)
    left = (canvas - image_size) // 2 + int(rng.integers(-1, 2))
    top = (canvas - image_size) // 2 + int(rng.integers(-1, 2))
    return np.asarray(image.crop((left, top, left + image_size, top + image_size)))


def _parameters(num_classes: int, images_per_class: int, image_size: int, seed: int) -> Dict[str, int]:
    return {
        "generator_version": _GENERATOR_VERSION,
        "num_classes": num_classes,
        "images_per_class": images_per_class,
        "image_size": image_size,
        "seed": seed,
    }


def _read_marker(root: str):
    try:
        with open(os.path.join(root, COMPLETE_MARKER), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _write_tree(folder: str, parameters: Dict[str, int]) -> None:
    names = list(PAINTERS)[: parameters["num_classes"]]
    for class_index, class_name in enumerate(names):
        os.makedirs(os.path.join(folder, class_name))
        for image_index in range(parameters["images_per_class"]):
            rng = np.random.default_rng([parameters["seed"], class_index, image_index])
            pixels = render_scene(class_name, parameters["image_size"], rng)
            path = os.path.join(folder, class_name, f"{class_name}_{image_index:04d}.png")
            Image.fromarray(pixels).save(path, format="PNG")
    # The marker is written last; the folder only becomes visible under its final name after this.
    with open(os.path.join(folder, COMPLETE_MARKER), "w", encoding="utf-8") as handle:
        json.dump(parameters, handle, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def generate_demo_dataset(
    root: PathLike, num_classes: int = 6, images_per_class: int = 40, image_size: int = 64, seed: int = 0
) -> str:
    """Create (or reuse) the demo dataset at ``root``: PNG files in one folder per class.

    Generation writes to a temporary sibling folder and renames it to ``root`` when complete, with a
    ``.complete`` marker holding the parameters; a folder with a matching marker is reused as is, so an
    interrupted generation is never taken for a complete one. Several processes may call this at once.

    Args:
        root: destination folder (must not exist, be empty, or hold a demo dataset with these parameters).
        num_classes: number of scene classes, at most ``len(PAINTERS)``.
        images_per_class: images per class.
        image_size: image side in pixels.
        seed: seed of all random draws; the same parameters give the same bytes.

    Returns:
        ``root`` as a string.

    Raises:
        ValueError: a parameter out of range.
        FileExistsError: ``root`` holds something else (nothing is deleted).
    """
    if not 1 <= num_classes <= len(PAINTERS):
        raise ValueError(f"num_classes={num_classes} must be between 1 and {len(PAINTERS)} ({', '.join(PAINTERS)})")
    if images_per_class < 1:
        raise ValueError(f"images_per_class={images_per_class} must be >= 1")
    if image_size < 8:
        raise ValueError(f"image_size={image_size} must be >= 8 pixels")
    root = os.path.abspath(os.fspath(root))
    parameters = _parameters(num_classes, images_per_class, image_size, seed)

    def check_existing() -> bool:
        if not os.path.exists(root):
            return False
        marker = _read_marker(root)
        if marker == parameters:
            return True
        if marker is not None:
            raise FileExistsError(
                f"demo dataset '{root}' was generated with {marker}, not {parameters}; "
                "remove it or choose another folder"
            )
        if os.path.isdir(root) and not os.listdir(root):
            return False
        raise FileExistsError(f"'{root}' exists and is not a complete demo dataset; remove it or choose another folder")

    if check_existing():
        logger.info("demo dataset: reusing '%s'", root)
        return root

    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.partial-", dir=parent)
    os.chmod(partial, 0o755)  # mkdtemp creates 0700; the dataset is an ordinary folder
    try:
        _write_tree(partial, parameters)
        try:
            os.rename(partial, root)
        except OSError:
            # Another process finished first: accept its identical result.
            if not check_existing():
                raise
    finally:
        if os.path.exists(partial):
            shutil.rmtree(partial)
    logger.info(
        "demo dataset: %d classes x %d images of %d px at '%s'", num_classes, images_per_class, image_size, root
    )
    return root

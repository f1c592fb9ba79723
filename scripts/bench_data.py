"""Throughput of the training data pipeline: files versus the in-memory cache, 0 and 2 workers.

Builds an AID-like dataset (600 x 600 JPEG, one folder per class) in a temporary folder from the
procedural demo scenes, then times DataAugmentationDINO (2 x 224 px global, 8 x 98 px local crops)
plus the multi-crop/mask collation through ``make_data_loader``. Prints a Markdown table.

    python scripts/bench_data.py [--images 200] [--image-size 600] [--batches 8]
"""

import argparse
import functools
import itertools
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from dinov2.data import (
    ClassFolderDataset,
    DataAugmentationDINO,
    MaskingGenerator,
    collate_data_and_cast,
    make_data_loader,
)
from dinov2.data.demo import PAINTERS, render_scene

PATCH_SIZE = 14
GLOBAL_SIZE, LOCAL_SIZE, N_LOCAL = 224, 98, 8


def make_jpeg_dataset(root: str, n_images: int, image_size: int, n_classes: int = 5) -> str:
    """Write ``n_images`` procedural scenes as JPEG (quality 95, like AID) into ``n_classes`` folders.

    Scenes are painted at half size and upscaled, which keeps set-up short; decoding cost depends on
    the stored size only.
    """
    names = list(PAINTERS)[:n_classes]
    for index in range(n_images):
        class_index = index % n_classes
        folder = os.path.join(root, names[class_index])
        os.makedirs(folder, exist_ok=True)
        pixels = render_scene(names[class_index], image_size // 2, np.random.default_rng([0, class_index, index]))
        image = Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.BICUBIC)
        image.save(os.path.join(folder, f"{index:05d}.jpg"), quality=95)
    return root


def measure(dataset, num_workers: int, batch_size: int, n_batches: int) -> float:
    """Images per second over ``n_batches`` batches, after one warm-up batch (worker start-up)."""
    grid = GLOBAL_SIZE // PATCH_SIZE
    collate = functools.partial(
        collate_data_and_cast,
        mask_ratio_tuple=(0.1, 0.6),
        mask_probability=0.5,
        dtype=torch.float32,
        n_tokens=grid * grid,
        mask_generator=MaskingGenerator((grid, grid), max_num_patches=0.5 * grid * grid),
    )
    loader = make_data_loader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in itertools.islice(iterator, n_batches):
        pass
    elapsed = time.perf_counter() - start
    del iterator
    return n_batches * batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--cache-size", type=int, default=256, help="shorter side of the resized cache row")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the main process (data-loader workers always use 1, as PyTorch sets)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    augment = DataAugmentationDINO((0.6, 1.0), (0.05, 0.5), N_LOCAL, GLOBAL_SIZE, LOCAL_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = make_jpeg_dataset(os.path.join(tmp, "aid_like"), args.images, args.image_size)
        print(
            f"dataset: {args.images} JPEG images of {args.image_size} px written in {time.perf_counter() - start:.1f} s"
        )

        sources = [("files", {}), ("cache, full size", {"cache": True})]
        sources.append((f"cache, shorter side {args.cache_size}", {"cache": True, "cache_size": args.cache_size}))
        rows = []
        for name, options in sources:
            start = time.perf_counter()
            dataset = ClassFolderDataset(root, "all", train_ratio=0.5, transform=augment, **options)
            build = time.perf_counter() - start
            for workers in args.workers:
                rate = measure(dataset, workers, args.batch_size, args.batches)
                rows.append((name, workers, rate, build))

    print()
    print(
        f"DataAugmentationDINO ({GLOBAL_SIZE}/{LOCAL_SIZE} px, {N_LOCAL} local crops) + collate, "
        f"batch {args.batch_size}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
    )
    print()
    print("| source | workers | images/s | dataset set-up (s) |")
    print("|---|---|---|---|")
    for name, workers, rate, build in rows:
        print(f"| {name} | {workers} | {rate:.1f} | {build:.1f} |")


if __name__ == "__main__":
    main()

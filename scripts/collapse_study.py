"""Does the demo preset learn on image sets it was not tuned on? SDSH against LSH and ITQ on pixels.

Builds small image sets in code (no downloads; none of them is the demo generator of
``dinov2/data/demo.py``), each as one folder per class of 64 px PNG files:

- ``lowcontrast``: 10 classes of low-contrast grayscale textures, drawn at 16 px and upscaled to
  64 px RGB (per class one smooth template; per image a shift, a flip, a brightness offset and noise);
- ``phototiles``: 8 classes of 64 px tiles cut at random places from 8 smooth synthetic colour
  "photographs" (one photograph per class, tiles overlap);
- ``gratings``: 6 classes of oriented sinusoidal gratings (2 orientations x 3 frequencies) with a
  random phase and tint, under heavy pixel noise.

``--sets`` may also name ``demo``: the project's own generated demo data (``train.data_path=demo``), the
data the preset was first tuned on, for comparison.

For each set it trains SDSH with ``configs/demo.yaml`` on the CPU (in this process; options after
``--`` are added to every run), then reports the best and the LAST evaluation (mAP with the stable
tie-break and tie-aware), distinct database codes and the collapse verdict of the last teacher,
random codes on the same split, and LSH and ITQ fitted on 16x16 pixels of the same split
(``dinov2.eval.baselines.tool``). It prints a table and writes ``collapse_study.json``::

    python scripts/collapse_study.py --output-dir outputs/collapse_study
    python scripts/collapse_study.py --output-dir outputs/cs --sets gratings --iterations 300 -- optim.base_lr=0.002
"""

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List

import numpy as np
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from dinov2.eval.baselines import tool as baselines  # noqa: E402
from dinov2.train import train as train_module  # noqa: E402
from dinov2.train.selection import UNIFORM_DINO_TARGETS  # noqa: E402

IMAGE_SIZE = 64
PRESET = os.path.join(REPO_ROOT, "configs", "demo.yaml")
BITS = 32  # the hash length of configs/demo.yaml


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1] [size, size]: a cells x cells grid, bicubic upsampled."""
    grid = rng.random((cells, cells)).astype(np.float32)
    field = np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return (field - field.min()) / max(float(field.max() - field.min()), 1e-6)


def _to_image(pixels: np.ndarray) -> Image.Image:
    """Float [H, W] or [H, W, 3] in [0, 1] -> an RGB PIL image."""
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8), mode="RGB")


def lowcontrast_images(rng: np.random.Generator, classes: int = 10, per_class: int = 40):
    """Low-contrast 16 px grayscale textures upscaled to 64 px: yields (class index, PIL image)."""
    small = 16
    shift = 4
    templates = [_smooth_field(rng, small + shift, int(rng.integers(3, 7))) for _ in range(classes)]
    for c, template in enumerate(templates):
        for _ in range(per_class):
            dy, dx = rng.integers(0, shift + 1, 2)
            patch = template[dy : dy + small, dx : dx + small]
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            patch = 0.5 + rng.uniform(-0.03, 0.03) + 0.15 * (patch - 0.5) + rng.normal(0.0, 0.02, patch.shape)
            image = Image.fromarray(np.clip(patch, 0, 1).astype(np.float32)).resize(
                (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR
            )
            yield c, _to_image(np.asarray(image))


def phototiles_images(rng: np.random.Generator, classes: int = 8, per_class: int = 50):
    """Tiles of smooth synthetic colour photographs, one photograph per class: yields (class index, PIL image)."""
    size = 4 * IMAGE_SIZE
    for c in range(classes):
        palette = rng.random((3, 3))  # three colours mixed by smooth weights
        weights = np.stack([_smooth_field(rng, size, int(rng.integers(3, 9))) for _ in range(3)], axis=-1)
        weights = weights / weights.sum(axis=-1, keepdims=True)
        detail = 0.15 * (_smooth_field(rng, size, 32) - 0.5)
        photo = weights @ palette + detail[..., None]
        for _ in range(per_class):
            y, x = rng.integers(0, size - IMAGE_SIZE, 2)
            yield c, _to_image(photo[y : y + IMAGE_SIZE, x : x + IMAGE_SIZE])


def gratings_images(rng: np.random.Generator, per_class: int = 60):
    """Oriented gratings (2 orientations x 3 frequencies) under heavy noise: yields (class index, PIL image)."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE
    # Orientations a horizontal flip (a training augmentation) maps to themselves, and frequencies apart by
    # more than the zoom of a random resized crop, so that the augmentations keep the classes apart.
    classes = [(angle, cycles) for angle in (0.0, math.pi / 2) for cycles in (2.0, 5.0, 12.0)]
    for c, (angle, cycles) in enumerate(classes):
        for _ in range(per_class):
            theta = angle + rng.normal(0.0, 0.08)
            u = xx * math.cos(theta) + yy * math.sin(theta)
            wave = np.sin(2 * math.pi * cycles * rng.uniform(0.9, 1.1) * u + rng.uniform(0, 2 * math.pi))
            tint = rng.uniform(0.3, 1.0, 3)
            pixels = 0.5 + 0.2 * wave[..., None] * tint + rng.normal(0.0, 0.2, (IMAGE_SIZE, IMAGE_SIZE, 3))
            yield c, _to_image(pixels)


DEMO = "demo"
SETS: Dict[str, Callable] = {
    "lowcontrast": lowcontrast_images,
    "phototiles": phototiles_images,
    "gratings": gratings_images,
}


def build_set(name: str, root: str, seed: int) -> str:
    """Write set ``name`` under ``root/name`` (one folder per class; reused when complete) and return its path."""
    path = os.path.join(root, name)
    marker = os.path.join(path, ".complete")
    if os.path.isfile(marker):
        return path
    counts: Dict[int, int] = {}
    for c, image in SETS[name](np.random.default_rng([seed, len(name)])):
        folder = os.path.join(path, f"class_{c:02d}")
        os.makedirs(folder, exist_ok=True)
        image.save(os.path.join(folder, f"{counts.get(c, 0):04d}.png"))
        counts[c] = counts.get(c, 0) + 1
    with open(marker, "w") as f:
        f.write("\n")
    return path


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_sdsh(data: str, output_dir: str, iterations: int, opts: List[str]) -> Dict[str, Any]:
    """Train the preset on ``data``; returns the best and last evaluations and the chance level."""
    epochs = max(1, iterations // 10)  # configs/demo.yaml: OFFICIAL_EPOCH_LENGTH 10
    args = train_module.get_args_parser().parse_args(
        ["--config-file", PRESET, "--output-dir", output_dir, "--no-resume",
         f"train.data_path={data}", f"optim.epochs={epochs}", f"optim.warmup_epochs={min(5, epochs)}", *opts]
    )  # fmt: skip
    summary = train_module.main(args)
    lines = [line for line in read_jsonl(summary["metrics_file"]) if "split" not in line]
    best = next(line for line in lines if line["iteration"] == summary["best_iteration"])
    dino = summary.get("dino_targets") or []
    return {"best": best, "last": lines[-1], "evaluations": lines, "random_codes": summary["random_codes_mAP"],
            "random_codes_tie_aware": summary["random_codes_mAP_tie_aware"],
            "dino_target_entropy": dino[-1]["entropy"] if dino else None}  # fmt: skip


def pixel_baselines(data: str, output_dir: str) -> Dict[str, Dict[str, Any]]:
    """LSH and ITQ on 16x16 pixels of the same split, at the preset's code length."""
    argv = ["--config-file", PRESET, "--output-dir", output_dir, "--bits", str(BITS), "--methods", "lsh,itq",
            f"train.data_path={data}", "train.num_workers=0", "evaluation.num_workers=0"]  # fmt: skip
    if baselines.main(argv) != 0:
        raise RuntimeError(f"baselines failed on {data}; see {output_dir}")
    with open(os.path.join(output_dir, "baselines.json")) as f:
        rows = json.load(f)
    keys = ("mAP", "mAP_tie_aware", "distinct_codes", "largest_bucket_fraction", "collapse")
    return {row["method"]: {k: row[k] for k in keys if k in row} for row in rows}


TABLE_HEADER = (
    "| set | classes / database | SDSH best mAP (tie-aware) | SDSH last mAP (tie-aware) "
    "| last distinct codes / largest bucket | random codes | LSH pixels | ITQ pixels | last DINO target entropy |"
    "\n|---|---|---|---|---|---|---|---|---|"
)


def table_row(name: str, result: Dict[str, Any]) -> str:
    best, last, base = result["sdsh"]["best"], result["sdsh"]["last"], result["baselines"]
    return (
        f"| {name} | {result['classes']} / {last['num_database']} | {best['mAP']:.3f} ({best['mAP_tie_aware']:.3f}) "
        f"| {last['mAP']:.3f} ({last['mAP_tie_aware']:.3f}) | {_codes(last)} "
        f"| {result['sdsh']['random_codes_tie_aware']:.3f} | {_baseline(base['lsh'])} "
        f"| {_baseline(base['itq'])} | {_entropy(result['sdsh'].get('dino_target_entropy'))} |"
    )


def _codes(metrics: Dict[str, Any]) -> str:
    """Distinct codes, the largest bucket's share when known, and the collapse verdict."""
    bucket = metrics.get("largest_bucket_fraction")
    share = "" if bucket is None else f" / {100 * bucket:.1f}%"
    return f"{metrics['distinct_codes']}{share} ({metrics['collapse']})"


def _baseline(metrics: Dict[str, Any]) -> str:
    """A baseline's tie-aware mAP; its codes too when the collapse rule flags them, as it does SDSH's."""
    cell = f"{metrics['mAP_tie_aware']:.3f}"
    if metrics.get("collapse", "ok") != "ok":
        cell += f" ({_codes(metrics)})"
    return cell


def _entropy(value) -> str:
    """The DINO target entropy cell: 'uniform' at the level the trainer warns about."""
    if value is None:
        return "-"
    return f"{value:.4f}" + (" (uniform)" if value >= UNIFORM_DINO_TARGETS else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Options after -- are config overrides (key=value) added to every SDSH run.",
    )
    parser.add_argument("--output-dir", default="outputs/collapse_study", help="image sets, runs and collapse_study.json")
    parser.add_argument(
        "--sets", default=",".join(SETS), help=f"comma-separated subset of {', '.join(SETS)}, and/or demo"
    )
    parser.add_argument("--iterations", type=int, default=600, help="training iterations per set (600 as the preset)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image sets")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="-- key=value config overrides")
    args = parser.parse_args(argv)
    opts = [o for o in args.opts if o != "--"]
    names = [n for n in args.sets.split(",") if n]
    unknown = [n for n in names if n not in SETS and n != DEMO]
    if unknown:
        parser.error(f"--sets: unknown set(s) {', '.join(unknown)} (known: {', '.join(SETS)})")
    out = os.path.abspath(args.output_dir)
    results: Dict[str, Any] = {}
    for name in names:
        start = time.time()
        if name == DEMO:
            # The trainer generates the demo set in its output directory; the baselines get their own copy.
            data, classes = DEMO, None
        else:
            print(f"[{name}] building the image set", flush=True)
            data = build_set(name, os.path.join(out, "data"), args.seed)
            classes = len([d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d))])
        print(f"[{name}] LSH and ITQ on pixels", flush=True)
        base = pixel_baselines(data, os.path.join(out, "runs", name, "baselines"))
        if classes is None:
            generated = os.path.join(out, "runs", name, "baselines", "demo_data")
            classes = len([d for d in os.listdir(generated) if os.path.isdir(os.path.join(generated, d))])
        print(f"[{name}] training SDSH for {args.iterations} iterations (configs/demo.yaml {' '.join(opts)})", flush=True)
        sdsh = train_sdsh(data, os.path.join(out, "runs", name, "sdsh"), args.iterations, opts)
        results[name] = {"classes": classes, "sdsh": sdsh, "baselines": base, "seconds": time.time() - start}
        print(f"[{name}] done in {time.time() - start:.0f} s: {table_row(name, results[name])}", flush=True)
        with open(os.path.join(out, "collapse_study.json"), "w") as f:
            json.dump({"iterations": args.iterations, "opts": opts, "results": results}, f, indent=2)
    print("tie-aware mAP@all in the baseline and random columns; mAP with the stable tie-break, tie-aware in brackets")
    print(TABLE_HEADER)
    for name in names:
        print(table_row(name, results[name]))
    print(f"results: {os.path.join(out, 'collapse_study.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of one SDSH training step: forward_backward + clipping + AdamW step + teacher EMA.

Reference configuration (vit_small/14, 2 x 224 px global + 8 x 98 px local crops, 65536 DINO and
iBOT prototypes, 64-bit codes) at batch 8 per process on the CPU, and at the reference batch 64 on
a GPU when one is present. Each row runs in its own subprocess so that the peak memory of one row
does not hide the next. Rows:

- ``sdsh``: the full step (DINO on codes, iBOT, quantization regularizer);
- ``sdsh w/o iBOT``: ``ibot.loss_weight=0``;
- ``backbone only``: the student backbone's forward and backward on the same crops with a mean
  of its outputs as the loss (no teacher, heads or losses), the floor the heads are compared to.

    python scripts/bench_train_step.py                # CPU rows, plus GPU rows when CUDA is present
    python scripts/bench_train_step.py --steps 2 --batch-size 4
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROWS = {
    "sdsh": [],
    "sdsh w/o iBOT": ["ibot.loss_weight=0"],
    "backbone only": None,
}


def synthetic_batch(cfg, batch_size, device, dtype):
    """A collated batch of random crops with iBOT masks, as the data pipeline produces it."""
    import torch

    from dinov2.data import MaskingGenerator, collate_data_and_cast

    g, loc, n_loc = cfg.crops.global_crops_size, cfg.crops.local_crops_size, cfg.crops.local_crops_number
    grid = g // cfg.student.patch_size
    samples = []
    for label in range(batch_size):
        crops = {
            "global_crops": [torch.randn(3, g, g) for _ in range(2)],
            "local_crops": [torch.randn(3, loc, loc) for _ in range(n_loc)],
        }
        crops["global_crops_teacher"] = crops["global_crops"]
        samples.append((crops, label))
    batch = collate_data_and_cast(
        samples,
        mask_ratio_tuple=tuple(cfg.ibot.mask_ratio_min_max),
        mask_probability=cfg.ibot.mask_sample_probability,
        dtype=dtype,
        n_tokens=grid * grid,
        mask_generator=MaskingGenerator(input_size=(grid, grid), max_num_patches=0.5 * grid * grid),
    )
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def peak_memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_row(name, device_name, batch_size, steps, warmup):
    """Time one row in this process and print a JSON result line."""
    import torch

    from dinov2.train.ssl_meta_arch import SSLMetaArch
    from dinov2.utils.config import merge_config

    device = torch.device(device_name)
    opts = ROWS[name] or []
    cfg = merge_config(None, list(opts) + [f"train.batch_size_per_gpu={batch_size}"])
    model = SSLMetaArch(cfg).to(device)
    model.train()
    amp = device.type == "cuda"
    dtype = torch.float32
    batch = synthetic_batch(cfg, batch_size, device, dtype)
    if ROWS[name] is None:
        params = list(model.student.backbone.parameters())
    else:
        params = [p for p in model.student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if ROWS[name] is None:
                g, loc = batch["collated_global_crops"], batch["collated_local_crops"]
                out_g, out_l = model.student.backbone([g, loc], masks=[batch["collated_masks"], None], is_training=True)
                loss = out_g["x_norm_clstoken"].float().mean() + out_l["x_norm_clstoken"].float().mean()
                loss.backward()
            else:
                model.forward_backward(batch, teacher_temp=0.04)
        for module in model.student.values():
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.optim.clip_grad)
        optimizer.step()
        if ROWS[name] is not None:
            model.update_teacher(0.996)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {
        "row": name,
        "device": device_name,
        "batch": batch_size,
        "s_per_step": min(times),
        "mean_s": sum(times) / len(times),
        "images_per_s": batch_size / min(times),
        "peak_mb": peak_memory_mb(device),
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(result), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8, help="images per step on the CPU (default 8)")
    parser.add_argument("--gpu-batch-size", type=int, default=64, help="images per step on a GPU (default 64)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (the fastest is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="rows to run")
    parser.add_argument("--_row", help=argparse.SUPPRESS)
    parser.add_argument("--_device", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._row:
        batch = args.gpu_batch_size if args._device.startswith("cuda") else args.batch_size
        run_row(args._row, args._device, batch, args.steps, args.warmup)
        return 0

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for row in args.rows:
            cmd = [sys.executable, os.path.abspath(__file__), "--_row", row, "--_device", device]
            cmd += ["--batch-size", str(args.batch_size), "--gpu-batch-size", str(args.gpu_batch_size)]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            print(f"running {row!r} on {device} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"row {row!r} on {device} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            results.append(json.loads(lines[-1][len("RESULT ") :]))
    print()
    print("One SDSH training step (forward_backward + clip + AdamW + EMA), vit_small/14, 2x224 + 8x98 crops,")
    print(f"65536 prototypes, 64 bits; fastest of {args.steps} steps after {args.warmup} warm-up; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    header = (
        f"{'row':<15} {'device':<6} {'batch':>5} {'threads':>7} {'s/step':>8} {'mean s':>8} {'img/s':>7} "
        f"{'peak MB':>9} {'x floor':>8}"
    )
    print(header)
    print("-" * len(header))
    floors = {r["device"]: r["s_per_step"] for r in results if r["row"] == "backbone only"}
    for r in results:
        ratio = f"{r['s_per_step'] / floors[r['device']]:.2f}" if r["device"] in floors else "-"
        print(
            f"{r['row']:<15} {r['device']:<6} {r['batch']:>5} {r['threads']:>7} {r['s_per_step']:>8.2f} "
            f"{r['mean_s']:>8.2f} {r['images_per_s']:>7.2f} {r['peak_mb']:>9.0f} {ratio:>8}"
        )
    print("x floor: s/step over the 'backbone only' row of the same device in this run")
    print("peak MB: peak RSS of the row's process on the CPU (model, optimizer and activations), "
          "torch.cuda.max_memory_allocated on a GPU")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())

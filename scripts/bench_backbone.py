"""Throughput and peak memory of the ViT-S/14 backbone forward pass: PyTorch SDPA vs plain attention.

Both variants share the same random weights and their outputs are compared. Throughput is timed
first for both variants; peak memory is then measured on one more forward of each. Example:

    python scripts/bench_backbone.py --batch-size 32 --img-size 224 --iters 3 --device auto
"""

import argparse
import copy
import ctypes
import logging
import resource
import time

import torch

from dinov2.layers import Attention
from dinov2.models.vision_transformer import vit_small

logger = logging.getLogger("dinov2")

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


class PlainAttention(Attention):
    """``softmax(q k^T / sqrt(d)) v`` written out, with the full [B, heads, N, N] weight matrix."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self._qkv(x).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, D/heads]
        weights = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        x = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(x)


def with_plain_attention(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose attention modules are ``PlainAttention`` with the same weights."""
    plain = copy.deepcopy(model)
    for block in plain.blocks:
        attn = block.attn
        replacement = PlainAttention(
            attn.qkv.in_features, num_heads=attn.num_heads, qkv_bias=attn.qkv.bias is not None,
            proj_bias=attn.proj.bias is not None,
        )  # fmt: skip
        replacement.load_state_dict(attn.state_dict(), strict=True)
        block.attn = replacement.to(attn.qkv.weight.device)
    return plain.eval()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def release_freed_cpu_memory() -> None:
    """Ask glibc to serve large blocks by mmap with a fixed threshold.

    Freed tensors then leave the resident set instead of being kept for reuse, which would hide the
    next variant's allocations from the RSS. Slows allocation down, so it is set after the timing.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        logger.info("could not set glibc's mmap threshold; CPU memory figures include reused blocks")


def images_per_second(model: torch.nn.Module, images: torch.Tensor, iters: int, warmup: int) -> float:
    """Images per second over ``iters`` eval forwards after ``warmup`` untimed ones."""
    cuda = images.device.type == "cuda"
    with torch.inference_mode():
        for _ in range(warmup):
            model(images)
        if cuda:
            torch.cuda.synchronize(images.device)
        start = time.perf_counter()
        for _ in range(iters):
            model(images)
        if cuda:
            torch.cuda.synchronize(images.device)
    return iters * images.shape[0] / (time.perf_counter() - start)


def peak_memory_mib(model: torch.nn.Module, images: torch.Tensor):
    """Peak memory growth of one eval forward, the method used, and the output.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU (Linux): the peak resident set (VmHWM) after resetting
    the kernel's mark through ``/proc/self/clear_refs``; where that is refused, ``ru_maxrss`` growth
    (which only shows memory beyond the process's previous peak).
    """
    device = images.device
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
            output = model(images)
            torch.cuda.synchronize(device)
            return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20, "max_memory_allocated", output
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            output = model(images)
            return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024, "ru_maxrss", output
        baseline = _status_kib("VmRSS")
        output = model(images)
        return (_status_kib("VmHWM") - baseline) / 1024, "VmHWM", output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=3, help="timed forward passes per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes per variant")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.img_size % 14:
        parser.error(f"--img-size {args.img_size} is not divisible by the patch size 14")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)

    torch.manual_seed(0)
    models = {"sdpa (MemEffAttention)": vit_small(patch_size=14, img_size=args.img_size, init_values=1e-5, block_chunks=0)}
    models["sdpa (MemEffAttention)"].to(device).eval()
    models["plain softmax(qk^T)v"] = with_plain_attention(models["sdpa (MemEffAttention)"])
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    logger.info(
        "vit_small/14, batch %d, %d px, %d timed iterations, device %s, %d CPU threads",
        args.batch_size, args.img_size, args.iters, device, torch.get_num_threads(),
    )  # fmt: skip

    throughput = {name: images_per_second(model, images, args.iters, args.warmup) for name, model in models.items()}
    if device.type == "cpu":
        release_freed_cpu_memory()
    memory = {name: peak_memory_mib(model, images) for name, model in models.items()}

    sdpa_out, plain_out = (memory[name][2].float().cpu() for name in models)
    print(f"{'attention':<24} {'images/s':>10} {'peak MiB':>10}  memory measured by")
    for name in models:
        print(f"{name:<24} {throughput[name]:>10.2f} {memory[name][0]:>10.1f}  {memory[name][1]}")
    print(f"max |CLS output difference| between the two: {(sdpa_out - plain_out).abs().max().item():.3e}")
    if not torch.allclose(sdpa_out, plain_out, atol=1e-3):
        raise SystemExit("the two attention implementations disagree")


if __name__ == "__main__":
    main()

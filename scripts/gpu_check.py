"""Check the GPU paths of the trainer on one machine: versions, precision steps, FSDP, a short run
with evaluation, and resume after kill -9. Prints a table and writes ``OUT_DIR/gpu_check.json``.

    python scripts/gpu_check.py OUT_DIR                 # CUDA (the default), real sizes
    python scripts/gpu_check.py OUT_DIR --device cpu    # the same checks at tiny sizes on the CPU

Rows (each runs in its own subprocess, so a crash or the peak memory of one does not hide the next):

- ``step fp32|fp16|bf16``: ViT-S/14 SDSH training steps (2 x 224 px + 8 x 98 px crops, batch 32,
  65536 prototypes) in each precision (fp16 with the grad scaler): img/s, peak memory, loss finite;
- ``fsdp``: the same step with every student/teacher module in FSDP (SHARD_GRAD_OP, the reference's
  fp16 mixed precision) in one process started by torchrun, with and without xFormers when installed;
- ``train + eval``: a short run of ``configs/demo.yaml``; the teacher's codes of its last evaluation
  give the same mAP with the metrics on the device as with the metrics on the CPU, and the mAP the
  run recorded;
- ``resume``: the same run killed with SIGKILL after its first checkpoint and resumed ends at the
  last iteration with the teacher of the uninterrupted run (bit-identical on the CPU; the largest
  difference is reported on a GPU, whose kernels need not be deterministic).

With ``--device cpu`` the sizes are tiny (28/14 px crops, batch 2, 1024 prototypes, a few
iterations), FSDP runs on gloo in fp32 and xFormers is skipped. The exit status is 1 when any row fails.
"""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "dinov2", "train", "train.py")
PRECISIONS = ("fp32", "fp16", "bf16")
MODULES = ("backbone", "hash_head", "dino_head", "ibot_head")


def sizes(device: str) -> dict:
    """Model and batch options of the step rows, and the length of the short run."""
    if device == "cuda":
        return {
            "opts": ["crops.global_crops_size=224", "crops.local_crops_size=98", "crops.local_crops_number=8"],
            "batch": 32, "warmup": 3, "steps": 10, "epochs": 30, "eval_period": 100, "run_batch": 32, "saveckp": 5,
            "run_opts": [],
        }
    return {
        "opts": [
            "student.arch=vit_demo", "crops.global_crops_size=28", "crops.local_crops_size=14",
            "crops.local_crops_number=2", "dino.head_n_prototypes=1024", "ibot.head_n_prototypes=1024",
            "dino.head_hidden_dim=256", "ibot.head_hidden_dim=256",
        ],
        "run_opts": ["optim.warmup_epochs=1"],
        "batch": 2, "warmup": 1, "steps": 2, "epochs": 2, "eval_period": 10, "run_batch": 8, "saveckp": 1,
    }


def precision_opts(precision: str, who=("student", "teacher")) -> list:
    """Every module's FSDP dtypes, and the autocast dtype of plain modules, set to ``precision``."""
    return [
        f"compute_precision.{w}.{m}.mixed_precision.{kind}={precision}"
        for w in who
        for m in MODULES
        for kind in ("param_dtype", "reduce_dtype")
    ]


def _peak_memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_steps(device_name: str, precision: str, fsdp: bool) -> dict:
    """Time training steps of the ViT-S/14 model in this process (``fsdp``: under torchrun)."""
    import torch
    from bench_train_step import synthetic_batch

    from dinov2 import distributed
    from dinov2.train.setup import TrainingSetup
    from dinov2.utils.config import merge_config

    size = sizes(device_name)
    opts = ["student.arch=vit_small", "student.patch_size=14", *size["opts"]]
    if device_name == "cpu":
        opts.append("compute_precision.cpu_mixed_precision=true")
    if fsdp:
        distributed.enable(overwrite=True)
        # The reference's fp16 units on a GPU; fp32 units on the CPU (gloo), whose fp16 kernels are slow.
        opts += precision_opts("fp16" if device_name == "cuda" else "fp32")
    else:
        opts += precision_opts(precision, who=("student",))[:1]
    cfg = merge_config(None, opts)
    if device_name == "cuda":
        device = torch.device("cuda", distributed.get_local_rank() if fsdp else 0)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    setup_ = TrainingSetup(cfg, device, fsdp=fsdp)
    model = setup_.model.train()
    optimizer = torch.optim.AdamW(model.get_params_groups())
    for group in optimizer.param_groups:
        group["lr"] = 1e-4 * group["lr_multiplier"]
    batch = synthetic_batch(cfg, size["batch"], device, setup_.input_dtype)
    losses, skipped, times = [], 0, []

    def step() -> bool:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = setup_.train_step(optimizer, batch, teacher_temp=0.04, momentum=0.994, clip=3.0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        losses.append(float(result.losses["total_loss"]))
        return result.stepped

    # Warm-up; with fp16 also until the grad scaler has backed off to a scale whose gradients fit.
    warmup = 0
    while warmup < size["warmup"] or (setup_.scaler is not None and skipped == warmup and warmup < 24):
        skipped += int(not step())
        warmup += 1
    times.clear()
    for _ in range(size["steps"]):
        skipped += int(not step())
    finite = all(math.isfinite(v) for v in losses) and all(torch.isfinite(p).all() for p in model.parameters())
    step_time = sum(times) / len(times)
    out = {
        "ok": finite and skipped < len(losses),
        "img_per_s": round(size["batch"] / step_time, 2),
        "step_s": round(step_time, 4),
        "peak_mem_mb": round(_peak_memory_mb(device), 1),
        "loss_finite": finite,
        "last_loss": losses[-1],
        "skipped_steps": skipped,
        "compute_dtype": str(setup_.dtype).replace("torch.", "") if not fsdp else "fsdp units",
        "batch": size["batch"],
    }
    if fsdp:
        out["sharding"] = str(model.student.backbone.sharding_strategy)
        torch.distributed.destroy_process_group()
    return out


def _train_command(out_dir: str, device: str, *extra: str) -> list:
    size = sizes(device)
    return [
        sys.executable, TRAIN, "--config-file", os.path.join(REPO, "configs", "demo.yaml"), "--output-dir", out_dir,
        f"train.device={device}", f"optim.epochs={size['epochs']}", f"evaluation.eval_period_iterations={size['eval_period']}",
        f"train.batch_size_per_gpu={size['run_batch']}", f"train.saveckp_freq={size['saveckp']}", "train.num_workers=2",
        *size["run_opts"], *extra,
    ]


def _teacher(path: str) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return {k: v for k, v in state.items() if k.startswith("teacher.")}


def check_train_eval(out_dir: str, device_name: str) -> dict:
    """A short demo run, then its last teacher's mAP with device and CPU metrics."""
    import torch
    from omegaconf import OmegaConf

    from dinov2.data.builders import make_eval_dataset, resolve_data_root
    from dinov2.eval.encode import extract_codes
    from dinov2.eval.metrics import evaluate_codes
    from dinov2.models import build_hashing_network

    run_dir = os.path.join(out_dir, "train")
    start = time.perf_counter()
    proc = subprocess.run(_train_command(run_dir, device_name), capture_output=True, text=True)
    if proc.returncode != 0:
        return {"ok": False, "error": proc.stderr[-2000:]}
    train_s = time.perf_counter() - start
    with open(os.path.join(run_dir, "eval", "retrieval_metrics.jsonl")) as f:
        recorded = [json.loads(line) for line in f if line.strip()][-1]
    cfg = OmegaConf.load(os.path.join(run_dir, "config.yaml"))
    network = build_hashing_network(cfg, os.path.join(run_dir, "eval", "last", "teacher_checkpoint.pth"))
    device = torch.device(device_name)
    network.to(device)
    root = resolve_data_root(cfg)
    ev = cfg.evaluation
    db_codes, db_labels = extract_codes(network, make_eval_dataset(cfg, root, "train"), ev.batch_size, 0, device, False)
    q_codes, q_labels = extract_codes(network, make_eval_dataset(cfg, root, "query"), ev.batch_size, 0, device, False)
    on_cpu = evaluate_codes(q_codes, db_codes, q_labels, db_labels)
    on_device = evaluate_codes(*(t.to(device) for t in (q_codes, db_codes, q_labels, db_labels)))
    same = all(on_cpu[k] == on_device[k] for k in on_cpu)
    return {
        "ok": same and abs(on_cpu["mAP"] - recorded["mAP"]) < 1e-6,
        "iterations": recorded["iteration"] + 1,
        "train_s": round(train_s, 1),
        "mAP_recorded": recorded["mAP"],
        "mAP_device_metrics": on_device["mAP"],
        "mAP_cpu_metrics": on_cpu["mAP"],
        "device_equals_cpu": same,
    }


def check_resume(out_dir: str, device_name: str) -> dict:
    """The demo run killed with SIGKILL after its first checkpoint, resumed, against the uninterrupted run."""
    reference = os.path.join(out_dir, "train", "model_final.pth")
    if not os.path.isfile(reference):
        return {"ok": False, "error": "no uninterrupted run to compare with (train + eval failed)"}
    run_dir = os.path.join(out_dir, "resume")
    command = _train_command(run_dir, device_name)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tag = os.path.join(run_dir, "last_checkpoint")
    while not os.path.isfile(tag):
        if proc.poll() is not None:
            return {"ok": False, "error": "the run ended before its first checkpoint: " + proc.stderr.read().decode()[-2000:]}
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = open(tag).read().strip()
    resumed = subprocess.run(command, capture_output=True, text=True)
    if resumed.returncode != 0:
        return {"ok": False, "error": resumed.stderr[-2000:]}
    a, b = _teacher(reference), _teacher(os.path.join(run_dir, "model_final.pth"))
    max_diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    exact = all(bool((a[k] == b[k]).all()) for k in a)
    return {
        "ok": exact if device_name == "cpu" else math.isfinite(max_diff),
        "killed_after": killed_at,
        "teacher_bit_identical": exact,
        "teacher_max_abs_diff": max_diff,
    }


def versions(device_name: str) -> dict:
    import torch

    info = {"ok": True, "torch": torch.__version__, "cuda": torch.version.cuda, "device": device_name}
    if device_name == "cuda":
        if not torch.cuda.is_available():
            return {**info, "ok": False, "error": "CUDA is not available (SDSH_GPU_CHECK_DEVICE=cpu checks the CPU)"}
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        import xformers

        info["xformers"] = xformers.__version__
    except ImportError:
        info["xformers"] = None
    return info


def _subprocess_row(args: list, env_extra=None, torchrun=False) -> dict:
    env = dict(os.environ, **(env_extra or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"] if torchrun else [sys.executable]
    proc = subprocess.run([*launcher, os.path.abspath(__file__), *args], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"ok": False, "error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(lines[-1])


def _print_table(rows: dict) -> None:
    print("| check | ok | details |")
    print("|---|---|---|")
    for name, row in rows.items():
        details = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("ok", "error"))
        if "error" in row:
            details += " error: " + row["error"].strip().splitlines()[-1][:200] if row["error"].strip() else ""
        print(f"| {name} | {'yes' if row['ok'] else 'NO'} | {details} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", help="where gpu_check.json and the runs go")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=os.environ.get("SDSH_GPU_CHECK_DEVICE", "cuda"))
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row in this process
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.row in ("step", "fsdp"):
        print(json.dumps(run_steps(args.device, args.precision, fsdp=args.row == "fsdp")))
        return 0
    if not args.out_dir:
        parser.error("OUT_DIR is required")
    os.makedirs(args.out_dir, exist_ok=True)
    device = args.device
    rows = {"versions": versions(device)}
    if rows["versions"]["ok"]:
        for precision in PRECISIONS:
            rows[f"step {precision}"] = _subprocess_row(["--row", "step", "--device", device, "--precision", precision])
        variants = [("fsdp", {"XFORMERS_DISABLED": "1"})]
        if device == "cuda" and rows["versions"]["xformers"]:
            variants = [("fsdp xformers", {}), ("fsdp no xformers", {"XFORMERS_DISABLED": "1"})]
        for name, env in variants:
            rows[name] = _subprocess_row(["--row", "fsdp", "--device", device], env, torchrun=True)
        rows["train + eval"] = check_train_eval(args.out_dir, device)
        rows["resume after kill -9"] = check_resume(args.out_dir, device)
    _print_table(rows)
    ok = all(row["ok"] for row in rows.values())
    with open(os.path.join(args.out_dir, "gpu_check.json"), "w") as f:
        json.dump({"ok": ok, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}, f, indent=2)
    print(f"{'all checks passed' if ok else 'FAILED'}; results in {os.path.join(args.out_dir, 'gpu_check.json')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

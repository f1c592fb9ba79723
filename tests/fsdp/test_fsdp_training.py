"""The FSDP training path — sharded student/teacher units, FSDP gradient clipping and EMA, sharded
checkpoints, evaluation of a sharded teacher — on two CPU processes with gloo, in fp32.

The GPU path is the same code with CUDA devices and mixed precision; here it is checked against the
plain two-process path (replicas with averaged gradients), which must give the same teacher.
"""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from dinov2.models import vision_transformer as vits
from dinov2.train import train as train_module

from ..conftest import TINY_ARCH, export_torchrun_env, free_port, make_args, tiny_vit

# Every student/teacher unit in fp32: the CPU has no fast fp16 path, and fp32 makes the comparison tight.
FP32_OPTS = [
    f"compute_precision.{who}.{module}.mixed_precision.{kind}=fp32"
    for who in ("student", "teacher")
    for module in ("backbone", "hash_head", "dino_head", "ibot_head")
    for kind in ("param_dtype", "reduce_dtype", "buffer_dtype")
]


# A fast-moving teacher and a large learning rate, so that the few iterations move the weights far
# beyond the comparison tolerance (with the reference 0.992 momentum the teacher would barely move).
DYNAMIC_OPTS = ["teacher.momentum_teacher=0.5", "teacher.final_momentum_teacher=0.5", "optim.base_lr=0.05"]


def _worker(rank, world_size, port, output_dir, fsdp, extra_opts):
    setattr(vits, TINY_ARCH, tiny_vit)
    export_torchrun_env(rank, world_size, port)
    train_module.use_fsdp = lambda device: fsdp
    try:
        train_module.main(make_args(output_dir, *FP32_OPTS, *DYNAMIC_OPTS, *extra_opts))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(output_dir, fsdp, *extra_opts):
    mp.spawn(_worker, args=(2, free_port(), str(output_dir), fsdp, list(extra_opts)), nprocs=2, join=True)


def _evaluations(output_dir):
    with open(output_dir / "eval" / "retrieval_metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def _last_teacher(output_dir):
    return torch.load(output_dir / "eval" / "last" / "teacher_checkpoint.pth", weights_only=True)["teacher"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    plain, sharded = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("fsdp")
    _train(plain, False)
    _train(sharded, True)
    return plain, sharded


def test_fsdp_run_trains_evaluates_every_image_once_and_shards_checkpoints(runs):
    _, sharded = runs
    evaluations = _evaluations(sharded)
    assert [e["iteration"] for e in evaluations] == [1, 3]
    assert all(e["num_queries"] == 12 and e["num_database"] == 12 for e in evaluations)
    # Each rank writes its own shard of every checkpoint.
    names = os.listdir(sharded)
    for rank in (0, 1):
        assert any(n.startswith("model_") and n.endswith(f".rank_{rank}.pth") for n in names), names
        assert f"last_checkpoint.rank_{rank}" in names


def test_fsdp_teacher_equals_the_plain_multiprocess_teacher(runs):
    plain, sharded = runs
    a, b = _last_teacher(plain), _last_teacher(sharded)
    assert a.keys() == b.keys()
    # The comparison means something only if training moved the teacher well beyond the tolerance.
    first = torch.load(plain / "model_0000001.pth", weights_only=True)["model"]  # after 2 of 4 iterations
    moved = max((a[k] - first[f"teacher.{k}"]).abs().max().item() for k in a if k.startswith("backbone.blocks"))
    assert moved > 1e-3  # 100 x the comparison tolerance
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    plain_map = [e["mAP"] for e in _evaluations(plain)]
    sharded_map = [e["mAP"] for e in _evaluations(sharded)]
    assert sharded_map == pytest.approx(plain_map, abs=1e-6)


def test_fsdp_run_resumes_from_its_sharded_checkpoint_like_the_plain_run(runs):
    plain, sharded = runs
    for output_dir, fsdp in ((plain, False), (sharded, True)):
        _train(output_dir, fsdp, "optim.epochs=3")
        assert [e["iteration"] for e in _evaluations(output_dir)] == [1, 3, 5]
    # Both resumed their own checkpoint format (full state vs per-rank shards) into the same state.
    a, b = _last_teacher(plain), _last_teacher(sharded)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")

"""The mixed-precision training paths on the CPU: bf16 autocast, fp16 with a grad scaler (skipped
overflow steps), FSDP mixed precision and the ``compute_precision`` keys that choose them.

``compute_precision.cpu_mixed_precision=true`` runs on the CPU the path a GPU runs: autocast in
``student.backbone.mixed_precision.param_dtype`` and, for fp16, ``torch.amp.GradScaler``.
"""

import json

import pytest
import torch
import torch.multiprocessing as mp

from dinov2.models import vision_transformer as vits
from dinov2.train import train as train_module
from dinov2.train.setup import TrainingSetup
from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.utils.config import ConfigError, merge_config

from ..conftest import (
    TINY_ARCH,
    TINY_OPTS,
    export_torchrun_env,
    free_port,
    make_args,
    synthetic_multicrop_batch,
    tiny_vit,
)

CPU = torch.device("cpu")
GLOBAL, LOCAL, N_LOCAL, PATCH = 32, 16, 2, 8  # as TINY_OPTS
MIXED = "compute_precision.cpu_mixed_precision=true"
# Wider heads than TINY_OPTS: their L2-normalised bottleneck is then far from 0, so that unscaled
# gradients fit in fp16 (a width-32 head multiplies them by 1/|x| ~ 1000).
SANE_HEADS = [f"{head}.{key}={value}" for head in ("dino", "ibot") for key, value in (("head_hidden_dim", 256), ("head_bottleneck_dim", 64))]


def _param_dtype(dtype):
    return f"compute_precision.student.backbone.mixed_precision.param_dtype={dtype}"


def make_cfg(*opts):
    return merge_config(None, [*TINY_OPTS, *SANE_HEADS, *opts])


def make_batch(dtype, seed=0, batch_size=4):
    return synthetic_multicrop_batch(GLOBAL, LOCAL, N_LOCAL, PATCH, batch_size, seed, dtype, (0.1, 0.5), 0.5)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_equal_states(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def record_compute_dtypes(model):
    """Dtypes seen inside the student's forward: the first attention's qkv projection and the hash codes."""
    seen = {}

    def block_hook(module, inputs, output):
        seen["block"] = output.dtype

    def hash_hook(module, inputs, output):
        seen["codes"] = output["codes"].dtype

    model.student.backbone.blocks[0].attn.qkv.register_forward_hook(block_hook)
    model.student.hash_head.register_forward_hook(hash_hook)
    return seen


def new_optimizer(setup_):
    optimizer = torch.optim.AdamW(setup_.model.get_params_groups())
    for group in optimizer.param_groups:
        group["lr"] = 1e-2 * group["lr_multiplier"]
        group["weight_decay"] = 0.0
    return optimizer


@pytest.mark.parametrize(
    "opts, compute, scaler",
    [
        # The CPU default: fp32 whatever the CUDA dtype, no scaler.
        ([_param_dtype("fp16")], torch.float32, False),
        ([MIXED, _param_dtype("bf16")], torch.bfloat16, False),
        ([MIXED, _param_dtype("fp16")], torch.float16, True),
        ([MIXED, _param_dtype("fp16"), "compute_precision.grad_scaler=false"], torch.float16, False),
        ([MIXED, _param_dtype("fp32")], torch.float32, False),
    ],
)
def test_compute_precision_keys_choose_the_dtype_inside_forward_and_the_scaler(tiny_arch, opts, compute, scaler):
    setup_ = TrainingSetup(make_cfg(*opts), CPU)
    assert setup_.dtype == compute and setup_.input_dtype == compute
    assert isinstance(setup_.scaler, torch.amp.GradScaler) == scaler
    assert setup_.model.fp16_scaler is setup_.scaler
    seen = record_compute_dtypes(setup_.model)
    setup_.model.train()
    setup_.train_step(new_optimizer(setup_), make_batch(setup_.input_dtype), teacher_temp=0.04, momentum=0.9, clip=3.0)
    assert seen == {"block": compute, "codes": compute}
    # The weights the optimizer updates stay fp32 whatever the compute dtype.
    assert all(p.dtype == torch.float32 for p in setup_.model.parameters())


def test_unknown_precision_names_the_key(tiny_arch):
    with pytest.raises(ConfigError, match=r"student\.backbone\.mixed_precision\.param_dtype.*'fp8'"):
        TrainingSetup(make_cfg(MIXED, _param_dtype("fp8")), CPU)


def test_bf16_autocast_steps_train_the_student_and_move_the_teacher_by_ema(tiny_arch):
    torch.manual_seed(0)
    setup_ = TrainingSetup(make_cfg(MIXED, _param_dtype("bf16")), CPU)
    model = setup_.model.train()
    optimizer = new_optimizer(setup_)
    momentum = 0.9
    for step in range(3):
        student_before, teacher_before = snapshot(model.student), snapshot(model.teacher)
        result = setup_.train_step(optimizer, make_batch(torch.bfloat16, seed=step), 0.04, momentum, clip=3.0)
        assert result.stepped
        assert all(torch.isfinite(v) for v in result.losses.values())
        assert all(torch.isfinite(torch.tensor(n)) for n in result.grad_norms.values())
        student_after = snapshot(model.student)
        assert not torch.equal(student_after["backbone.blocks.0.attn.qkv.weight"], student_before["backbone.blocks.0.attn.qkv.weight"])
        assert not torch.equal(student_after["hash_head.hash_layer.0.weight"], student_before["hash_head.hash_layer.0.weight"])
        for name, _ in model.teacher.named_parameters():
            expected = momentum * teacher_before[name] + (1 - momentum) * student_after[name]
            torch.testing.assert_close(model.teacher.state_dict()[name], expected, msg=name)


def test_fp16_grad_scaler_skips_overflowing_steps_without_touching_student_or_teacher(tiny_arch, monkeypatch):
    torch.manual_seed(0)
    setup_ = TrainingSetup(make_cfg(MIXED, _param_dtype("fp16")), CPU)
    model = setup_.model.train()
    optimizer = new_optimizer(setup_)
    batch = make_batch(torch.float16)

    def step():
        student, teacher, scale = snapshot(model.student), snapshot(model.teacher), setup_.scaler.get_scale()
        result = setup_.train_step(optimizer, batch, teacher_temp=0.04, momentum=0.9, clip=3.0)
        return result, student, teacher, scale

    def assert_skipped(result, student, teacher, scale):
        assert not result.stepped
        assert_equal_states(snapshot(model.student), student)
        assert_equal_states(snapshot(model.teacher), teacher)
        assert all(torch.isfinite(v).all() for v in model.teacher.state_dict().values())
        assert setup_.scaler.get_scale() == scale / 2

    # The default scale (2^16) overflows fp16 gradients: the scaler backs off until a step fits.
    for _ in range(20):
        result, student, teacher, scale = step()
        if result.stepped:
            break
        assert_skipped(result, student, teacher, scale)
    assert result.stepped, "the grad scaler never found a scale that fits fp16"
    assert not torch.equal(model.student.state_dict()["hash_head.hash_layer.0.weight"], student["hash_head.hash_layer.0.weight"])
    assert not torch.equal(model.teacher.state_dict()["hash_head.hash_layer.0.weight"], teacher["hash_head.hash_layer.0.weight"])
    steps_taken = optimizer.state[next(iter(optimizer.state))]["step"].clone()

    # A NaN gradient (the loss is finite) at a scale that fits: the step is skipped, nothing moves.
    original = type(model).backprop_loss

    def poisoned(self, loss):
        original(self, loss)
        self.student.hash_head.hash_layer[0].weight.grad[0, 0] = float("nan")

    monkeypatch.setattr(type(model), "backprop_loss", poisoned)
    assert_skipped(*step())
    assert torch.equal(optimizer.state[next(iter(optimizer.state))]["step"], steps_taken)
    monkeypatch.undo()

    result, student, teacher, _ = step()
    assert result.stepped
    assert not torch.equal(model.student.state_dict()["hash_head.hash_layer.0.weight"], student["hash_head.hash_layer.0.weight"])


def test_fp16_training_run_logs_the_loss_scale_and_resumes_the_scaler(tmp_path, tiny_arch):
    """The TINY_OPTS heads overflow fp16 at every scale the four iterations try: each step is skipped."""
    opts = [MIXED, _param_dtype("fp16")]
    train_module.main(make_args(tmp_path, *opts))
    with open(tmp_path / "training_metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    scales = [r["loss_scale"] for r in records]
    assert scales == [2.0**15, 2.0**14, 2.0**13, 2.0**12]
    assert [r["step_skipped"] for r in records] == [1, 1, 1, 1]
    checkpoint = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert checkpoint["scaler"]["scale"] == 2.0**12

    train_module.main(make_args(tmp_path, *opts, "optim.epochs=3"))
    with open(tmp_path / "training_metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    # The resumed scaler goes on from 2^12 rather than from its initial 2^16.
    assert [r["loss_scale"] for r in records[4:]] == [2.0**11, 2.0**10]


def test_bf16_training_run_trains_and_evaluates(tmp_path, tiny_arch):
    summary = train_module.main(make_args(tmp_path, MIXED, _param_dtype("bf16")))
    with open(tmp_path / "training_metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert len(records) == 4 and all("loss_scale" not in r for r in records)
    assert all(torch.isfinite(torch.tensor(r["total_loss"])) for r in records)
    assert 0.0 <= summary["best_mAP"] <= 1.0


def _fsdp_worker(rank, port, queue):
    setattr(vits, TINY_ARCH, tiny_vit)
    export_torchrun_env(rank, 1, port)
    torch.distributed.init_process_group("gloo")
    try:
        queue.put(_fsdp_checks())
    finally:
        torch.distributed.destroy_process_group()


def _fsdp_checks():
    """FSDP units take each module's own compute_precision dtypes; fp16 gets a sharded grad scaler."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    opts = [MIXED]
    for who in ("student", "teacher"):
        precision = f"compute_precision.{who}"
        opts += [
            f"{precision}.backbone.mixed_precision.param_dtype=bf16",
            f"{precision}.backbone.mixed_precision.reduce_dtype=fp32",
            f"{precision}.hash_head.mixed_precision.param_dtype=fp32",
            f"{precision}.hash_head.mixed_precision.reduce_dtype=bf16",
        ]
    cfg = make_cfg(*opts)
    setup_ = TrainingSetup(cfg, CPU, fsdp=True)
    seen = record_compute_dtypes(setup_.model)
    setup_.model.train()
    result = setup_.train_step(new_optimizer(setup_), make_batch(setup_.input_dtype), 0.04, 0.9, clip=3.0)
    student = setup_.model.student
    out = {
        "seen": seen,
        "stepped": result.stepped,
        "finite": all(torch.isfinite(v).item() for v in result.losses.values()),
        "reduce": (student.backbone.mixed_precision.reduce_dtype, student.hash_head.mixed_precision.reduce_dtype),
        "bf16_scaler": setup_.scaler,
    }
    fp16 = TrainingSetup(make_cfg(MIXED, _param_dtype("fp16")), CPU, fsdp=True)
    out["fp16_scaler"] = isinstance(fp16.scaler, ShardedGradScaler)
    return out


def test_fsdp_units_use_their_modules_compute_precision_on_one_process(tiny_arch):
    """One process, as FSDP on one GPU: SHARD_GRAD_OP falls back to NO_SHARD, which must still train."""
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_fsdp_worker, args=(free_port(), queue), nprocs=1, join=True, start_method="spawn")
    out = queue.get()
    assert out["seen"] == {"block": torch.bfloat16, "codes": torch.float32}
    assert out["stepped"] and out["finite"]
    assert out["reduce"] == (torch.float32, torch.bfloat16)
    assert out["bf16_scaler"] is None and out["fp16_scaler"]


def test_fsdp_refuses_student_and_teacher_units_of_different_param_dtypes(tiny_arch):
    model = SSLMetaArch(make_cfg("compute_precision.teacher.hash_head.mixed_precision.param_dtype=bf16"))
    with pytest.raises(ConfigError, match=r"student\.hash_head\.mixed_precision\.param_dtype=fp16.*teacher\.hash_head.*=bf16"):
        model.prepare_for_distributed_training()

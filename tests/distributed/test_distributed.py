import os

import pytest
import torch
import torch.multiprocessing as mp

from dinov2 import distributed
from dinov2.loss import DINOLoss, iBOTPatchLoss

from ..conftest import free_port

WORLD_SIZE = 2
K = 6
TEACHER_TEMP = 0.07
LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_NODELIST",
    "SLURM_JOB_NODELIST",
    "SLURM_NNODES",
    "SLURM_JOB_NUM_NODES",
    "SLURM_JOB_ID",
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_answers(clean_env):
    assert not distributed.is_enabled()
    distributed.enable(set_cuda_current_device=False)  # no launcher variables: nothing to start
    assert not distributed.is_enabled()
    assert distributed.get_global_size() == 1 and distributed.get_global_rank() == 0
    assert distributed.get_local_size() == 1 and distributed.get_local_rank() == 0
    assert distributed.is_main_process()
    x = torch.arange(6.0).view(3, 2)
    assert distributed.all_gather_variable(x) is x
    assert distributed.all_gather_tensor(x) is x
    torch.testing.assert_close(distributed.all_reduce_mean(x), x)


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("node[01-03],gpu5", "node01"),
        ("node[07,01-03]", "node07"),
        ("gpu5,node[1-2]", "gpu5"),
        ("single", "single"),
        ("gpu[5-6]-ib", "gpu5-ib"),
        ("rack[2-3]-node[08-09]", "rack2-node08"),
    ],
)
def test_first_host_of_nodelist(nodelist, first):
    assert distributed.first_host_of_nodelist(nodelist) == first


def test_bad_nodelist():
    with pytest.raises(ValueError, match="node\\[01"):
        distributed.first_host_of_nodelist("node[01-03")
    with pytest.raises(ValueError, match="empty"):
        distributed.first_host_of_nodelist("")


def test_slurm_environment(clean_env):
    clean_env.setenv("SLURM_PROCID", "5")
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_LOCALID", "1")
    clean_env.setenv("SLURM_NNODES", "2")
    clean_env.setenv("SLURM_NODELIST", "gpu[12-13]")
    clean_env.setenv("SLURM_JOB_ID", "40123")
    variables = distributed._launcher_environment()
    assert variables == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu12",
        "MASTER_PORT": str(20000 + 40123 % 40000),
    }


def test_torchrun_environment_wins_and_conflicts_are_reported(clean_env):
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "1")
    clean_env.setenv("SLURM_NODELIST", "gpu1")
    clean_env.setenv("RANK", "3")
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("LOCAL_RANK", "1")
    clean_env.setenv("MASTER_ADDR", "10.0.0.1")
    clean_env.setenv("MASTER_PORT", "29500")
    variables = distributed._launcher_environment()
    assert variables["RANK"] == "3" and variables["LOCAL_RANK"] == "1" and variables["MASTER_ADDR"] == "10.0.0.1"

    clean_env.delenv("MASTER_PORT")
    with pytest.raises(RuntimeError, match="MASTER_PORT"):
        distributed.enable(set_cuda_current_device=False)
    clean_env.setenv("LOCAL_WORLD_SIZE", "3")
    with pytest.raises(RuntimeError, match="LOCAL_WORLD_SIZE"):
        distributed._export("LOCAL_WORLD_SIZE", "2", overwrite=False)
    assert not distributed.is_enabled()


def _worker(rank, port, inputs, expected):
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    distributed.enable(set_cuda_current_device=False)
    try:
        assert distributed.is_enabled()
        assert distributed.get_global_size() == WORLD_SIZE and distributed.get_global_rank() == rank
        assert distributed.get_local_rank() == rank and distributed.get_local_size() == WORLD_SIZE
        assert distributed.is_main_process() == (rank == 0)

        half = inputs["teacher_1"].shape[0] // WORLD_SIZE
        rows = slice(rank * half, (rank + 1) * half)

        # DINO centring: the centre is the mean over the whole (two-rank) batch.
        dino = DINOLoss(out_dim=K)
        dino.update_center(inputs["teacher_1"][rows])
        probs = dino.softmax_center_teacher(inputs["teacher_2"][rows], TEACHER_TEMP)
        torch.testing.assert_close(dino.center, expected["dino_center"])
        torch.testing.assert_close(probs, expected["dino_centered"][rows])

        torch.testing.assert_close(
            dino.sinkhorn_knopp_teacher(inputs["teacher_1"][rows], TEACHER_TEMP), expected["dino_sinkhorn"][rows]
        )

        # iBOT: ranks hold different numbers of masked tokens.
        split = inputs["split"]
        tokens = slice(0, split) if rank == 0 else slice(split, None)
        local_tokens = inputs["masked_tokens"][tokens]
        ibot = iBOTPatchLoss(patch_out_dim=K)
        n_local = torch.tensor(local_tokens.shape[0])
        q = ibot.sinkhorn_knopp_teacher(local_tokens, TEACHER_TEMP, n_local)
        torch.testing.assert_close(q, expected["ibot_sinkhorn"][tokens])
        assert n_local.item() == local_tokens.shape[0]

        ibot.update_center(inputs["patch_grid"][rows])
        ibot.apply_center_update()
        torch.testing.assert_close(ibot.center, expected["ibot_center"])

        # Gathers: uneven sizes (2 rows on rank 0, 3 on rank 1), booleans, equal-size pieces, mean.
        piece = torch.arange(3 * (2 + rank), dtype=torch.float32).view(2 + rank, 3) + 100 * rank
        gathered = distributed.all_gather_variable(piece)
        torch.testing.assert_close(gathered, torch.cat([torch.arange(6.0).view(2, 3), torch.arange(9.0).view(3, 3) + 100]))
        flags = distributed.all_gather_variable(torch.tensor([rank == 1] * (1 + rank)))
        assert flags.dtype == torch.bool and flags.tolist() == [False, True, True]
        empty = distributed.all_gather_variable(torch.ones(rank, 2))
        assert empty.shape == (1, 2)
        same = distributed.all_gather_tensor(torch.full((2,), float(rank)))
        torch.testing.assert_close(same, torch.tensor([0.0, 0.0, 1.0, 1.0]))
        torch.testing.assert_close(distributed.all_reduce_mean(torch.tensor([float(rank)])), torch.tensor([0.5]))
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_match_one_process():
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "teacher_1": torch.randn(8, K, generator=generator),
        "teacher_2": torch.randn(8, K, generator=generator),
        "masked_tokens": torch.randn(7, K, generator=generator),
        "split": 3,
        "patch_grid": torch.randn(8, 5, K, generator=generator),
    }
    # One process on the concatenated batch.
    dino = DINOLoss(out_dim=K)
    dino.update_center(inputs["teacher_1"])
    dino_centered = dino.softmax_center_teacher(inputs["teacher_2"], TEACHER_TEMP)
    ibot = iBOTPatchLoss(patch_out_dim=K)
    ibot.update_center(inputs["patch_grid"])
    ibot.apply_center_update()
    expected = {
        "dino_center": dino.center.clone(),
        "dino_centered": dino_centered,
        "dino_sinkhorn": DINOLoss(out_dim=K).sinkhorn_knopp_teacher(inputs["teacher_1"], TEACHER_TEMP),
        "ibot_sinkhorn": iBOTPatchLoss(patch_out_dim=K).sinkhorn_knopp_teacher(
            inputs["masked_tokens"], TEACHER_TEMP, torch.tensor(7)
        ),
        "ibot_center": ibot.center.clone(),
    }
    mp.spawn(_worker, args=(free_port(), inputs, expected), nprocs=WORLD_SIZE, join=True)
